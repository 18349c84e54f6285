"""The worker's HTTP side: read API, health, metrics and stats (Faust web views).

:func:`register` is called by :func:`ordercache.app.faust_app.create_app`; it wires
the views to the context and starts the background monitor with the app.

Routes: ``/orders/{id}``, ``/customers/{id}/orders``, ``/products/{id}/inventory``
(:mod:`.read_api`), ``/health/live``, ``/health/ready`` (:mod:`.health`),
``/metrics`` (:mod:`.metrics`), ``/stats`` (:mod:`.stats`).

Optional knobs, read from ``ctx.extras`` when present at registration:
``"stats_thresholds"`` (:class:`~ordercache.web.stats.StatsThresholds`) and
``"web_monitor_config"`` (:class:`~ordercache.web.monitor.MonitorConfig`). Read at
request time: ``"pipeline"`` (the broker check, pipeline figures), ``"dlq_table"``
and ``"stream_stats"`` (``/stats``).
"""

from __future__ import annotations

import faust

from ordercache.app.context import AppContext


def register(app: faust.App, ctx: AppContext) -> None:
    """Add the views, the Redis collector, Faust's sensors and the monitor to ``app``."""
    from ordercache.app.redis_health import RedisMonitor
    from ordercache.web import health, metrics, read_api, stats
    from ordercache.web.loaders import DbLoaders
    from ordercache.web.monitor import MonitorConfig, WebMonitor

    web_metrics = metrics.WebMetrics.create(ctx.registry)
    redis_monitor = RedisMonitor(ctx.redis.client)
    ctx.registry.register(metrics.RedisCollector(ctx.redis, redis_monitor))
    metrics.install_faust_sensors(app, ctx.registry)

    checker = health.HealthChecker(ctx, web_metrics, app=app)
    thresholds = ctx.extras.get("stats_thresholds")
    reporter = stats.StatsReporter(
        ctx.registry,
        redis=ctx.redis,
        monitor=redis_monitor,
        breaker=ctx.cache.breaker,
        extras=ctx.extras,
        thresholds=thresholds if isinstance(thresholds, stats.StatsThresholds) else None,
    )

    read_api.register(app, read_api.ReadApi(ctx.cache, DbLoaders(ctx.sessions)), web_metrics)
    health.register(app, checker)
    metrics.register(app, ctx.registry)
    stats.register(app, reporter)

    config = ctx.extras.get("web_monitor_config")
    monitor = WebMonitor(
        redis_monitor,
        reporter,
        checker,
        config if isinstance(config, MonitorConfig) else None,
        loop=None,
    )
    app.add_dependency(monitor)
    ctx.extras["web"] = {"checker": checker, "stats": reporter, "redis_monitor": redis_monitor}
