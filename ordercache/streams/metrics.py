"""Prometheus metrics of the tracking streams, created once per registry.

Labels are bounded: ``stream`` is one of the global shard streams (never a
per-order stream), ``group`` a consumer-group name, ``result`` added|duplicate.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import ResponseError

from ordercache.redisconn.client import AnyRedis

_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, StreamMetrics] = (
    weakref.WeakKeyDictionary()
)


class StreamMetrics:
    """The ``ordercache_stream_*`` metric family of the metric name contract."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.mirrored = Counter(
            "ordercache_stream_mirrored",
            "Tracking records mirrored into the global streams, by result.",
            ["result"],
            registry=registry,
        )
        self.length = Gauge(
            "ordercache_stream_length",
            "Entries in the stream (XLEN).",
            ["stream"],
            registry=registry,
        )
        self.group_lag = Gauge(
            "ordercache_stream_group_lag",
            "Entries not yet delivered to the group (XINFO GROUPS lag).",
            ["stream", "group"],
            registry=registry,
        )
        self.pending = Gauge(
            "ordercache_stream_pending",
            "Entries delivered but not acknowledged (XPENDING).",
            ["stream", "group"],
            registry=registry,
        )
        self.oldest_pending_idle = Gauge(
            "ordercache_stream_oldest_pending_idle_seconds",
            "Longest idle time among the oldest pending entries, seconds.",
            ["stream", "group"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "ordercache_stream_dead_letters",
            "Entries moved to the dead-letter stream after too many deliveries.",
            ["stream", "group"],
            registry=registry,
        )
        self.claims = Counter(
            "ordercache_stream_claims",
            "Entries taken over from idle consumers (XAUTOCLAIM).",
            ["stream", "group"],
            registry=registry,
        )

    def forget_group(self, stream: str, group: str) -> None:
        """Drop one group's gauges: a destroyed group (or stream) must not keep
        reporting its last pending count, or alerts on it would never resolve."""
        for gauge in (self.group_lag, self.pending, self.oldest_pending_idle):
            with contextlib.suppress(KeyError):
                gauge.remove(stream, group)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> StreamMetrics:
        """The registry's instance, created on first use (metrics register only once)."""
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = cls(registry)
            _BY_REGISTRY[registry] = found
        return found


async def refresh_group_gauges(
    redis: AnyRedis, metrics: StreamMetrics, *, stream: str, label: str, group: str
) -> None:
    """Set length, lag, pending and oldest-idle gauges of one group (one round trip).

    A missing stream or group removes the group's gauges (a consumer loop that
    re-creates the group brings them back with its next refresh); the length of a
    missing stream is 0.
    """
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    pipe.xpending_range(stream, group, "-", "+", 100)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    length, groups, pending_rows = replies
    labels = (label, group)
    if isinstance(length, int):
        metrics.length.labels(label).set(length)
    info = _group_info(groups, group)
    if info is None:
        # ResponseError "no such key" (stream gone) or a group no longer listed
        if isinstance(groups, list) or _is_missing(groups):
            metrics.forget_group(label, group)
        return
    metrics.pending.labels(*labels).set(int(info.get("pending") or 0))
    lag = info.get("lag")
    if lag is not None:  # Redis cannot always tell (e.g. after deletions)
        metrics.group_lag.labels(*labels).set(int(lag))
    if isinstance(pending_rows, list):
        idle_ms = max((int(r["time_since_delivered"]) for r in pending_rows), default=0)
        metrics.oldest_pending_idle.labels(*labels).set(idle_ms / 1000.0)


def _group_info(groups: object, group: str) -> dict[str, Any] | None:
    if not isinstance(groups, list):
        return None
    for info in groups:
        if info.get("name") in (group, group.encode()):
            return dict(info)
    return None


def _is_missing(reply: object) -> bool:
    """XINFO GROUPS of a key that does not exist answers an error, not an empty list."""
    return isinstance(reply, ResponseError) and "no such key" in str(reply).lower()
