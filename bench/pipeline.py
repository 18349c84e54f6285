"""Change-pipeline benchmarks, baseline and ours side by side in one run.

    python -m bench.pipeline [--events 50000] [--rounds 4] [--rate 1000] [--seconds 10]
                             [--cluster] [--json]

1. throughput, one worker: the same pre-produced Debezium events consumed by
   (a) raw aiokafka consumer + one pipelined Redis DEL per batch + commit (baseline)
   (b) ordercache's ChangePipeline (decode, plan, version-guarded Lua invalidation
       in one pipeline per batch, DLQ handling, commit after apply)
   Each round uses a fresh consumer group. Symmetric timers: for both, the clock
   starts when the first batch has been applied and stops when the last has; the
   events of the first batch are not counted (group join and fetch warm-up excluded
   for both alike). Rounds alternate who goes first; median of per-round ratios.
2. invalidation lag at a steady produce rate: produce timestamp -> operation applied,
   p50 / p99. The producer runs in another process (its own event loop and core).

A private Tansu broker is started for the run; Redis is the machine's (keys under a
random prefix, removed afterwards), or with ``--cluster`` a private 3-primary Redis
Cluster (the baseline's DELs then go through redis-py's cluster pipeline, grouped per
node like ours).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import (
    REDIS_URL,
    Report,
    add_json_flag,
    log,
    median,
    p,
    paired,
    profile_pid,
    summarize_profile,
)
from ordercache.agents.batch import BatchPlan
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.config.settings import load_settings
from ordercache.local.services import start_tansu
from ordercache.redisconn.client import AnyRedis


def envelope(pid: int, version: int) -> bytes:
    return json.dumps(
        {
            "before": None,
            "after": {
                "product_id": pid,
                "available": 7,
                "reserved": 1,
                "version": version,
                "updated_at": "2026-03-01T10:00:00Z",
            },
            "op": "u",
            "source": {"lsn": 10_000 + version, "txId": version, "ts_ms": 1, "table": "inventory"},
            "ts_ms": 1,
        }
    ).encode()


async def produce(bootstrap: str, topic: str, n: int, keyspace: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=131072)
    await producer.start()
    try:
        for i in range(n):
            pid = 1 + i % keyspace
            await producer.send(topic, envelope(pid, 2 + i // keyspace), key=str(pid).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def baseline(bootstrap: str, topic: str, n: int, client: AnyRedis, prefix: str) -> float:
    """Raw aiokafka getmany + one pipelined DEL per batch + commit; events/s."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"base-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
    )
    await consumer.start()
    seen, counted, t0 = 0, 0, 0.0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=20, max_records=2000)
            if not batches:
                continue
            pipe = client.pipeline(transaction=False)
            size = 0
            for recs in batches.values():
                for r in recs:
                    pipe.delete(f"{prefix}:raw:{{{r.key.decode()}}}")
                    size += 1
            await pipe.execute()
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
            seen += size
            # the same clock as ours: from the first applied batch to the last
            if not t0:
                t0 = time.perf_counter()
            else:
                counted += size
        return counted / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


async def ours(bootstrap: str, settings_env: dict[str, str], n: int) -> float:
    """ordercache's ChangePipeline over the same topic; events/s."""
    env = {**settings_env, "ORDERCACHE_APP_ID": f"bench-{uuid.uuid4().hex[:8]}"}
    ctx = AppContext.build(load_settings(env))
    first: list[float] = []
    done = asyncio.Event()
    seen = counted = 0

    async def hook(bp: BatchPlan) -> None:
        # called once the batch is applied (before its commit, which the baseline's
        # clock includes: the difference is one commit out of many batches)
        nonlocal seen, counted
        seen += len(bp.timestamps)
        if not first:
            first.append(time.perf_counter())
        else:
            counted += len(bp.timestamps)
        if seen >= n:
            done.set()

    pipeline = build_pipeline(ctx, [bootstrap], hooks=[hook])
    await pipeline.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=600)
        return counted / (time.perf_counter() - first[0])
    finally:
        await pipeline.stop()
        await ctx.aclose()


def _paced_producer(bootstrap: str, topic: str, rate: int, total: int, start_at: float) -> None:
    """Child process: produce ``total`` events at ``rate``/s from ``start_at`` (wall clock)."""
    asyncio.run(_produce_paced(bootstrap, topic, rate, total, start_at))


async def _produce_paced(
    bootstrap: str, topic: str, rate: int, total: int, start_at: float
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        for i in range(total):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pid = 1 + i % 5000
            # the record timestamp (CreateTime, ms) is what the lag is measured from
            await producer.send(topic, envelope(pid, 1_000_000 + i), key=str(pid).encode())
        await producer.flush()
    finally:
        await producer.stop()


def _bulk_producer(bootstrap: str, topic: str, n: int, keyspace: int) -> None:
    asyncio.run(produce(bootstrap, topic, n, keyspace))


async def lag(
    bootstrap: str, settings_env: dict[str, str], rate: int, seconds: float
) -> list[float]:
    """Produce at ``rate``/s from another process; produce->applied latencies (s)."""
    env = {**settings_env, "ORDERCACHE_APP_ID": f"lag-{uuid.uuid4().hex[:8]}"}
    settings = load_settings(env)
    ctx = AppContext.build(settings)
    lags: list[float] = []
    measuring = False

    async def hook(bp: BatchPlan) -> None:
        if measuring:
            now = time.time() * 1000
            lags.extend((now - ts) / 1000 for ts in bp.timestamps)

    pipeline = build_pipeline(ctx, [bootstrap], hooks=[hook])
    await pipeline.start()
    total = int(rate * seconds)
    child = mp.get_context("spawn").Process(
        target=_paced_producer,
        args=(bootstrap, settings.topic_inventory, rate, total, time.time() + 3.0),
    )
    try:
        while not pipeline.assigned:  # the pipeline owns its partitions and is caught up
            await asyncio.sleep(0.1)
        measuring = True
        child.start()
        deadline = time.perf_counter() + seconds + 60
        while len(lags) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return lags
    finally:
        await asyncio.to_thread(child.join, 30)
        await pipeline.stop()
        await ctx.aclose()


async def main(
    events: int,
    rounds: int,
    rate: int,
    seconds: float,
    as_json: bool,
    profile: str = "",
    cluster: bool = False,
) -> None:
    report = Report("pipeline-cluster" if cluster else "pipeline")
    broker = start_tansu()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    client: AnyRedis
    if cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        from tests.redis_procs import start_cluster

        private = await asyncio.to_thread(start_cluster, 3)
        client = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in private.nodes]
        )
        redis_env = {
            "ORDERCACHE_REDIS_MODE": "cluster",
            "ORDERCACHE_REDIS_CLUSTER_NODES": private.addresses,
        }
    else:
        client = aioredis.Redis.from_url(REDIS_URL)
        redis_env = {"ORDERCACHE_REDIS_URL": REDIS_URL}
    try:
        bootstrap = broker.url
        tag = prefix
        env = {
            **redis_env,
            "ORDERCACHE_REDIS_KEY_PREFIX": prefix,
            "ORDERCACHE_KAFKA_BROKER": bootstrap,
            "ORDERCACHE_DATABASE_URL": "sqlite+aiosqlite:///:memory:",
            "ORDERCACHE_TOPIC_ORDERS": f"{tag}.orders",
            "ORDERCACHE_TOPIC_INVENTORY": f"{tag}.inventory",
            "ORDERCACHE_TOPIC_TRACKING": f"{tag}.tracking",
            "ORDERCACHE_TOPIC_DLQ": f"{tag}.dlq",
            "ORDERCACHE_KAFKA_PARTITIONS": "4",
        }
        # create the topics with the pipeline's own helper, then fill the input topic
        from ordercache.agents.pipeline import ensure_topics

        await ensure_topics(
            [bootstrap], [f"{tag}.{t}" for t in ("orders", "inventory", "tracking", "dlq")], 4
        )
        filler = mp.get_context("spawn").Process(
            target=_bulk_producer, args=(bootstrap, f"{tag}.inventory", events, 20_000)
        )
        filler.start()
        await asyncio.to_thread(filler.join)
        topic = f"{tag}.inventory"
        result = await paired(
            rounds,
            lambda: baseline(bootstrap, topic, events, client, prefix),
            lambda: ours(bootstrap, env, events),
        )
        if profile:
            spy = profile_pid(os.getpid(), 15, profile)
            await asyncio.sleep(0.5)
            await ours(bootstrap, env, events)
            await asyncio.to_thread(spy.wait, 60)
            for fn, own, incl in summarize_profile(profile):
                log(f"{incl:6.1%} {own:6.1%}  {fn}")
        report.paired(
            f"pipeline throughput, one worker, {events:,} events (events/s)",
            "events/s",
            result,
            target=0.8,
            detail="raw aiokafka + pipelined DEL + commit",
        )
        lags = await lag(
            bootstrap, {**env, "ORDERCACHE_TOPIC_INVENTORY": f"{tag}.lag"}, rate, seconds
        )
        p99 = p(lags, 0.99) * 1e3 if lags else float("inf")
        report.absolute(
            f"invalidation lag at {rate}/s for {seconds:.0f}s, producer in another process, p99",
            "ms",
            p99,
            target="<= 100 ms",
            met=p99 <= 100 and len(lags) >= int(rate * seconds),
            p50_ms=median(lags) * 1e3 if lags else None,
            events=len(lags),
        )
    finally:
        if cluster:
            await client.aclose()
            private.cleanup()
        else:
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.unlink(key)
            await client.aclose()
        broker.cleanup()
    report.emit(as_json)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", default="", help="py-spy one more run of ours into this file")
    ap.add_argument("--cluster", action="store_true", help="on a private 3-primary cluster")
    add_json_flag(ap)
    a = ap.parse_args()
    asyncio.run(main(a.events, a.rounds, a.rate, a.seconds, a.json, a.profile, a.cluster))
