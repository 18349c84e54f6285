"""``GET /metrics``: everything in the context's registry, in Prometheus text format.

The registry already holds the cache and pipeline metrics. This module adds:

* :class:`RedisCollector` — Redis INFO figures and the client's pool, read from
  in-memory snapshots (a collector must never do network I/O: a scrape would stall
  on a hung Redis). A background task refreshes the INFO snapshot.
* :class:`WebMetrics` — end-to-end read latency per view and the health gauge.
* Faust's own sensors (:mod:`faust.sensors.prometheus`) on the *same* registry and
  served by *our* route: we build its ``FaustMetrics`` and monitor directly instead
  of calling ``setup_prometheus_sensors``, which would add a second ``/metrics`` page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import faust
from faust import web
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram
from prometheus_client import generate_latest as generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ordercache.cache.metrics import LATENCY_BUCKETS
from ordercache.health.redis_info import RedisMonitor
from ordercache.redisconn.client import RedisHandle

log = logging.getLogger(__name__)

#: Prefix of Faust's sensor metrics on our registry (``ordercache_faust_messages_received_total``…).
FAUST_PREFIX = "ordercache_faust"

READ_SECONDS = "ordercache_read_duration_seconds"
HEALTH_STATUS = "ordercache_health_status"
HEALTH_COMPONENT_UP = "ordercache_health_component_up"


@dataclass(frozen=True)
class WebMetrics:
    """Metrics owned by the web layer."""

    #: Handler time of a read (cache or database, serialisation included), by view
    #: and X-Cache result. Pages served from the database only count as "bypass".
    read_seconds: Histogram
    #: 0 ok, 1 degraded, 2 down: the last readiness evaluation.
    health_status: Gauge
    #: 1 if a readiness component was ok at the last evaluation, else 0.
    health_component_up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WebMetrics:
        m = cls(
            read_seconds=Histogram(
                READ_SECONDS,
                "Latency of read API requests, by view and X-Cache result.",
                ["view", "cache"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            health_status=Gauge(
                HEALTH_STATUS,
                "Readiness of this worker: 0 ok, 1 degraded, 2 down.",
                registry=registry,
            ),
            health_component_up=Gauge(
                HEALTH_COMPONENT_UP,
                "1 if the readiness component (redis, database, broker, pipeline) was ok "
                "at the last evaluation, else 0.",
                ["component"],
                registry=registry,
            ),
        )
        for view in ("order", "history", "inventory"):
            for cache in ("hit", "miss", "bypass"):
                m.read_seconds.labels(view, cache)
        return m


class RedisCollector:
    """Redis INFO gauges and pool connections from in-memory snapshots (no I/O)."""

    def __init__(self, handle: RedisHandle, monitor: RedisMonitor) -> None:
        self.handle = handle
        self.monitor = monitor

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        mon = self.monitor
        info = mon.info
        yield GaugeMetricFamily(
            "ordercache_redis_up",
            "1 if the last Redis INFO refresh succeeded, else 0.",
            value=1.0 if mon.up else 0.0,
        )
        yield GaugeMetricFamily(
            "ordercache_redis_memory_used_bytes",
            "Redis used_memory (last successful INFO).",
            value=info.used_memory,
        )
        yield GaugeMetricFamily(
            "ordercache_redis_maxmemory_bytes",
            "Redis maxmemory (0: no limit).",
            value=info.maxmemory,
        )
        yield GaugeMetricFamily(
            "ordercache_redis_connected_clients",
            "Clients connected to Redis.",
            value=info.connected_clients,
        )
        yield CounterMetricFamily(
            "ordercache_redis_evicted_keys",
            "Keys evicted by Redis because of maxmemory (server counter).",
            value=info.evicted_keys,
        )
        yield CounterMetricFamily(
            "ordercache_redis_keyspace_hits",
            "Successful key lookups in Redis (server counter).",
            value=info.keyspace_hits,
        )
        yield CounterMetricFamily(
            "ordercache_redis_keyspace_misses",
            "Failed key lookups in Redis (server counter).",
            value=info.keyspace_misses,
        )
        yield from self._capacity_and_durability()
        pool = GaugeMetricFamily(
            "ordercache_redis_pool_connections",
            "Connections of this process's Redis pool: in use, idle, and the maximum.",
            labels=["state"],
        )
        try:
            stats = self.handle.pool_stats()
        except (AttributeError, TypeError) as exc:  # a client shape we cannot read
            log.debug("pool stats unavailable: %s", exc)
            stats = {}
        for state in ("in_use", "idle", "max"):
            pool.add_metric([state], float(stats.get(state, 0)))
        yield pool

    def _capacity_and_durability(self) -> Iterator[Metric]:
        """Client capacity, replication and persistence: the alerts of docs/runbook.md."""
        info = self.monitor.info
        yield GaugeMetricFamily(
            "ordercache_redis_maxclients",
            "Redis maxclients (0: unknown).",
            value=info.maxclients,
        )
        yield CounterMetricFamily(
            "ordercache_redis_rejected_connections",
            "Connections Redis refused because of maxclients (server counter).",
            value=info.rejected_connections,
        )
        yield GaugeMetricFamily(
            "ordercache_redis_connected_replicas",
            "Replicas connected to the Redis primary (connected_slaves).",
            value=info.connected_replicas,
        )
        yield GaugeMetricFamily(
            "ordercache_redis_replication_link_up",
            "0 when a replication link is broken (replica: master_link_status; "
            "primary: a replica not online), else 1.",
            value=1.0 if info.replication_link_up else 0.0,
        )
        yield GaugeMetricFamily(
            "ordercache_redis_replication_lag_seconds",
            "Largest replica lag (primary) or seconds since the last I/O with the primary "
            "(replica).",
            value=info.replication_lag_seconds,
        )
        persistence = GaugeMetricFamily(
            "ordercache_redis_persistence_ok",
            "1 when the last RDB save (kind=rdb) or AOF write (kind=aof) succeeded, else 0.",
            labels=["kind"],
        )
        persistence.add_metric(["rdb"], 1.0 if info.rdb_ok else 0.0)
        persistence.add_metric(["aof"], 1.0 if info.aof_ok else 0.0)
        yield persistence


def install_faust_sensors(app: faust.App, registry: CollectorRegistry) -> FaustMetrics:
    """Faust's Prometheus monitor, recording into ``registry`` (no extra route)."""
    metrics = FaustMetrics.create(registry, FAUST_PREFIX)
    app.monitor = PrometheusMonitor(metrics=metrics)
    return metrics


def register(app: faust.App, registry: CollectorRegistry) -> None:
    """Serve ``GET /metrics``."""

    @app.page("/metrics", name="ordercache_metrics")
    async def metrics(self: web.View, request: web.Request) -> web.Response:
        """Prometheus text exposition of the worker's registry."""
        return self.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
