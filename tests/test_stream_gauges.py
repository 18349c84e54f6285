"""Stream gauges stay true: a consumer group or a stream that disappears stops reporting.

Against the real Redis: the worker's ``StreamGauges`` pass and the consumers'
``refresh_group_gauges`` both drop a destroyed group's pending / lag / oldest-idle
series, so an alert on them resolves instead of firing on a frozen value.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from ordercache.agents.tracking import StreamGauges
from ordercache.cache.keys import KeySpace
from ordercache.streams import StreamLayout, StreamMetrics
from ordercache.streams.metrics import refresh_group_gauges


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(f"ordercache_stream_{name}", labels)


async def _stuck_group(r: aioredis.Redis, stream: str, group: str, n: int) -> None:
    """A group that read ``n`` entries and acknowledged none."""
    for i in range(n):
        await r.xadd(stream, {"n": str(i)})
    await r.xgroup_create(stream, group, id="0")
    await r.xreadgroup(group, "c1", {stream: ">"}, count=n)


async def test_worker_gauges_forget_a_destroyed_group_and_a_deleted_stream(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    layout = StreamLayout(KeySpace(key_prefix), 2)
    registry = CollectorRegistry()
    gauges = StreamGauges(redis_raw, layout, registry)
    stream = layout.shard_stream(0)
    await _stuck_group(redis_raw, stream, "notify", 5)
    await _stuck_group(redis_raw, stream, "audit", 3)

    await gauges.refresh()
    assert _value(registry, "pending", stream="tracking:0", group="notify") == 5
    assert _value(registry, "pending", stream="tracking:0", group="audit") == 3
    assert _value(registry, "length", stream="tracking:0") == 8  # 5 + 3 entries added

    await redis_raw.xgroup_destroy(stream, "notify")
    await gauges.refresh()
    for name in ("pending", "group_lag", "oldest_pending_idle_seconds"):
        assert _value(registry, name, stream="tracking:0", group="notify") is None, name
    assert _value(registry, "pending", stream="tracking:0", group="audit") == 3

    await redis_raw.delete(stream)
    await gauges.refresh()
    assert _value(registry, "pending", stream="tracking:0", group="audit") is None
    assert _value(registry, "length", stream="tracking:0") == 0


async def test_consumer_refresh_forgets_its_destroyed_group(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    stream = f"{key_prefix}:stream:tracking:{{0}}"
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)
    await _stuck_group(redis_raw, stream, "g", 4)

    await refresh_group_gauges(redis_raw, metrics, stream=stream, label="tracking:0", group="g")
    assert _value(registry, "pending", stream="tracking:0", group="g") == 4
    assert (
        _value(registry, "oldest_pending_idle_seconds", stream="tracking:0", group="g")
    ) is not None

    await redis_raw.xgroup_destroy(stream, "g")
    await refresh_group_gauges(redis_raw, metrics, stream=stream, label="tracking:0", group="g")
    assert _value(registry, "pending", stream="tracking:0", group="g") is None
    assert _value(registry, "oldest_pending_idle_seconds", stream="tracking:0", group="g") is None
    assert _value(registry, "length", stream="tracking:0") == 4
