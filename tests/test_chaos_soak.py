"""Chaos soak: traffic and faults together, then an independent check of every view.

A real worker (Sentinel-mode Redis, its own Tansu broker, a scratch PostgreSQL
database) serves 50 concurrent readers while the simulator writes order lifecycles
and emits their change events. Meanwhile, in turn:

1. the Redis primary is SIGKILLed and Sentinel promotes the replica;
2. the worker is SIGKILLed and started again;
3. the broker is restarted (writes pause first: the bundled Tansu keeps its log in
   memory, so its topics are created again on the new process — what a persistent
   broker would still have).

After the writers stop and the worker's committed offsets reach the end of every
change topic (quiescence), every order, history and inventory entry in Redis is
compared with the database (stale entries: must be 0) and every tracking event
written to the database must be in the global streams exactly once (lost: 0,
duplicated: 0). The figures (requests, errors, stale, lost, worker RSS at start and
end) are printed as one JSON line.

CI runs it for about a minute; ``ORDERCACHE_CHAOS_SECONDS`` runs it longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select

from ordercache.agents.pipeline import ensure_topics
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_mirror
from ordercache.cache.views import HISTORY, INVENTORY, ORDER
from ordercache.db import repository as repo
from ordercache.db.engine import create_engine, create_schema
from ordercache.local.services import ManagedProcess, free_port, start_redis_server, start_tansu
from ordercache.models.orm import Customer, Inventory, Order, TrackingEvent
from ordercache.sample.producer import ChangeEventProducer, Topics
from ordercache.sample.simulate import Simulator
from tests.conftest import make_settings, unique
from tests.redis_procs import start_sentinel, wait_until
from tests.workers import WorkerProcess

SECONDS = float(os.environ.get("ORDERCACHE_CHAOS_SECONDS", "60"))
# The suite's 120 s per test would cut a longer run short: the soak's own length
# plus the stack's start and the final checks.
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.timeout(max(120, int(SECONDS) + 180)),
]
#: Which faults to inject (all by default): redis, worker, broker.
PHASES = set(os.environ.get("ORDERCACHE_CHAOS_PHASES", "redis,worker,broker").split(","))
READERS = 50
WRITE_RATE = 40.0  # events per second
MASTER = "mymaster"


@dataclass
class Figures:
    requests: int = 0
    errors: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    events_written: int = 0
    rss_start_kb: int = 0
    rss_end_kb: int = 0
    phases: dict[str, str] = field(default_factory=dict)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Stack:
    master: ManagedProcess
    replica: ManagedProcess
    sentinel: ManagedProcess
    tansu: ManagedProcess
    settings: dict[str, Any]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def cleanup(self) -> None:
        for w in self.workers:  # whatever failed: no worker outlives the test
            w.kill()
        for p in (self.sentinel, self.replica, self.master, self.tansu):
            p.cleanup()


@pytest.fixture
def stack(fresh_pg_url: str, tmp_path: Path) -> Iterator[Stack]:
    master = start_redis_server()
    replica = start_redis_server(extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    sentinel = start_sentinel(master, MASTER)
    tansu = start_tansu()
    tag = unique("cs")
    settings = {
        "redis_mode": "sentinel",
        "redis_sentinels": sentinel.url,
        "redis_sentinel_master": MASTER,
        "redis_key_prefix": tag,
        "redis_retry_attempts": 3,
        "database_url": fresh_pg_url,
        "kafka_broker": tansu.url,
        "kafka_partitions": 2,
        "app_id": f"oc-{tag}",
        "topic_orders": f"{tag}.orders",
        "topic_inventory": f"{tag}.inventory",
        "topic_tracking": f"{tag}.tracking",
        "topic_dlq": f"{tag}.dlq",
        "log_level": "info",
        "web_port": free_port(),  # the restarted worker answers where the first did
    }
    s = Stack(master, replica, sentinel, tansu, settings, tmp_path)
    admin = redis.Redis(port=sentinel.port, decode_responses=True, socket_timeout=2)
    try:
        wait_until(lambda: admin.sentinel_slaves(MASTER), "sentinel knows the replica")
    finally:
        admin.close()
    yield s
    s.cleanup()


def start_worker(stack: Stack, n: int) -> WorkerProcess:
    w = WorkerProcess.configured(stack.tmp, f"worker{n}", **stack.settings).start()
    stack.workers.append(w)
    w.wait_for_log("pipeline assigned partitions", timeout=120)
    return w


async def readers(
    base: str, ids: dict[str, list[int]], figures: Figures, stop: asyncio.Event
) -> None:
    paths = [
        *(f"/orders/{i}" for i in ids["orders"]),
        *(f"/products/{i}/inventory" for i in ids["products"]),
        *(f"/customers/{i}/orders" for i in ids["customers"]),
    ]
    timeout = aiohttp.ClientTimeout(total=10)

    async def one(rng: random.Random) -> None:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                figures.requests += 1
                try:
                    async with http.get(base + rng.choice(paths)) as resp:
                        await resp.read()
                        if resp.status not in (200, 404):
                            figures.errors += 1
                            figures.errors_by_kind[f"http {resp.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    figures.errors += 1
                    figures.errors_by_kind[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(one(random.Random(i)) for i in range(READERS)))


async def writer(
    sim: Simulator, figures: Figures, stop: asyncio.Event, paused: asyncio.Event
) -> None:
    while not stop.is_set():
        if paused.is_set():
            await asyncio.sleep(0.05)
            continue
        figures.events_written += await sim.step()
        await asyncio.sleep(1 / WRITE_RATE)


async def caught_up(stack: Stack, timeout: float = 120.0) -> None:
    """Wait until the worker's pipeline group committed the end of every change topic."""
    s = stack.settings
    topics = [s["topic_orders"], s["topic_inventory"], s["topic_tracking"]]
    group = f"{s['app_id']}-changes"
    deadline = time.monotonic() + timeout
    # A consumer of the worker's group that never subscribes: it only reads the
    # group's committed offsets (it does not join, so it takes no partitions).
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.tansu.url, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(s["kafka_partitions"])]
        while True:
            ends = await consumer.end_offsets(tps)
            behind = {}
            for tp in tps:
                done = await consumer.committed(tp) or 0
                if ends[tp] > done:
                    behind[f"{tp.topic}/{tp.partition}"] = ends[tp] - done
            if not behind:
                return
            assert time.monotonic() < deadline, f"not caught up: {behind}"
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


async def redis_failover(stack: Stack) -> None:
    """SIGKILL the primary; return once Sentinel promoted the replica."""
    stack.master.kill()
    promoted = redis.Redis(port=stack.replica.port, decode_responses=True, socket_timeout=2)
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: promoted.execute_command("ROLE")[0] == "master",
            "failover to the replica",
            30,
        )
    finally:
        promoted.close()


async def restart_broker(stack: Stack) -> None:
    """Kill the broker; start it again on the same port with the same topics."""
    port = stack.tansu.port
    stack.tansu.kill()
    stack.tansu = await asyncio.to_thread(start_tansu, None, port)
    await create_topics(stack)
    # The memory broker's topics start again at offset 0: a recreated topic, for which
    # docs/streams.md says to delete the mirror's offset watermarks (writes are paused
    # and the worker is caught up, so nothing is in flight).
    ctx = AppContext.build(make_settings(**stack.settings))
    try:
        layout = build_mirror(ctx).layout
        await ctx.redis.client.delete(*(layout.shard_offsets(i) for i in range(layout.shards)))
    finally:
        await ctx.aclose()


async def create_topics(stack: Stack) -> None:
    s = stack.settings
    topics = [s["topic_orders"], s["topic_inventory"], s["topic_tracking"], s["topic_dlq"]]
    await ensure_topics([stack.tansu.url], topics, s["kafka_partitions"])


async def check_views(ctx: AppContext) -> tuple[int, int]:
    """(entries checked, stale entries): every cached view against the database."""
    checked = stale = 0
    async with ctx.sessions() as session:
        orders = list((await session.execute(select(Order.id))).scalars())
        customers = list((await session.execute(select(Customer.id))).scalars())
        products = list((await session.execute(select(Inventory.product_id))).scalars())
        for spec, ids, load in (
            (ORDER, orders, repo.load_order_details),
            (HISTORY, customers, repo.load_customer_history),
            (INVENTORY, products, repo.load_inventory),
        ):
            for i in ids:
                cached = await ctx.cache.get(spec, i)  # type: ignore[arg-type]
                if cached is None:
                    continue
                checked += 1
                if cached != await load(session, i):  # type: ignore[operator]
                    stale += 1
    return checked, stale


async def check_streams(ctx: AppContext, since_id: int) -> tuple[int, int, int]:
    """(tracking events written, lost, duplicated) for events with id > since_id."""
    async with ctx.sessions() as session:
        written = set(
            (
                await session.execute(
                    select(TrackingEvent.event_id).where(TrackingEvent.id > since_id)
                )
            ).scalars()
        )
    layout = build_mirror(ctx).layout
    seen: Counter[str] = Counter()
    client = ctx.redis.client
    for shard in range(layout.shards):
        for _, fields in await client.xrange(layout.shard_stream(shard)):
            seen[fields[b"event_id"].decode()] += 1
    lost = len([e for e in written if seen[e] == 0])
    duplicated = sum(n - 1 for e, n in seen.items() if e in written and n > 1)
    return len(written), lost, duplicated


async def test_chaos_soak(stack: Stack) -> None:
    s = stack.settings
    settings = make_settings(**s)
    topics = Topics(s["topic_orders"], s["topic_inventory"], s["topic_tracking"])
    engine = create_engine(s["database_url"])
    await create_schema(engine)
    # Created ahead with the configured partitions (caught_up reads exactly these),
    # not auto-created by the first send with the broker's default.
    await create_topics(stack)
    producer = ChangeEventProducer([stack.tansu.url], topics)
    await producer.start()
    sim = Simulator(engine, producer, seed=7, customers=40, products=40)
    await sim.prepare()
    for _ in range(60):  # a few orders to read from the start
        await sim.step()
    async with engine.connect() as conn:
        since = (
            await conn.execute(select(func.coalesce(func.max(TrackingEvent.id), 0)))
        ).scalar_one()
        ids = {
            "orders": list((await conn.execute(select(Order.id))).scalars()),
            "products": list((await conn.execute(select(Inventory.product_id))).scalars()),
            "customers": list((await conn.execute(select(Customer.id))).scalars()),
        }

    figures = Figures()
    workers = stack.workers
    start_worker(stack, 0)
    figures.rss_start_kb = rss_kb(workers[0].proc.pid)  # type: ignore[union-attr]
    stop, paused = asyncio.Event(), asyncio.Event()
    base = f"http://127.0.0.1:{workers[0].web_port}"
    tasks = [
        asyncio.ensure_future(readers(base, ids, figures, stop)),
        asyncio.ensure_future(writer(sim, figures, stop, paused)),
    ]
    t0 = time.monotonic()

    async def until(fraction: float) -> None:
        await asyncio.sleep(max(0.0, t0 + SECONDS * fraction - time.monotonic()))

    try:
        # 1. Redis primary killed: Sentinel promotes the replica.
        await until(0.2)
        if "redis" in PHASES:
            await redis_failover(stack)
            figures.phases["redis_failover"] = "done"

        # 2. Worker SIGKILLed and started again (same web port, same group).
        await until(0.45)
        if "worker" in PHASES:
            workers[-1].kill()
            await asyncio.to_thread(start_worker, stack, 1)
            figures.phases["worker_sigkill_restart"] = "done"

        # 3. Broker restarted (writes paused, caught up first: the memory broker
        #    forgets its log; a persistent broker would not).
        await until(0.7)
        if "broker" in PHASES:
            paused.set()
            await asyncio.sleep(0.2)
            await caught_up(stack)
            await restart_broker(stack)
            paused.clear()
            figures.phases["broker_restart"] = "done"

        await until(1.0)
    finally:
        stop.set()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                figures.phases["traffic_error"] = repr(outcome)
        await producer.stop()

    worker = workers[-1]
    worker_alive = worker.proc is not None and worker.proc.poll() is None
    if not worker_alive:
        figures.phases["broker_restart"] = "worker exited after the broker restart"
    ctx = AppContext.build(settings)
    try:
        if worker_alive:
            await caught_up(stack)
        checked, stale = await check_views(ctx)
        written, lost, duplicated = await check_streams(ctx, since)
        if worker_alive:
            figures.rss_end_kb = rss_kb(worker.proc.pid)  # type: ignore[union-attr]
    finally:
        await ctx.aclose()
        await engine.dispose()
        for w in workers:
            with contextlib.suppress(Exception):
                w.terminate(timeout=20)

    report = {
        "seconds": SECONDS,
        "readers": READERS,
        "requests": figures.requests,
        "errors": figures.errors,
        "errors_by_kind": dict(figures.errors_by_kind),
        "events_written": figures.events_written,
        "entries_checked": checked,
        "stale_entries": stale,
        "tracking_events": written,
        "lost_events": lost,
        "duplicated_events": duplicated,
        "worker_rss_kb": {"start": figures.rss_start_kb, "end": figures.rss_end_kb},
        "phases": figures.phases,
    }
    print("chaos soak:", json.dumps(report))
    assert worker_alive, f"the worker did not survive:\n{worker.log()[-3000:]}"
    assert "traffic_error" not in figures.phases, report
    assert figures.requests > 0 and checked > 0 and written > 0, report
    assert stale == 0, report
    assert lost == 0, report
    assert duplicated == 0, report
