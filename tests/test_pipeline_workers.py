"""Whole workers (``ordercache worker`` subprocesses): crash recovery and sharing.

Every event invalidates a cache entry that was filled before (at an older version),
so "no invalidation lost" is checkable: at the end no such entry may remain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.service import CacheService, build_cache_service
from ordercache.cache.views import INVENTORY, View
from ordercache.models.views import ProductInventory
from tests.conftest import REDIS_URL, unique
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def envelope(pid: int, version: int) -> bytes:
    return json.dumps(
        {
            "before": None,
            "after": {
                "product_id": pid, "available": 1, "reserved": 0, "version": version,
                "updated_at": "2026-03-01T10:00:00Z",
            },
            "op": "u",
            "source": {"lsn": version, "txId": version, "ts_ms": 1, "table": "inventory"},
            "ts_ms": 1,
        }
    ).encode()  # fmt: skip


@pytest.fixture
async def cache(redis_raw: aioredis.Redis, key_prefix: str) -> AsyncIterator[CacheService]:
    client = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=8)
    )
    yield build_cache_service(
        client, KeySpace(key_prefix), TtlPolicy(jitter=0.0),
        CacheMetrics.create(CollectorRegistry()), timeout=2.0,
    )  # fmt: skip
    await client.aclose()


async def prefill(cache: CacheService, ids: range) -> None:
    """Entries at version 1 that the events (version 2) must invalidate."""
    values = [
        ProductInventory(
            product_id=i,
            sku="S",
            available=0,
            reserved=0,
            version=1,
            updated_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        )
        for i in ids
    ]
    for start in range(0, len(values), 1000):
        await cache.set_many(INVENTORY, values[start : start + 1000])


async def produce(bootstrap: str, topic: str, ids: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=65536)
    await producer.start()
    try:
        for i in ids:
            await producer.send(topic, envelope(i, 2), key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def remaining(client: aioredis.Redis, cache: CacheService, ids: range) -> int:
    keys = [cache.keys.entry(View.INVENTORY, i) for i in ids]
    n = 0
    for start in range(0, len(keys), 2000):
        n += sum(1 for v in await client.mget(keys[start : start + 2000]) if v is not None)
    return n


def worker_settings(tag: str, key_prefix: str, pg_url: str, kafka: str) -> dict[str, object]:
    return {
        "redis_url": REDIS_URL,
        "redis_key_prefix": key_prefix,
        "database_url": pg_url,
        "kafka_broker": kafka,
        "app_id": f"oc-{tag}",
        "topic_orders": f"{tag}.orders",
        "topic_inventory": f"{tag}.inventory",
        "topic_tracking": f"{tag}.tracking",
        "topic_dlq": f"{tag}.dlq",
        "kafka_partitions": 4,
    }


async def wait_until(predicate, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_sigkill_mid_batch_then_restart_loses_no_invalidation(
    cache: CacheService, redis_raw: aioredis.Redis, key_prefix: str,
    pg_schema: str, kafka_broker: str, tmp_path: Path,
) -> None:  # fmt: skip
    tag = unique("k")
    ids = range(1, 20_001)
    await prefill(cache, ids)
    settings = worker_settings(tag, key_prefix, pg_schema, kafka_broker)
    worker = WorkerProcess.configured(tmp_path, "w1", **settings).start()
    try:
        worker.wait_for_log("pipeline assigned partitions", timeout=90)
        # The events are sent while the worker applies them; it is killed as soon as
        # the first invalidation shows. The last 1,000 are sent only after the kill,
        # so the restarted worker always has work left, however fast the first was.
        head, tail = ids[:-1000], ids[-1000:]
        sending = asyncio.create_task(produce(kafka_broker, f"{tag}.inventory", head))

        async def started() -> bool:
            return await remaining(redis_raw, cache, ids) < len(ids)

        try:
            await wait_until(started)
            worker.kill()  # SIGKILL while it works through the backlog
        finally:
            await sending
        await produce(kafka_broker, f"{tag}.inventory", tail)
        left_at_kill = await remaining(redis_raw, cache, ids)
        assert len(tail) <= left_at_kill < len(ids)
    finally:
        worker.kill()

    restarted = WorkerProcess.configured(tmp_path, "w1b", **settings).start()
    try:

        async def all_applied() -> bool:
            return await remaining(redis_raw, cache, ids) == 0

        await wait_until(all_applied, timeout=120)
        assert restarted.terminate() == 0
    finally:
        restarted.kill()


async def test_two_workers_share_partitions_with_the_same_result(
    cache: CacheService, redis_raw: aioredis.Redis, key_prefix: str,
    pg_schema: str, kafka_broker: str, tmp_path: Path,
) -> None:  # fmt: skip
    tag = unique("s")
    ids = range(1, 8_001)
    await prefill(cache, ids)
    settings = worker_settings(tag, key_prefix, pg_schema, kafka_broker)
    a = WorkerProcess.configured(tmp_path, "a", **settings).start()
    b = WorkerProcess.configured(tmp_path, "b", **settings).start()
    try:
        a.wait_for_log("pipeline assigned partitions", timeout=90)
        b.wait_for_log("pipeline assigned partitions", timeout=90)

        def split() -> tuple[set[str], set[str]]:
            def last(log: str) -> set[str]:
                lines = [ln for ln in log.splitlines() if "pipeline assigned partitions:" in ln]
                tail = lines[-1].split("pipeline assigned partitions:", 1)[1].strip()
                return set() if tail == "-" else set(tail.split(","))

            return last(a.log()), last(b.log())

        async def balanced() -> bool:
            pa, pb = split()
            return bool(pa) and bool(pb) and not (pa & pb) and len(pa | pb) == 12

        await wait_until(balanced, timeout=90)
        await produce(kafka_broker, f"{tag}.inventory", ids)

        async def all_applied() -> bool:
            return await remaining(redis_raw, cache, ids) == 0

        await wait_until(all_applied, timeout=120)
        pa, pb = split()
        inv_a = {p for p in pa if p.startswith(f"{tag}.inventory/")}
        inv_b = {p for p in pb if p.startswith(f"{tag}.inventory/")}
        assert inv_a and inv_b and not (inv_a & inv_b)  # both did part of the work
        assert a.terminate() == 0
        assert b.terminate() == 0
    finally:
        a.kill()
        b.kill()
