"""Prometheus metrics of the tracking streams, created once per registry.

Labels are bounded: ``stream`` is one of the global shard streams (never a
per-order stream), ``group`` a consumer-group name, ``result`` added|duplicate.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

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

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> StreamMetrics:
        """The registry's instance, created on first use (metrics register only once)."""
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = cls(registry)
            _BY_REGISTRY[registry] = found
        return found
