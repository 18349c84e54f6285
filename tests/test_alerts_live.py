"""Alerts proven against a live Prometheus: each fires on its fault and resolves after it.

A real Prometheus (Debian's ``prometheus``, installed by scripts/bootstrap) scrapes a
real worker (and, for the stream dead letters, a real notifier) with the shipped
``deploy/prometheus/alerts.yml``, every duration divided by ``SCALE`` (60: a
``for: 10m`` takes 10 s here; tests/prom_live.py). Faults are injected one at a time
and each alert must fire within its budget — its scaled ``for:`` and windows plus the
worker's own detection interval (docs/runbook.md, "Time to fire") — and resolve after
recovery. Measured times are printed (``-s``) for the runbook's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from ordercache.local.services import ManagedProcess, free_port, start_redis_server, start_tansu
from ordercache.models.events import Entity, Op, RowChange
from ordercache.sample.producer import ChangeEventProducer, Topics
from tests.conftest import make_settings, unique
from tests.prom_live import INTERVAL, PROMETHEUS, SCALE, Prometheus, scaled_window
from tests.web_harness import Seeded, Worker, get, seed, start_worker, wait_for

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/bootstrap)"),
]

ROOT = Path(__file__).resolve().parents[1]
#: Slack on every budget: scrape + evaluation (1 s each) and a loaded machine.
SLACK = 20.0


def budget(for_: float = 0.0, *, window: float = 0.0, detect: float = 0.0) -> float:
    """Seconds an alert may take here: its ``for:`` and range window (production
    seconds, scaled as the rules are), the worker's detection interval (not scaled: the
    worker's own timer) and slack."""
    return for_ / SCALE + (scaled_window(window) if window else 0.0) + detect + SLACK


class Stack:
    """One worker on a private redis-server and a private broker, and its Prometheus."""

    def __init__(
        self,
        worker: Worker,
        redis: ManagedProcess,
        broker: ManagedProcess,
        prom: Prometheus,
        env: dict[str, Any],
    ) -> None:
        self.worker = worker
        self.redis = redis
        self.broker = broker
        self.prom = prom
        self.env = env

    @property
    def bootstrap(self) -> str:
        return str(self.env["kafka_broker"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.worker.port}"


@pytest.fixture(scope="module")
def stack(pg_schema: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis = start_redis_server()
    broker = start_tansu()  # its own: one scenario stops it
    topics = unique("ta")
    env = {
        "kafka_broker": broker.url,
        "kafka_partitions": 1,
        "app_id": unique("oc-alerts-"),
        "redis_url": f"redis://{redis.url}/0",
        "redis_key_prefix": unique("a"),
        "database_url": pg_schema,
        "topic_orders": f"{topics}.orders",
        "topic_inventory": f"{topics}.inventory",
        "topic_tracking": f"{topics}.tracking",
        "topic_dlq": f"{topics}.dlq",
        "stream_shards": 1,
        "breaker_failures": 2,
        "breaker_reset_seconds": 0.5,
    }
    worker = start_worker(env, tmp_path_factory.mktemp("alerts-worker"))
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"))
    prom.start({"ordercache": [f"127.0.0.1:{worker.port}"]})
    s = Stack(worker, redis, broker, prom, env)
    yield s
    prom.stop()
    with contextlib.suppress(Exception):
        s.worker.stop()
    s.redis.cleanup()
    s.broker.cleanup()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def ready(stack: Stack, http: aiohttp.ClientSession, pg_schema: str) -> Seeded:
    """The worker serves, Prometheus scrapes it, and no alert fires at the start."""
    seeded = await seed(pg_schema, history_orders=3)
    await wait_for(
        http, stack.worker, "/health/ready", lambda r: r.json().get("status") == "ok",
        timeout=90,
    )  # fmt: skip
    await asyncio.to_thread(
        stack.prom.wait, lambda: bool(stack.prom.query('up{job="ordercache"} == 1')),
        "worker scraped", 60,
    )  # fmt: skip
    return seeded


def _report(alert: str, fault: str, fired: float, resolved: float) -> None:
    print(f"\nLIVE-ALERT | {alert} | {fault} | fired in {fired:.1f}s | resolved in {resolved:.1f}s")


async def fires(prom: Prometheus, name: str, within: float, since: float, **labels: str) -> float:
    """Seconds from ``since`` until ``name`` fires (fails after ``within`` seconds)."""
    return await asyncio.to_thread(partial(prom.wait_firing, since=since, **labels), name, within)


async def resolves(prom: Prometheus, name: str, within: float, since: float) -> float:
    """Seconds from ``since`` until ``name`` no longer fires (fails after ``within``)."""
    return await asyncio.to_thread(partial(prom.wait_resolved, since=since), name, within)


async def _keep_reading(
    http: aiohttp.ClientSession, stack: Stack, seeded: Seeded, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await get(http, f"{stack.worker.base}/orders/{seeded.order_id}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- Redis
async def test_redis_killed_fires_redis_down_breaker_and_health(
    stack: Stack, http: aiohttp.ClientSession, ready: Seeded
) -> None:
    prom = stack.prom
    stop = asyncio.Event()
    reader = asyncio.create_task(_keep_reading(http, stack, ready, stop))
    port = stack.redis.port
    fault = time.monotonic()
    stack.redis.cleanup()  # the private redis-server dies
    try:
        # ordercache_redis_up comes from the INFO monitor (every 5 s); the health gauge
        # from the readiness re-evaluation (every 15 s); the breaker from the reads.
        fired = {
            "OrdercacheRedisDown": await fires(
                prom, "OrdercacheRedisDown", budget(60, detect=5), fault
            ),
            "OrdercacheCircuitBreakerOpen": await fires(
                prom, "OrdercacheCircuitBreakerOpen", budget(60, window=120), fault
            ),
            "OrdercacheHealthDegraded": await fires(
                prom, "OrdercacheHealthDegraded", budget(300, detect=15), fault
            ),
        }
    finally:
        stack.redis = start_redis_server(port=port)
    recovered = time.monotonic()
    try:
        for name, took in fired.items():
            resolved = await resolves(prom, name, budget(window=120, detect=15), recovered)
            _report(name, "redis-server killed", took, resolved)
    finally:
        stop.set()
        await reader


# --------------------------------------------------------------------------- cache
async def test_misses_fire_hit_ratio_low(
    stack: Stack, http: aiohttp.ClientSession, ready: Seeded
) -> None:
    stop = asyncio.Event()

    async def unknown_orders() -> None:
        # ids nobody has: every lookup is a miss (the 404 is cached, so never twice)
        n = 900_000_000
        while not stop.is_set():
            n += 1
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await get(http, f"{stack.worker.base}/orders/{n}")
            await asyncio.sleep(0.02)

    fault = time.monotonic()
    misses = asyncio.create_task(unknown_orders())
    try:
        fired = await fires(
            stack.prom, "OrdercacheCacheHitRatioLow", budget(600, window=300), fault, view="order"
        )
    finally:
        stop.set()
        await misses
    recovered = time.monotonic()
    resolved = await resolves(
        stack.prom, "OrdercacheCacheHitRatioLow", budget(window=300), recovered
    )
    _report("OrdercacheCacheHitRatioLow", "reads of unknown orders only", fired, resolved)


async def test_paused_redis_fires_cache_latency_high(
    stack: Stack, http: aiohttp.ClientSession, ready: Seeded
) -> None:
    r = aioredis.Redis.from_url(f"redis://{stack.redis.url}/0")
    stop = asyncio.Event()

    async def pauses() -> None:
        # CLIENT PAUSE holds every client's commands: each GET waits up to 100 ms
        while not stop.is_set():
            await r.client_pause(100, all=True)
            await asyncio.sleep(0.15)

    reader = asyncio.create_task(_keep_reading(http, stack, ready, stop))
    fault = time.monotonic()
    pauser = asyncio.create_task(pauses())
    try:
        fired = await fires(
            stack.prom, "OrdercacheCacheLatencyHigh", budget(600, window=300), fault
        )
    finally:
        stop.set()
        await asyncio.gather(reader, pauser)
        await r.aclose()
    recovered = time.monotonic()
    resolved = await resolves(
        stack.prom, "OrdercacheCacheLatencyHigh", budget(window=300), recovered
    )
    _report("OrdercacheCacheLatencyHigh", "Redis paused 100 ms of every 150 ms", fired, resolved)


async def test_full_redis_fires_memory_near_max_and_evicting(stack: Stack, ready: Seeded) -> None:
    r = aioredis.Redis.from_url(f"redis://{stack.redis.url}/0")
    prefix = unique("junk")
    stop = asyncio.Event()

    async def fill() -> None:
        n = 0
        while not stop.is_set():
            pipe = r.pipeline(transaction=False)
            for _ in range(50):
                n += 1
                pipe.set(f"{prefix}:{n}", b"x" * 1024)
            await pipe.execute()
            await asyncio.sleep(0.05)

    used = int((await r.info("memory"))["used_memory"])
    await r.config_set("maxmemory-policy", "allkeys-lru")
    await r.config_set("maxmemory", str(used + 2 * 1024 * 1024))
    fault = time.monotonic()
    filler = asyncio.create_task(fill())
    try:
        # the INFO monitor refreshes every 5 s
        near = await fires(stack.prom, "OrdercacheRedisMemoryNearMax", budget(300, detect=5), fault)
        evicting = await fires(
            stack.prom, "OrdercacheRedisEvicting", budget(300, window=300, detect=5), fault
        )
    finally:
        stop.set()
        await filler
        await r.config_set("maxmemory", "0")
        await r.config_set("maxmemory-policy", "noeviction")
        async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            await r.unlink(key)
        await r.aclose()
    recovered = time.monotonic()
    for name, took in (
        ("OrdercacheRedisMemoryNearMax", near),
        ("OrdercacheRedisEvicting", evicting),
    ):
        resolved = await resolves(stack.prom, name, budget(window=300, detect=5), recovered)
        _report(name, "maxmemory 2 MB above use, allkeys-lru, writes", took, resolved)


# --------------------------------------------------------------------------- pipeline
async def test_late_events_fire_invalidation_lag_high(stack: Stack, ready: Seeded) -> None:
    """Events that reach the broker two minutes after they were produced (a producer's
    buffer, a replication backlog upstream): the lag histogram sees their age."""
    topics = Topics.from_settings(make_settings(**stack.env))
    encoder = ChangeEventProducer([stack.bootstrap], topics)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    fault = time.monotonic()
    try:
        for version in range(1000, 1040):
            change = RowChange(
                Entity.INVENTORY,
                Op.UPDATE,
                after={
                    "product_id": ready.product_id, "available": 5, "reserved": 0,
                    "version": version, "updated_at": "2026-01-01T00:00:00Z",
                },
            )  # fmt: skip
            topic, key, value, headers = encoder.encode(change, tx_id=version, lsn=version, ts_ms=0)
            late = int(time.time() * 1000) - 120_000
            await producer.send_and_wait(topic, value, key=key, headers=headers, timestamp_ms=late)
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
    ended = time.monotonic()
    fired = await fires(stack.prom, "OrdercacheInvalidationLagHigh", budget(300, window=300), fault)
    resolved = await resolves(
        stack.prom, "OrdercacheInvalidationLagHigh", budget(window=300), ended
    )
    _report("OrdercacheInvalidationLagHigh", "40 events 2 min late", fired, resolved)


async def test_redis_down_under_traffic_fires_lag_and_stalled(stack: Stack, ready: Seeded) -> None:
    """Events keep coming while the cache cannot apply them: the backlog and the stall
    show in the lag gauges from the broker's end offsets (not only after a commit)."""
    prom = stack.prom
    encoder = ChangeEventProducer(
        [stack.bootstrap], Topics.from_settings(make_settings(**stack.env))
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=20)
    await producer.start()
    stop = asyncio.Event()
    sent = 0

    async def produce() -> None:
        nonlocal sent
        version = 10_000
        while not stop.is_set():
            for _ in range(300):
                version += 1
                change = RowChange(
                    Entity.INVENTORY,
                    Op.UPDATE,
                    after={
                        "product_id": ready.product_id, "available": 7, "reserved": 0,
                        "version": version, "updated_at": "2026-01-01T00:00:00Z",
                    },
                )  # fmt: skip
                topic, key, value, headers = encoder.encode(
                    change, tx_id=version, lsn=version, ts_ms=0
                )
                await producer.send(topic, value, key=key, headers=headers)
                sent += 1
            await asyncio.sleep(0.1)  # about 3,000 events/s

    port = stack.redis.port
    fault = time.monotonic()
    stack.redis.cleanup()
    traffic = asyncio.create_task(produce())
    try:
        # lag and stall come from the pipeline's progress timer (every 5 s)
        fired = {
            "OrdercacheInvalidationStalled": await fires(
                prom, "OrdercacheInvalidationStalled", budget(60, detect=5 + 60 / SCALE), fault
            ),
            "OrdercacheConsumerLagHigh": await fires(
                prom, "OrdercacheConsumerLagHigh", budget(600, detect=5 + 5), fault
            ),
            "OrdercacheConsumerLagGrowing": await fires(
                prom, "OrdercacheConsumerLagGrowing", budget(600, window=600, detect=5), fault
            ),
        }
    finally:
        stop.set()
        await traffic
        await producer.stop()
        stack.redis = start_redis_server(port=port)
    recovered = time.monotonic()
    # the backlog applies, the lag returns to 0
    for name, took in fired.items():
        resolved = await resolves(prom, name, budget(window=600, detect=5) + 30, recovered)
        _report(name, f"Redis down, {sent} events queued", took, resolved)


async def test_broker_stopped_fires_broker_unreachable(
    stack: Stack, http: aiohttp.ClientSession, ready: Seeded
) -> None:
    prom = stack.prom
    port = stack.broker.port
    fault = time.monotonic()
    stack.broker.cleanup()
    try:
        # readiness is re-evaluated every 15 s (and on each probe)
        fired = await fires(prom, "OrdercacheBrokerUnreachable", budget(60, detect=15), fault)
    finally:
        stack.broker = start_tansu(port=port)  # memory-only: it comes back empty
    recovered = time.monotonic()
    await wait_for(
        http, stack.worker, "/health/ready", lambda r: r.json().get("status") == "ok",
        timeout=120,
    )  # fmt: skip
    resolved = await resolves(prom, "OrdercacheBrokerUnreachable", budget(detect=15), recovered)
    _report("OrdercacheBrokerUnreachable", "broker stopped", fired, resolved)


# --------------------------------------------------------------------------- DLQ
async def test_malformed_events_fire_dlq_messages_then_resolve(stack: Stack, ready: Seeded) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    fault = time.monotonic()
    try:
        for i in range(3):
            await producer.send_and_wait(
                stack.env["topic_orders"], b"{not json", key=f"bad-{i}".encode()
            )
    finally:
        await producer.stop()
    fired = await fires(
        stack.prom, "OrdercacheDlqMessages", budget(detect=1), fault,
        topic=stack.env["topic_orders"],
    )  # fmt: skip
    # the worker leaves discovery (its series go stale): the alert must not vanish with it
    stack.prom.set_targets({})
    try:
        await asyncio.sleep(3 * INTERVAL + 1)
        assert stack.prom.firing("OrdercacheDlqMessages", topic=stack.env["topic_orders"])
    finally:
        stack.prom.set_targets({"ordercache": [stack.target]})
    # the alert looks at the last 10 minutes: it resolves once the burst leaves the window
    resolved = (
        await resolves(stack.prom, "OrdercacheDlqMessages", budget(window=600), fault) - fired
    )
    _report("OrdercacheDlqMessages", "3 malformed events", fired, resolved)


# --------------------------------------------------------------------------- streams
async def test_stuck_consumer_group_fires_pending_alerts_and_resolves_when_destroyed(
    stack: Stack, ready: Seeded
) -> None:
    r = aioredis.Redis.from_url(f"redis://{stack.redis.url}/0")
    stream = f"{stack.env['redis_key_prefix']}:stream:tracking:{{0}}"
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(1100):
            pipe.xadd(stream, {"v": "1", "n": str(i)})
        await pipe.execute()
        await r.xgroup_create(stream, "stuck", id="0")
        await r.xreadgroup("stuck", "gone", {stream: ">"}, count=1100)  # never acknowledged
        fault = time.monotonic()
        # the worker's StreamGauges refresh every 10 s
        prom = stack.prom
        high = await fires(prom, "OrdercacheStreamPendingHigh", budget(600, detect=10), fault)
        stuck = await fires(
            prom, "OrdercacheStreamPendingStuck", budget(300, window=300, detect=10), fault
        )
        await r.xgroup_destroy(stream, "stuck")
        recovered = time.monotonic()
        for name, took in (
            ("OrdercacheStreamPendingHigh", high),
            ("OrdercacheStreamPendingStuck", stuck),
        ):
            resolved = await resolves(prom, name, budget(detect=10), recovered)
            _report(name, "consumer group stuck, then destroyed", took, resolved)
    finally:
        await r.delete(stream)
        await r.aclose()


async def test_poison_stream_entries_fire_stream_dead_letters_from_the_notifier(
    stack: Stack, ready: Seeded, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
    env.update({f"ORDERCACHE_{k.upper()}": str(v) for k, v in stack.env.items()})
    env["PYTHONPATH"] = str(ROOT)
    log = (tmp_path / "notifier.log").open("wb")
    notifier = subprocess.Popen(
        [sys.executable, "-m", "ordercache.app.main", "notify", "--from-start",
         "--metrics-port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    r = aioredis.Redis.from_url(f"redis://{stack.redis.url}/0")
    stream = f"{stack.env['redis_key_prefix']}:stream:tracking:{{0}}"
    try:
        stack.prom.set_targets(
            {"ordercache": [stack.target], "ordercache-notifier": [f"127.0.0.1:{port}"]}
        )
        await asyncio.to_thread(
            stack.prom.wait,
            lambda: bool(stack.prom.query('up{job="ordercache-notifier"} == 1')),
            "notifier scraped",
            60,
        )
        fault = time.monotonic()
        await r.xadd(stream, {"v": "99", "order_id": "1"})  # an unknown entry schema
        fired = await fires(stack.prom, "OrdercacheStreamDeadLetters", budget(detect=5), fault)
        resolved = (
            await resolves(stack.prom, "OrdercacheStreamDeadLetters", budget(window=900), fault)
            - fired
        )
        _report("OrdercacheStreamDeadLetters", "poison stream entry", fired, resolved)
    finally:
        stack.prom.set_targets({"ordercache": [stack.target]})
        os.killpg(notifier.pid, signal.SIGTERM)
        notifier.wait(20)
        log.close()
        await r.delete(stream)
        await r.aclose()


# --------------------------------------------------------------------------- worker
async def test_worker_loss_fires_lost_down_and_absent(
    stack: Stack, http: aiohttp.ClientSession, ready: Seeded, tmp_path: Path
) -> None:
    prom = stack.prom
    second = start_worker(stack.env, tmp_path / "second")
    prom.set_targets({"ordercache": [stack.target, f"127.0.0.1:{second.port}"]})
    await asyncio.to_thread(
        prom.wait,
        lambda: [float(r["value"][1]) for r in prom.query("ordercache:workers_up:sum")] == [2.0],
        "two workers scraped",
        90,
    )
    # one of two stops and leaves discovery, as a container leaves DNS: no up == 0
    lost_at = time.monotonic()
    prom.set_targets({"ordercache": [stack.target]})
    second.process.kill()
    lost = await fires(prom, "OrdercacheWorkerLost", budget(60), lost_at)
    # the last one crashes but stays a target (static discovery): up == 0
    down_at = time.monotonic()
    stack.worker.process.kill()
    down = await fires(prom, "OrdercacheWorkerDown", budget(60), down_at, instance=stack.target)
    # and then it leaves discovery too: no target at all
    gone = time.monotonic()
    prom.set_targets({})
    absent = await fires(prom, "OrdercacheWorkerAbsent", budget(60), gone)

    stack.worker = start_worker(stack.env, tmp_path / "restarted")
    prom.set_targets({"ordercache": [stack.target]})
    await wait_for(
        http, stack.worker, "/health/ready", lambda r: r.json().get("status") == "ok",
        timeout=90,
    )  # fmt: skip
    back = time.monotonic()
    for name, took, within in (
        ("OrdercacheWorkerDown", down, budget()),
        ("OrdercacheWorkerAbsent", absent, budget()),
        # one worker is the normal size again once the 15-minute maximum forgets two
        ("OrdercacheWorkerLost", lost, budget(60, window=900)),
    ):
        resolved = await resolves(prom, name, within, back)
        _report(name, "workers stopped, then gone from discovery", took, resolved)
