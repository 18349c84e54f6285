"""Change-pipeline benchmarks, baseline and ours side by side in one run.

    python -m bench.pipeline [--events 50000] [--rounds 3] [--rate 1000] [--seconds 10]

1. throughput, one worker: the same pre-produced Debezium events consumed by
   (a) raw aiokafka consumer + one pipelined Redis DEL per batch + commit (baseline)
   (b) ordercache's ChangePipeline (decode, plan, version-guarded Lua invalidation
       in one pipeline per batch, DLQ handling, commit after apply)
   Each round uses a fresh consumer group; timing runs from the first record seen
   to the last applied (group join excluded for both).
2. invalidation lag at a steady produce rate: produce timestamp -> operation applied,
   p50 / p99.

A private Tansu broker is started for the run; Redis is the machine's (keys under a
random prefix, removed afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import REDIS_URL, median, p, table
from ordercache.agents.batch import BatchPlan
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.config.settings import load_settings
from ordercache.local.services import start_tansu


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


async def baseline(
    bootstrap: str, topic: str, n: int, client: aioredis.Redis, prefix: str
) -> float:
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
    seen, t0 = 0, 0.0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=20, max_records=2000)
            if not batches:
                continue
            if not t0:
                t0 = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for recs in batches.values():
                for r in recs:
                    pipe.delete(f"{prefix}:raw:{{{r.key.decode()}}}")
                    seen += 1
            await pipe.execute()
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batches.items()})
        return seen / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


async def ours(bootstrap: str, settings_env: dict[str, str], n: int) -> float:
    """ordercache's ChangePipeline over the same topic; events/s."""
    env = {**settings_env, "ORDERCACHE_APP_ID": f"bench-{uuid.uuid4().hex[:8]}"}
    ctx = AppContext.build(load_settings(env))
    first: list[float] = []
    done = asyncio.Event()
    count = 0

    async def hook(bp: BatchPlan) -> None:
        nonlocal count
        if not first:
            first.append(time.perf_counter())
        count += len(bp.timestamps)
        if count >= n:
            done.set()

    pipeline = build_pipeline(ctx, [bootstrap], hooks=[hook])
    await pipeline.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=600)
        return count / (time.perf_counter() - first[0])
    finally:
        await pipeline.stop()
        await ctx.aclose()


async def lag(
    bootstrap: str, settings_env: dict[str, str], rate: int, seconds: float
) -> list[float]:
    """Produce at ``rate``/s and collect produce->applied latencies (seconds)."""
    env = {**settings_env, "ORDERCACHE_APP_ID": f"lag-{uuid.uuid4().hex[:8]}"}
    settings = load_settings(env)
    ctx = AppContext.build(settings)
    lags: list[float] = []

    async def hook(bp: BatchPlan) -> None:
        now = time.time() * 1000
        lags.extend((now - ts) / 1000 for ts in bp.timestamps)

    pipeline = build_pipeline(ctx, [bootstrap], hooks=[hook])
    await pipeline.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        # wait until the pipeline owns its partitions and is caught up
        while not pipeline.assigned:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        lags.clear()
        total = int(rate * seconds)
        t0 = time.perf_counter()
        for i in range(total):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pid = 1 + i % 5000
            await producer.send(
                settings.topic_inventory, envelope(pid, 1_000_000 + i), key=str(pid).encode()
            )
        await producer.flush()
        deadline = time.perf_counter() + 30
        while len(lags) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return lags
    finally:
        await producer.stop()
        await pipeline.stop()
        await ctx.aclose()


async def main(events: int, rounds: int, rate: int, seconds: float) -> None:
    broker = start_tansu()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        bootstrap = broker.url
        tag = prefix
        env = {
            "ORDERCACHE_REDIS_URL": REDIS_URL,
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
        await produce(bootstrap, f"{tag}.inventory", events, keyspace=20_000)
        base_r, our_r = [], []
        for _ in range(rounds):
            base_r.append(await baseline(bootstrap, f"{tag}.inventory", events, client, prefix))
            our_r.append(await ours(bootstrap, env, events))
        lags = await lag(
            bootstrap, {**env, "ORDERCACHE_TOPIC_INVENTORY": f"{tag}.lag"}, rate, seconds
        )
        rows = [
            (
                f"throughput, one worker ({events:,} events, events/s)",
                f"{median(base_r):,.0f} raw aiokafka + pipelined DEL + commit",
                f"{median(our_r):,.0f} ChangePipeline",
                f"{median(our_r) / median(base_r):.2f}x",
                ">= 0.5x",
            ),
            (
                f"invalidation lag at {rate}/s for {seconds:.0f}s (ms)",
                "-",
                f"p50 {median(lags) * 1e3:.1f}, p99 {p(lags, 0.99) * 1e3:.1f} ({len(lags)} events)",
                "",
                "p99 <= 100 ms",
            ),
        ]
        print(
            "rounds (events/s): baseline",
            [f"{x:,.0f}" for x in base_r],
            "ours",
            [f"{x:,.0f}" for x in our_r],
        )
        print()
        print(table(rows, ("benchmark", "baseline (same run)", "ordercache", "ratio", "target")))
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.unlink(key)
        await client.aclose()
        broker.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    asyncio.run(main(a.events, a.rounds, a.rate, a.seconds))
