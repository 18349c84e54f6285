"""The Faust application: built by a function from settings, never at import time."""

from __future__ import annotations

import logging
from typing import Any

import faust
import mode
from redis.exceptions import RedisError

from ordercache.app.context import AppContext
from ordercache.app.settings import Settings

log = logging.getLogger(__name__)


class LifecycleService(mode.Service):
    """Owns the context's connections for the worker's lifetime.

    Added as the app's first dependency, so it starts before and stops after the
    agents, tables and web views that use Redis and the database.
    """

    def __init__(self, ctx: AppContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctx = ctx

    async def on_start(self) -> None:
        # A Redis outage is not an outage (reads fall back to the database), so an
        # unreachable Redis is reported, not fatal.
        mode_name = self.ctx.redis.mode
        try:
            await self.ctx.redis.client.ping()
        except RedisError as exc:
            log.warning("Redis (%s) not reachable at start-up: %s", mode_name, type(exc).__name__)
        else:
            log.info("Redis (%s) reachable", mode_name)

    async def on_stop(self) -> None:
        log.info("closing Redis and database connections")
        await self.ctx.aclose()
        log.info("Redis and database connections closed")


def create_app(
    settings: Settings,
    ctx: AppContext,
    *,
    broker_url: str | None = None,
) -> faust.App:
    """A configured Faust app with the ordercache agents, tables, views and commands."""
    broker = broker_url or settings.faust_broker
    ctx.extras["kafka_bootstrap"] = broker.removeprefix("kafka://").split(";")
    app = faust.App(
        settings.app_id,
        broker=broker,
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.kafka_partitions,
        topic_allow_declare=True,
        broker_rebalance_timeout=10.0,
        broker_session_timeout=15.0,
        broker_heartbeat_interval=1.0,
        broker_commit_every=1000,
        broker_commit_interval=0.5,
        producer_linger=0.005,
        autodiscover=False,
        web_enabled=True,
        # Faust's built-in /table pages would serve table contents: not ours to expose.
        web_tables_enabled=False,
        logging_config=None,
    )
    app.ctx = ctx  # type: ignore[attr-defined]
    app.add_dependency(LifecycleService(ctx))

    from ordercache.app import commands

    commands.register(app, ctx)
    _register_optional(app, ctx)
    if ctx.extras.get("local_default"):
        from ordercache.agents.outbox import OutboxRelay, topic_map
        from ordercache.app.local_traffic import LocalTraffic

        # No Kafka Connect here: the worker relays the transactional outbox itself.
        s = ctx.settings
        app.add_dependency(
            OutboxRelay(
                ctx.sessions,
                ctx.extras["kafka_bootstrap"],
                topic_map(s.topic_orders, s.topic_inventory, s.topic_tracking),
            )
        )
        # Last, so the pipeline has created the topics the sample traffic goes to.
        app.add_dependency(LocalTraffic(ctx, ctx.extras["kafka_bootstrap"]))
    return app


def _register_optional(app: faust.App, ctx: AppContext) -> None:
    """Plug in the subsystems (each module exposes ``register(app, ctx)``)."""
    import importlib

    for module in (
        "ordercache.agents",
        "ordercache.tables",
        "ordercache.streams",
        "ordercache.web",
    ):
        mod = importlib.import_module(module)
        register = getattr(mod, "register", None)
        if register is not None:
            register(app, ctx)
