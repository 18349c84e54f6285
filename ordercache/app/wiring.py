"""The worker's wiring: each subsystem gets the typed parts it uses, nothing more.

:func:`wire` builds the change pipeline (with the tracking mirror as its batch hook),
the stream gauges, the dead-letter counting table, the web views with their health
checker, stats reporter and monitor, and — on the local default — the sample
traffic, the outbox relay and the truncation of the bundled broker's consumed
topics, and returns them as one typed :class:`Worker`. Tests and benchmarks build
single parts with the same functions (:func:`build_pipeline`, :func:`health_checker`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
import mode

from ordercache.agents.decode import REASONS, DecodeConfig, decode, is_tombstone
from ordercache.agents.dlq import build_dead_letter
from ordercache.agents.metrics import PipelineMetrics
from ordercache.agents.outbox import OutboxRelay, topic_map
from ordercache.agents.pipeline import BatchHook, ChangePipeline, PipelineConfig
from ordercache.agents.plan import plan, unresolved
from ordercache.agents.tracking import StreamGauges, mirror_hook, tracking_record
from ordercache.app.context import AppContext
from ordercache.cache.tracking import TrackingListener
from ordercache.config.version import project_version
from ordercache.db.loaders import DbLoaders
from ordercache.health.readiness import HealthChecker, HealthConfig, node_name
from ordercache.health.redis_info import RedisMonitor
from ordercache.local.traffic import LocalTraffic
from ordercache.local.truncate import local_truncation
from ordercache.read import ViewReader
from ordercache.streams import MirrorConfig, StreamMetrics, StreamMirror
from ordercache.tables import dlq_stats
from ordercache.warming import CacheWarmer, WarmConfig, Warming, WarmMetrics
from ordercache.web import health, metrics, openapi, read_api, stats
from ordercache.web.monitor import WebMonitor


class NearCacheTracking(mode.Service):
    """Runs the near-cache's invalidation listener with the app."""

    def __init__(self, listener: TrackingListener, **kwargs: Any) -> None:
        self.listener = listener
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.listener.start()

    async def on_stop(self) -> None:
        await self.listener.stop()


class WarmingService(mode.Service):
    """Runs cache warming in the background (nothing waits for it, readiness neither)."""

    def __init__(self, warming: Warming, **kwargs: Any) -> None:
        self.warming = warming
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self.warming.start()

    async def on_stop(self) -> None:
        await self.warming.stop()


def build_warmer(ctx: AppContext) -> CacheWarmer:
    """The cache warmer for ``ctx``'s cache and database."""
    return CacheWarmer(
        ctx.cache,
        ctx.sessions,
        WarmConfig.from_settings(ctx.settings),
        WarmMetrics.create(ctx.registry),
    )


@dataclass(frozen=True)
class Worker:
    """The parts of a running worker that other parts (and tests) refer to."""

    pipeline: ChangePipeline
    mirror: StreamMirror
    health: HealthChecker
    stats: stats.StatsReporter
    redis_monitor: RedisMonitor


def build_mirror(ctx: AppContext) -> StreamMirror:
    """The tracking mirror into Redis Streams."""
    return StreamMirror(
        ctx.redis.client,
        ctx.keys,
        MirrorConfig.from_settings(ctx.settings),
        metrics=StreamMetrics.for_registry(ctx.registry),
    )


def build_pipeline(
    ctx: AppContext, bootstrap: list[str], *, hooks: Sequence[BatchHook] = (), **kwargs: Any
) -> ChangePipeline:
    """The change pipeline for ``ctx`` on the broker at ``bootstrap``."""
    s = ctx.settings
    config = PipelineConfig(
        bootstrap=bootstrap,
        topics=(s.topic_orders, s.topic_inventory, s.topic_tracking),
        group_id=f"{s.app_id}-changes",
        dlq_topic=s.topic_dlq,
        partitions=s.kafka_partitions,
        progress_interval=s.progress_interval,
        stall_seconds=s.stall_seconds,
        dlq_max_bytes=s.dlq_max_bytes,
    )
    dconf = DecodeConfig.from_settings(s, max_bytes=s.event_max_bytes)
    pipeline_metrics = PipelineMetrics.create(ctx.registry)
    pipeline_metrics.declare_dead_letters(config.topics, REASONS)
    return ChangePipeline(
        config,
        ctx.cache,
        pipeline_metrics,
        decode=functools.partial(decode, config=dconf),
        plan=plan,
        is_tombstone=is_tombstone,
        dead_letter=build_dead_letter,
        tracking=tracking_record,
        hooks=hooks,
        unresolved=unresolved,
        **kwargs,
    )


def health_checker(
    ctx: AppContext,
    web_metrics: metrics.WebMetrics,
    *,
    pipeline: ChangePipeline | None = None,
    app: faust.App | None = None,
    config: HealthConfig | None = None,
    node: str | None = None,
) -> HealthChecker:
    """The readiness checker over ``ctx``'s Redis and database (and ``pipeline``'s broker)."""
    return HealthChecker(
        redis=ctx.health_redis,
        engine=ctx.health_engine,
        breaker=ctx.cache.breaker,
        health_key=ctx.keys.health(node or node_name()),
        status_gauge=web_metrics.health_status,
        component_gauge=web_metrics.health_component_up,
        pipeline=pipeline,
        app=app,
        config=config,
    )


def view_reader(ctx: AppContext) -> ViewReader:
    """The one way to read the views: the context's cache service over its database."""
    return ViewReader(ctx.cache, DbLoaders(ctx.sessions))


def wire(app: faust.App, ctx: AppContext) -> Worker:
    """Add every subsystem of the worker to ``app``."""
    if ctx.tracking is not None:
        # first: the near-cache serves nothing until its listener is subscribed
        app.add_dependency(NearCacheTracking(ctx.tracking))
    mirror = build_mirror(ctx)
    pipeline = build_pipeline(ctx, ctx.settings.kafka_bootstrap, hooks=[mirror_hook(mirror)])
    app.add_dependency(pipeline)
    app.add_dependency(StreamGauges(ctx.redis.client, mirror.layout, ctx.registry))
    dlq_counts = dlq_stats.declare(app, ctx.settings)

    web_metrics = metrics.WebMetrics.create(ctx.registry)
    redis_monitor = RedisMonitor(ctx.health_redis.client)
    ctx.registry.register(metrics.RedisCollector(ctx.redis, redis_monitor))
    metrics.install_faust_sensors(app, ctx.registry)
    checker = health_checker(ctx, web_metrics, pipeline=pipeline, app=app)
    warmer = build_warmer(ctx) if ctx.settings.warm else None
    reporter = stats.StatsReporter(
        ctx.registry,
        redis=ctx.redis,
        monitor=redis_monitor,
        breaker=ctx.cache.breaker,
        pipeline=pipeline,
        dlq_counts=dlq_counts,
        warming=None if warmer is None else warmer.status,
        thresholds=stats.StatsThresholds(max_consumer_lag=ctx.settings.lag_max_messages),
    )
    read_api.register(app, read_api.ReadApi(view_reader(ctx)), web_metrics)
    health.register(app, checker)
    metrics.register(app, ctx.registry)
    stats.register(app, reporter)
    openapi.register(app, project_version())
    app.add_dependency(WebMonitor(redis_monitor, reporter, checker, loop=None))

    if ctx.local_default:
        # Last, so the pipeline has created the topics the sample traffic goes to.
        traffic = LocalTraffic(ctx.settings, ctx.engine, ctx.sessions)
        app.add_dependency(traffic)
        # No Kafka Connect here: the worker relays the transactional outbox itself
        # (after LocalTraffic, which creates the schema).
        s = ctx.settings
        relay = OutboxRelay(
            ctx.sessions,
            s.kafka_bootstrap,
            topic_map(s.topic_orders, s.topic_inventory, s.topic_tracking),
        )
        app.add_dependency(relay)
        if ctx.local_broker:
            # the relay is what sends the sample traffic: it is held still too
            truncation = local_truncation(ctx.settings, ctx.registry, pipeline, [traffic, relay])
            if truncation is not None:
                app.add_dependency(truncation)
    if warmer is not None:
        # Last: on the local default, LocalTraffic creates the schema it reads.
        app.add_dependency(WarmingService(Warming(warmer)))
    return Worker(pipeline, mirror, checker, reporter, redis_monitor)
