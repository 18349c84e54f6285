"""Cache metrics on a registry that is passed in (few, bounded labels; base units)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ordercache.cache.views import View

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
RESULTS = ("hit", "miss", "bypass", "negative_hit")
#: Why ``fill.lua`` refused a fill: an invalidation happened since the load began
#: (``generation``), the version is below the tombstone floor (``stale``), or a newer
#: entry is cached already (``older``).
FILL_REJECT_REASONS = ("generation", "stale", "older")
OPS = ("get", "get_many", "acquire", "fill", "set", "invalidate", "delete", "apply")


class NearHits(Collector):
    """``ordercache_cache_near_hits_total{view}``: reads answered by the near-cache,
    which also count as ``hit`` / ``negative_hit`` in ``ordercache_cache_requests_total``.

    A near-cache hit takes a couple of microseconds; a locked Counter increment would
    be a fifth of it. So a hit adds 1 to a plain integer (only the event loop's thread
    does), and :meth:`collect` first moves what accrued into the requests counter.
    This collector is registered *before* that counter, so every scrape (and every
    ``/stats`` sample) sees both up to date.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        views = [v.value for v in View]
        self.hits = dict.fromkeys(views, 0)
        self.negative = dict.fromkeys(views, 0)
        self._moved = {(v, r): 0 for v in views for r in ("hit", "negative_hit")}
        self.requests: Counter | None = None
        registry.register(self)

    def total(self, view: str) -> int:
        return self.hits[view] + self.negative[view]

    def flush(self) -> None:
        """Move the hits counted since the last flush into the requests counter."""
        if self.requests is None:
            return
        for (view, result), moved in self._moved.items():
            now = (self.hits if result == "hit" else self.negative)[view]
            if now != moved:
                self.requests.labels(view, result).inc(now - moved)
                self._moved[(view, result)] = now

    def collect(self) -> Iterator[Metric]:
        self.flush()
        family = CounterMetricFamily(
            "ordercache_cache_near_hits",
            "Reads answered by the near-cache (L1), also counted as cache hits.",
            labels=["view"],
        )
        for view in self.hits:
            family.add_metric([view], self.total(view))
        yield family


@dataclass(frozen=True)
class CacheMetrics:
    requests: Counter
    errors: Counter
    fills_rejected: Counter
    stampede_waits: Counter
    op_seconds: Histogram
    loader_seconds: Histogram
    breaker_state: Gauge
    near_hits: NearHits
    near_entries: Gauge
    near_flushes: Counter
    early_refreshes: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CacheMetrics:
        near_hits = NearHits(registry)  # before the requests counter: see NearHits
        m = cls(
            requests=Counter(
                "ordercache_cache_requests",
                "Cache reads by view and result.",
                ["view", "result"],
                registry=registry,
            ),
            errors=Counter(
                "ordercache_cache_errors",
                "Redis errors seen by the cache service, by view and operation.",
                ["view", "op"],
                registry=registry,
            ),
            fills_rejected=Counter(
                "ordercache_cache_fills_rejected",
                "Fills refused by the version guard (generation: an invalidation happened "
                "during the load; stale: older than the tombstone floor; older: a newer "
                "entry is cached).",
                ["view", "reason"],
                registry=registry,
            ),
            stampede_waits=Counter(
                "ordercache_cache_stampede_waits",
                "Readers that waited for another load instead of loading themselves.",
                ["view", "kind"],
                registry=registry,
            ),
            op_seconds=Histogram(
                "ordercache_cache_operation_duration_seconds",
                "Latency of cache operations (Redis round trips included).",
                ["view", "op"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            loader_seconds=Histogram(
                "ordercache_cache_loader_duration_seconds",
                "Latency of database loads on a miss or bypass.",
                ["view"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            breaker_state=Gauge(
                "ordercache_cache_breaker_state",
                "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                registry=registry,
            ),
            near_hits=near_hits,
            near_entries=Gauge(
                "ordercache_cache_near_entries",
                "Entries held by the near-cache (L1).",
                registry=registry,
            ),
            early_refreshes=Counter(
                "ordercache_cache_early_refreshes",
                "Entries reloaded before expiry by probabilistic early refresh (XFetch).",
                ["view"],
                registry=registry,
            ),
            near_flushes=Counter(
                "ordercache_cache_near_flushes",
                "Near-cache flushes by reason (disconnected, breaker, flushdb, ...).",
                ["reason"],
                registry=registry,
            ),
        )
        near_hits.requests = m.requests
        # Pre-create the children so every series exists from the start (rates work).
        for view in View:
            for result in RESULTS:
                m.requests.labels(view.value, result)
            for reason in FILL_REJECT_REASONS:
                m.fills_rejected.labels(view.value, reason)
            for kind in ("singleflight", "lease"):
                m.stampede_waits.labels(view.value, kind)
            for op in OPS:
                m.errors.labels(view.value, op)
            m.loader_seconds.labels(view.value)
            m.early_refreshes.labels(view.value)
        return m
