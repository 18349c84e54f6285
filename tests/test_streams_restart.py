"""A Redis restart under the mirror and a running consumer (private redis-server)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from ordercache.cache.keys import KeySpace
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.streams.config import ConsumerConfig, MirrorConfig
from ordercache.streams.consumer import StreamConsumer, StreamMessage
from ordercache.streams.entry import TrackingRecord
from ordercache.streams.errors import StreamError
from ordercache.streams.mirror import MirrorResult, StreamMirror


def records(start: int, n: int) -> list[TrackingRecord]:
    return [
        TrackingRecord(
            event_id=f"ev-{i}",
            order_id=1 + i % 3,
            status="in_transit",
            location=None,
            carrier=None,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
            shipment_id=None,
            topic="tracking.updates",
            partition=0,
            offset=i,
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
async def private_client(private_redis: ManagedProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(
        host="127.0.0.1",
        port=private_redis.port,
        socket_timeout=2.0,
        socket_connect_timeout=0.5,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
    )
    yield client
    await client.aclose()


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


async def test_consumer_survives_redis_restart(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    mirror = StreamMirror(private_client, KeySpace("rs"), MirrorConfig(shards=1))
    stream = mirror.layout.shard_stream(0)
    handled: Counter[str] = Counter()

    async def handler(msg: StreamMessage) -> None:
        handled[msg.entry.fields["event_id"]] += 1

    cfg = ConsumerConfig(
        block_ms=200, claim_interval_s=0.1, backoff_base_s=0.05, backoff_cap_s=0.3, start_id="0"
    )
    consumer = StreamConsumer(private_client, stream, "g", "c1", handler, cfg)
    consumer.start()
    await mirror.mirror(records(0, 20))
    await until(lambda: len(handled) == 20, "entries before the restart")

    private_redis.kill()  # no persistence: stream, group and scripts are gone
    await until(lambda: consumer.stats.redis_errors > 0, "the consumer noticed the outage")
    second = start_redis_server(port=private_redis.port)
    try:
        # The new server knows neither the scripts nor the stream nor the group.
        assert await mirror.mirror(records(20, 30)) == MirrorResult(30, 0)
        await until(lambda: len(handled) == 50, "entries after the restart")
        await consumer.stop()
        assert all(handled[f"ev-{i}"] == 1 for i in range(20, 50))
        assert consumer.stats.groups_created == 2
        assert int((await private_client.xpending(stream, "g"))["pending"]) == 0
    finally:
        await consumer.stop()
        second.cleanup()


async def test_mirror_reports_outage_as_retriable(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    mirror = StreamMirror(private_client, KeySpace("rs"), MirrorConfig(shards=2))
    batch = records(0, 10)
    assert (await mirror.mirror(batch)).added == 10
    private_redis.kill()
    with pytest.raises(StreamError) as info:
        await mirror.mirror(batch)
    assert info.value.retriable
    second = start_redis_server(port=private_redis.port)
    try:
        # A fresh server (scripts forgotten): the retry loads them and completes.
        assert (await mirror.mirror(batch)).added == 10
        assert await mirror.mirror(batch) == MirrorResult(0, 10)
    finally:
        second.cleanup()


async def test_mirror_reloads_flushed_scripts(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    mirror = StreamMirror(private_client, KeySpace("rs"), MirrorConfig(shards=2))
    await mirror.mirror(records(0, 5))
    await private_client.script_flush()
    assert await mirror.mirror(records(0, 8)) == MirrorResult(3, 5)
