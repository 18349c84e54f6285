"""The Faust application: built by a function from the context, never at import time."""

from __future__ import annotations

import logging
from typing import Any

import faust
import mode
from redis.exceptions import RedisError

from ordercache.app import commands, logs
from ordercache.app.context import AppContext
from ordercache.app.wiring import wire
from ordercache.web.server import WEB_URL

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


def create_app(ctx: AppContext) -> faust.App:
    """A configured Faust app with the ordercache agents, tables, views and commands."""
    settings = ctx.settings
    app = faust.App(
        settings.app_id,
        broker=settings.faust_broker,
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
        # Faust's aiohttp driver, answering malformed requests with a fixed 400
        # (ordercache.web.server, found through the faust.web.drivers entry point).
        web=WEB_URL,
        # Faust's built-in /table pages would serve table contents: not ours to expose.
        web_tables_enabled=False,
        logging_config=logs.faust_logging_config(settings),
    )
    app.add_dependency(LifecycleService(ctx))
    commands.register(app, ctx)
    wire(app, ctx)
    return app
