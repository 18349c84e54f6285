"""StreamMirror against the real Redis: exactly once in effect, ordering, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from ordercache.cache.keys import KeySpace
from ordercache.streams.config import MirrorConfig
from ordercache.streams.entry import TrackingRecord
from ordercache.streams.errors import MirrorOrderError, StreamError
from ordercache.streams.metrics import StreamMetrics
from ordercache.streams.mirror import MirrorResult, StreamMirror

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOPIC = "tracking.updates"


def make_log(
    n: int, *, partitions: int = 3, orders: int = 20, seed: int = 1
) -> list[TrackingRecord]:
    """A Kafka-like log: ``n`` events spread over partitions, offsets per partition."""
    rng = random.Random(seed)
    next_offset = [0] * partitions
    out = []
    for i in range(n):
        order_id = rng.randint(1, orders)
        p = order_id % partitions  # keyed by order, like the real topic
        out.append(
            TrackingRecord(
                event_id=f"ev-{i}",
                order_id=order_id,
                status=rng.choice(["picked_up", "in_transit", "out_for_delivery", "delivered"]),
                location=rng.choice([None, "Berlin", "Hamburg"]),
                carrier="DHL",
                occurred_at=T0 + timedelta(seconds=i),
                shipment_id=None,
                topic=TOPIC,
                partition=p,
                offset=next_offset[p],
            )
        )
        next_offset[p] += 1
    return out


async def stream_events(r: aioredis.Redis, key: str) -> list[str]:
    return [f[b"event_id"].decode() for _, f in await r.xrange(key)]


async def global_events(r: aioredis.Redis, mirror: StreamMirror) -> list[str]:
    out: list[str] = []
    for key in mirror.layout.shard_streams():
        out += await stream_events(r, key)
    return out


@pytest.fixture
def mirror(redis_raw: aioredis.Redis, key_prefix: str) -> StreamMirror:
    return StreamMirror(redis_raw, KeySpace(key_prefix), MirrorConfig(shards=3))


async def test_same_batch_twice_adds_once(redis_raw: aioredis.Redis, mirror: StreamMirror) -> None:
    batch = make_log(200)
    assert await mirror.mirror(batch) == MirrorResult(200, 0)
    assert await mirror.mirror(batch) == MirrorResult(0, 200)
    events = await global_events(redis_raw, mirror)
    assert sorted(events) == sorted(r.event_id for r in batch)
    per_order: list[str] = []
    for order_id in {r.order_id for r in batch}:
        per_order += await stream_events(redis_raw, mirror.layout.order_stream(order_id))
    assert sorted(per_order) == sorted(r.event_id for r in batch)


@pytest.mark.parametrize("window_ms", [600_000, 0], ids=["ids+offsets", "offsets-only"])
async def test_overlapping_redelivery_adds_each_event_once(
    redis_raw: aioredis.Redis, key_prefix: str, window_ms: int
) -> None:
    """Replays from older committed offsets, in batches of varying size and overlap.

    With the event-id window off, the offset watermarks alone must do it.
    """
    cfg = MirrorConfig(shards=3, dedupe_window_ms=window_ms)
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), cfg)
    log = make_log(1500, partitions=4, orders=30, seed=7)
    by_partition: dict[int, list[TrackingRecord]] = {}
    for r in log:
        by_partition.setdefault(r.partition, []).append(r)
    rng = random.Random(3)
    committed = dict.fromkeys(by_partition, 0)
    position = dict.fromkeys(by_partition, 0)
    total = MirrorResult(0, 0)
    while any(position[p] < len(recs) for p, recs in by_partition.items()):
        batch: list[TrackingRecord] = []
        for p, recs in by_partition.items():
            take = rng.randint(0, 60)
            batch += recs[position[p] : position[p] + take]
            position[p] = min(len(recs), position[p] + take)
        res = await mirror.mirror(batch)
        total = MirrorResult(total.added + res.added, total.duplicates + res.duplicates)
        for p in by_partition:
            if rng.random() < 0.4:  # "crash before commit": redeliver from the last commit
                position[p] = committed[p]
            else:
                committed[p] = position[p]
    assert total.added == len(log)
    assert total.duplicates > 0
    events = await global_events(redis_raw, mirror)
    assert len(events) == len(set(events)) == len(log)
    for order_id in {r.order_id for r in log}:
        got = await stream_events(redis_raw, mirror.layout.order_stream(order_id))
        want = [r.event_id for r in log if r.order_id == order_id]
        assert got == want  # once each, in Kafka order


async def test_global_shard_keeps_batch_order(
    redis_raw: aioredis.Redis, mirror: StreamMirror
) -> None:
    log = make_log(300, partitions=2, orders=9)
    for i in range(0, 300, 37):
        await mirror.mirror(log[i : i + 37])
    for shard, key in enumerate(mirror.layout.shard_streams()):
        want = [r.event_id for r in log if r.order_id % 3 == shard]
        assert await stream_events(redis_raw, key) == want


async def test_repeated_event_id_under_new_offset(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    """A producer retry: same event id, later offset. Dropped inside the dedupe window."""
    first = make_log(1)[0]
    retry = dataclasses.replace(first, offset=first.offset + 5)
    on = StreamMirror(redis_raw, KeySpace(key_prefix), MirrorConfig(shards=1))
    assert await on.mirror([first]) == MirrorResult(1, 0)
    assert await on.mirror([retry]) == MirrorResult(0, 1)
    assert await redis_raw.xlen(on.layout.order_stream(first.order_id)) == 1
    # With the window off only offsets count: the retry is a new entry.
    off = StreamMirror(
        redis_raw, KeySpace(key_prefix + "b"), MirrorConfig(shards=1, dedupe_window_ms=0)
    )
    try:
        await off.mirror([first])
        assert await off.mirror([retry]) == MirrorResult(1, 0)
    finally:
        for key in [*off.layout.shard_streams(), off.layout.order_stream(first.order_id)]:
            await redis_raw.delete(key, key + ":offsets", key + ":seen")


async def test_duplicates_inside_one_batch(redis_raw: aioredis.Redis, mirror: StreamMirror) -> None:
    log = make_log(10, partitions=1, orders=2)
    batch = [log[0], log[0], log[1], log[2], log[2], log[3]]
    assert await mirror.mirror(batch) == MirrorResult(4, 2)
    assert len(await global_events(redis_raw, mirror)) == 4


async def test_out_of_order_batch_is_refused(mirror: StreamMirror) -> None:
    log = make_log(5, partitions=1)
    with pytest.raises(MirrorOrderError):
        await mirror.mirror([log[3], log[1]])
    assert await mirror.mirror([]) == MirrorResult(0, 0)


async def test_maxlen_keeps_streams_bounded(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    """20k records through MAXLEN ~ 1000 (global) and ~ 50 (per order)."""
    cfg = MirrorConfig(shards=2, global_maxlen=1000, global_max_age_ms=0, order_maxlen=50)
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), cfg)
    log = make_log(20_000, partitions=4, orders=6, seed=11)
    node = int((await redis_raw.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    highest = 0
    for i in range(0, len(log), 1000):
        assert (await mirror.mirror(log[i : i + 1000])).added == 1000
        for key in mirror.layout.shard_streams():
            length = await redis_raw.xlen(key)
            highest = max(highest, length)
            # "~" trims whole macro nodes: at most one node over the cap.
            assert length <= cfg.global_maxlen + node
    assert highest >= cfg.global_maxlen  # it did fill up, so trimming was exercised
    for order_id in range(1, 7):
        assert await redis_raw.xlen(mirror.layout.order_stream(order_id)) <= cfg.order_maxlen + node
        assert await redis_raw.pttl(mirror.layout.order_stream(order_id)) > 0


async def test_minid_trims_by_age(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    cfg = MirrorConfig(shards=1, global_maxlen=0, global_max_age_ms=300)
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), cfg)
    log = make_log(510, partitions=1)
    await mirror.mirror(log[:500])
    key = mirror.layout.shard_stream(0)
    assert await redis_raw.xlen(key) == 500
    await asyncio.sleep(0.6)
    await mirror.mirror(log[500:])
    remaining = await stream_events(redis_raw, key)
    assert remaining[-10:] == [r.event_id for r in log[500:]]
    assert len(remaining) <= 10 + 100  # old entries gone, up to one macro node kept


async def test_dedupe_memory_is_windowed(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    cfg = MirrorConfig(shards=1, dedupe_window_ms=200)
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), cfg)
    log = make_log(60, partitions=1, orders=1)
    await mirror.mirror(log[:50])
    seen = mirror.layout.shard_seen(0)
    assert await redis_raw.zcard(seen) == 50
    assert 0 < await redis_raw.pttl(seen) <= 200
    await asyncio.sleep(0.3)
    await mirror.mirror(log[50:])
    assert await redis_raw.zcard(seen) == 10
    # Offsets still guard redelivery after the window: nothing is added twice.
    assert await mirror.mirror(log) == MirrorResult(0, 60)


async def test_broken_global_stream_fails_the_batch_until_fixed(
    redis_raw: aioredis.Redis, mirror: StreamMirror
) -> None:
    """The shard stream key holds a string: the batch raises (retriable), nothing of
    that shard is marked as mirrored, and a retry after the fix completes it."""
    log = make_log(30, partitions=2, orders=5)
    broken = mirror.layout.shard_stream(0)
    await redis_raw.set(broken, "not a stream")
    with pytest.raises(StreamError) as info:
        await mirror.mirror(log)
    assert info.value.retriable
    await redis_raw.delete(broken)
    res = await mirror.mirror(log)
    in_shard0 = sum(1 for r in log if r.order_id % 3 == 0)
    assert res == MirrorResult(in_shard0, 30 - in_shard0)
    assert len(await global_events(redis_raw, mirror)) == 30


async def test_broken_order_stream_does_not_block_the_rest(
    redis_raw: aioredis.Redis, mirror: StreamMirror
) -> None:
    """A per-order key that is not a stream: the global entries are written, the
    failure is reported, and the batch is not retried forever."""
    log = make_log(30, partitions=2, orders=5)
    victim = log[0].order_id
    await redis_raw.set(mirror.layout.order_stream(victim), "not a stream")
    res = await mirror.mirror(log)
    victims = sum(1 for r in log if r.order_id == victim)
    assert res == MirrorResult(30, 0, victims)
    assert len(await global_events(redis_raw, mirror)) == 30
    assert await mirror.mirror(log) == MirrorResult(0, 30)


async def test_order_entry_has_the_global_entry_id(
    redis_raw: aioredis.Redis, mirror: StreamMirror
) -> None:
    log = make_log(50, partitions=2, orders=4)
    await mirror.mirror(log)
    global_ids: dict[str, bytes] = {}
    for key in mirror.layout.shard_streams():
        for entry_id, fields in await redis_raw.xrange(key):
            global_ids[fields[b"event_id"].decode()] = entry_id
    for order_id in {r.order_id for r in log}:
        for entry_id, fields in await redis_raw.xrange(mirror.layout.order_stream(order_id)):
            assert global_ids[fields[b"event_id"].decode()] == entry_id


async def test_large_batch_in_one_shard(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    """One script call per shard, whatever the batch size (Lua slices its long lists)."""
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), MirrorConfig(shards=1))
    log = make_log(2600, partitions=1, orders=1)
    assert await mirror.mirror(log) == MirrorResult(2600, 0)
    assert await stream_events(redis_raw, mirror.layout.shard_stream(0)) == [
        r.event_id for r in log
    ]
    assert await mirror.mirror(log) == MirrorResult(0, 2600)
    assert await redis_raw.zcard(mirror.layout.shard_seen(0)) == 2600


async def test_mirrored_metric(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)
    assert StreamMetrics.for_registry(registry) is metrics
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), MirrorConfig(shards=2), metrics=metrics)
    log = make_log(40)
    await mirror.mirror(log)
    await mirror.mirror(log[:15])

    def value(result: str) -> Any:
        return registry.get_sample_value("ordercache_stream_mirrored_total", {"result": result})

    assert value("added") == 40
    assert value("duplicate") == 15
