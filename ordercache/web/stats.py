"""``GET /stats``: a JSON page a person can read.

Per view over the recent window (default 5 min, from snapshots every 10 s): requests,
hit ratio, read latency p50/p99 (interpolated from histogram buckets), Redis GET
and database load latency. Then Redis memory, the circuit breaker, pipeline counts
(events applied, dead letters, consumer lag per topic and per partition, the
pipeline's stall verdict, DLQ counts per reason from the changelog-backed table when
the reporter is given it), stream figures (the ``ordercache_stream_*`` gauges when
the streams subsystem exports them), and a status: "degraded" with the reasons when
a threshold of :class:`StatsThresholds` is crossed or the pipeline is stalled.
Everything comes from in-memory metrics: serving this page does no network I/O and
shows no configuration secrets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import faust
from faust import web
from prometheus_client import CollectorRegistry

from ordercache.agents.dlq import summarize
from ordercache.agents.pipeline import ChangePipeline
from ordercache.cache.breaker import CircuitBreaker
from ordercache.cache.views import View
from ordercache.health.redis_info import RedisMonitor
from ordercache.redisconn.client import RedisHandle
from ordercache.web.metrics import READ_SECONDS
from ordercache.web.window import (
    Samples,
    SampleWindow,
    buckets,
    by_label,
    quantile,
    ratio,
    take_samples,
    total,
)

REQUESTS = "ordercache_cache_requests"
OP_SECONDS = "ordercache_cache_operation_duration_seconds"
LOADER_SECONDS = "ordercache_cache_loader_duration_seconds"
EVENTS = "ordercache_events"
DLQ = "ordercache_dlq_messages"
ERRORS = "ordercache_cache_errors"

#: Families whose deltas the window tracks (counters and histograms only).
WINDOWED = frozenset({REQUESTS, OP_SECONDS, LOADER_SECONDS, READ_SECONDS, EVENTS, DLQ, ERRORS})
#: Gauges shown as they are now.
GAUGES = frozenset(
    {
        "ordercache_consumer_lag_messages",
        "ordercache_stream_length",
        "ordercache_stream_group_lag",
        "ordercache_stream_pending",
    }
)


class DlqCounts(Protocol):
    """The changelog-backed dead-letter counts (:mod:`ordercache.tables.dlq_stats`)."""

    def items(self) -> Iterable[tuple[Any, Any]]: ...


@dataclass(frozen=True, slots=True)
class StatsThresholds:
    """When ``/stats`` says "degraded"."""

    #: Hit ratio below this, per view, once the view had ``min_requests`` in the window.
    min_hit_ratio: float = 0.5
    min_requests: int = 20
    #: Read latency p99 above this (seconds), per view with ``min_requests``.
    max_p99_seconds: float = 0.05
    #: Redis used_memory / maxmemory above this.
    max_memory_ratio: float = 0.9
    #: Consumer lag of one topic (this worker's partitions) above this, in records.
    max_consumer_lag: int = 10_000


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _latency(d: Samples, histogram: str, **match: str) -> dict[str, float | None]:
    b = buckets(d, histogram, **match)
    return {"p50": _ms(quantile(0.5, b)), "p99": _ms(quantile(0.99, b))}


def view_stats(d: Samples, view: str) -> dict[str, Any]:
    """One view's figures from a window delta."""
    results = by_label(d, REQUESTS + "_total", "result", view=view)
    hits = results.get("hit", 0.0) + results.get("negative_hit", 0.0)
    requests = sum(results.values())
    return {
        "requests": int(requests),
        "results": {k: int(v) for k, v in sorted(results.items())},
        "hit_ratio": _round(ratio(hits, requests)),
        "latency_ms": _latency(d, READ_SECONDS, view=view),
        "redis_get_ms": _latency(d, OP_SECONDS, view=view, op="get"),
        "db_load_ms": _latency(d, LOADER_SECONDS, view=view),
        "redis_errors": int(total(d, ERRORS + "_total", view=view)),
    }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def evaluate(
    views: Mapping[str, Mapping[str, Any]],
    *,
    redis_up: bool,
    memory_ratio: float | None,
    thresholds: StatsThresholds,
    consumer_lag: Mapping[str, int] | None = None,
    stall: str | None = None,
) -> list[str]:
    """Reasons to call the worker degraded (empty: ok). Pure."""
    reasons: list[str] = []
    if stall is not None:
        reasons.append(f"pipeline {stall}")
    for topic, lag in sorted((consumer_lag or {}).items()):
        if lag > thresholds.max_consumer_lag:
            reasons.append(f"{topic}: consumer lag {lag} > {thresholds.max_consumer_lag}")
    if not redis_up:
        reasons.append("redis down: reads served from the database")
    if memory_ratio is not None and memory_ratio > thresholds.max_memory_ratio:
        reasons.append(
            f"redis memory {memory_ratio:.0%} of maxmemory > {thresholds.max_memory_ratio:.0%}"
        )
    for name, v in views.items():
        if v["requests"] < thresholds.min_requests:
            continue
        hr = v["hit_ratio"]
        if hr is not None and hr < thresholds.min_hit_ratio:
            reasons.append(f"{name}: hit ratio {hr:.2f} < {thresholds.min_hit_ratio:.2f}")
        p99 = v["latency_ms"]["p99"]
        if p99 is not None and p99 > thresholds.max_p99_seconds * 1000:
            reasons.append(f"{name}: p99 {p99:.1f} ms > {thresholds.max_p99_seconds * 1000:.0f} ms")
    return reasons


class StatsReporter:
    """Keeps the sample window and renders the page."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        redis: RedisHandle,
        monitor: RedisMonitor,
        breaker: CircuitBreaker,
        pipeline: ChangePipeline | None = None,
        dlq_counts: DlqCounts | None = None,
        warming: Callable[[], dict[str, Any]] | None = None,
        thresholds: StatsThresholds | None = None,
        window: SampleWindow | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.redis = redis
        self.monitor = monitor
        self.breaker = breaker
        self.pipeline = pipeline
        self.dlq_counts = dlq_counts
        #: Cache warming's progress (None: warming is off).
        self.warming = warming
        self.thresholds = thresholds or StatsThresholds()
        self.window = window or SampleWindow()
        self.clock = clock

    def sample(self) -> None:
        """Add a snapshot to the window (called by the background monitor)."""
        self.window.add(self.clock(), take_samples(self.registry, WINDOWED))

    def render(self) -> dict[str, Any]:
        now = self.clock()
        current = take_samples(self.registry, WINDOWED)
        covered, d = self.window.recent(now, current)
        views = {v.value: view_stats(d, v.value) for v in View}
        info = self.monitor.info
        pipeline = self.pipeline
        reasons = evaluate(
            views,
            redis_up=self.monitor.up,
            memory_ratio=info.memory_ratio,
            thresholds=self.thresholds,
            consumer_lag=pipeline.progress.topic_lag() if pipeline is not None else None,
            stall=pipeline.stall_reason() if pipeline is not None else None,
        )
        gauges = take_samples(self.registry, GAUGES)
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "window": {"seconds": round(covered, 1), "span_seconds": self.window.span},
            "views": views,
            "redis": self._redis(),
            "cache": {"breaker": self.breaker.state.name.lower().replace("_", "-")},
            "pipeline": self._pipeline(d, current, gauges),
            "streams": self._streams(gauges),
            "warming": None if self.warming is None else self.warming(),
            "thresholds": asdict(self.thresholds),
        }

    def _redis(self) -> dict[str, Any]:
        mon, info = self.monitor, self.monitor.info
        try:
            pool: Mapping[str, int] = self.redis.pool_stats()
        except (AttributeError, TypeError):
            pool = {}
        return {
            "up": mon.up,
            "error": mon.last_error,
            "used_memory_bytes": info.used_memory,
            "maxmemory_bytes": info.maxmemory,
            "memory_ratio": _round(info.memory_ratio),
            "connected_clients": info.connected_clients,
            "evicted_keys": info.evicted_keys,
            "keys": info.keys,
            "pool": dict(pool),
        }

    def _pipeline(self, d: Samples, current: Samples, gauges: Samples) -> dict[str, Any]:
        events = EVENTS + "_total"
        dlq = DLQ + "_total"
        out: dict[str, Any] = {
            "events_applied": int(total(current, events, outcome="applied")),
            "events_applied_window": int(total(d, events, outcome="applied")),
            "events_by_outcome": {
                k: int(v) for k, v in sorted(by_label(current, events, "outcome").items())
            },
            "dlq_messages": int(total(current, dlq)),
            "dlq_messages_window": int(total(d, dlq)),
            "consumer_lag": {
                k: int(v)
                for k, v in by_label(gauges, "ordercache_consumer_lag_messages", "topic").items()
            },
        }
        if self.pipeline is not None:
            out["assigned_partitions"] = len(self.pipeline.assigned)
            out["stall"] = self.pipeline.stall_reason()
            out["partitions"] = {
                f"{p.topic}/{p.partition}": {
                    "lag": p.lag,
                    "end": p.end,
                    "committed": p.committed,
                    "stalled_seconds": p.stalled_seconds,
                }
                for p in self.pipeline.progress.partitions()
            }
        if self.dlq_counts is not None:
            out["dlq_by_reason"] = summarize(self.dlq_counts.items())
        return out

    def _streams(self, gauges: Samples) -> dict[str, Any] | None:
        found: dict[str, dict[str, int]] = {"length": {}, "group_lag": {}, "pending": {}}
        for (name, labels), value in gauges.items():
            section = name.removeprefix("ordercache_stream_")
            if section in found:
                have = dict(labels)
                key = "/".join(have[k] for k in ("stream", "group") if k in have)
                found[section][key] = int(value)
        return found if any(found.values()) else None


def register(app: faust.App, reporter: StatsReporter) -> None:
    """Serve ``GET /stats``."""

    @app.page("/stats", name="ordercache_stats")
    async def stats(self: web.View, request: web.Request) -> web.Response:
        """Hit ratios, latencies, Redis memory, pipeline counts and a status."""
        return self.json(reporter.render(), headers={"Cache-Control": "no-store"})
