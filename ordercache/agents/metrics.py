"""Pipeline metrics on a registry that is passed in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class PipelineMetrics:
    events: Counter
    dlq: Counter
    lag: Histogram
    consumer_lag: Gauge
    partition_lag: Gauge
    stalled: Gauge
    retries: Counter
    batch_size: Histogram
    reapplied: Counter
    remirrored: Counter
    unresolved: Counter

    def declare_dead_letters(self, topics: Iterable[str], reasons: Iterable[str]) -> None:
        """Create every (topic, reason) dead-letter series at 0 up front. A series that
        appears with its first increment has no earlier sample, so ``increase()`` over
        it stays 0 and the alert depends on the series staying fresh: it would vanish
        the moment the worker stops, before anyone looked."""
        for topic in topics:
            for reason in reasons:
                self.dlq.labels(topic, reason)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PipelineMetrics:
        return cls(
            events=Counter(
                "ordercache_events",
                "Change events by topic and outcome (applied, dlq, tombstone).",
                ["topic", "outcome"],
                registry=registry,
            ),
            dlq=Counter(
                "ordercache_dlq_messages",
                "Records sent to the dead-letter topic, by source topic and reason.",
                ["topic", "reason"],
                registry=registry,
            ),
            lag=Histogram(
                "ordercache_invalidation_lag_seconds",
                "Time from a change event's produce timestamp to its cache operation applied.",
                buckets=LAG_BUCKETS,
                registry=registry,
            ),
            consumer_lag=Gauge(
                "ordercache_consumer_lag_messages",
                "Records between the committed offset and the log end, summed over this "
                "worker's assigned partitions of the topic (read on a timer).",
                ["topic"],
                registry=registry,
            ),
            partition_lag=Gauge(
                "ordercache_consumer_partition_lag_messages",
                "Records between the committed offset and the log end, per assigned partition "
                "(read on a timer).",
                ["topic", "partition"],
                registry=registry,
            ),
            stalled=Gauge(
                "ordercache_invalidation_stalled_seconds",
                "Seconds this worker has been behind (lag > 0) without its committed offset "
                "moving, for its worst partition; 0 when caught up.",
                registry=registry,
            ),
            retries=Counter(
                "ordercache_redis_apply_retries",
                "Retries of a batch's cache operations after a Redis error (offset held).",
                registry=registry,
            ),
            batch_size=Histogram(
                "ordercache_pipeline_batch_records",
                "Records per processed batch.",
                buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
                registry=registry,
            ),
            reapplied=Counter(
                "ordercache_invalidations_reapplied",
                "Recent cache operations re-applied after a Redis restart or failover.",
                registry=registry,
            ),
            remirrored=Counter(
                "ordercache_tracking_remirrored",
                "Recent tracking records given to the stream mirror again after a Redis "
                "restart or failover (the mirror appends only what the server lost).",
                registry=registry,
            ),
            unresolved=Counter(
                "ordercache_events_unresolved",
                "Applied change events that could not name every affected cache entry"
                " (truncate, history_unknown, parent_unknown); those entries expire by TTL.",
                ["topic", "reason"],
                registry=registry,
            ),
        )
