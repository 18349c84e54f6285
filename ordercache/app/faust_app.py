"""The Faust application: built by a function from the context, never at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import faust
import mode
from aiokafka.client import AIOKafkaClient
from faust.app.base import BootStrategy
from faust.types import ServiceT
from mode.threads import ServiceThread
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ordercache.agents import kafka_clients
from ordercache.agents.kafka_clients import start_or_close, start_until_up
from ordercache.app import commands, logs
from ordercache.app.context import AppContext
from ordercache.app.wiring import wire
from ordercache.db.replica_identity import replica_identity_problems
from ordercache.health.eviction import eviction_risk, read_policies
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
            try:
                risk = eviction_risk(await read_policies(self.ctx.redis.client, timeout=2.0))
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("Redis eviction policy not read: %s", type(exc).__name__)
            else:
                if risk:
                    log.warning("Redis: %s; readiness reports degraded", risk)
        await self._check_replica_identity()

    async def _check_replica_identity(self) -> None:
        """On PostgreSQL, name every captured table whose replica identity falls short
        (readiness keeps reporting it: the component ``replica_identity``)."""
        try:
            async with asyncio.timeout(5.0):
                problems = await replica_identity_problems(self.ctx.engine)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("replica identity not checked at start-up: %s", type(exc).__name__)
            return
        for problem in problems:
            log.warning("replica identity: %s (docs/events.md#replica-identity)", problem)

    async def on_stop(self) -> None:
        await kafka_clients.drain(timeout=5.0)  # Kafka starts abandoned mid-way
        log.info("closing Redis and database connections")
        await self.ctx.aclose()
        log.info("Redis and database connections closed")


class BrokerGate(mode.Service):
    """Holds Faust's own Kafka services back until the broker answers.

    Faust's producer, consumer and table recovery fail the worker at start when
    the broker is down (aiokafka's ``KafkaConnectionError`` from the producer's
    start, exit 1). The gate sits between Faust's web server and its producer in
    the boot order (:class:`BrokerFirstBoot`): the web server — and with it
    ``/health/ready``, which says why it is not ready — runs while the gate
    retries with backoff; once a metadata request succeeds, Faust starts as usual.
    """

    def __init__(self, bootstrap: list[str], *, timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.attempts = 0

    async def probe(self) -> None:
        """Return when the broker answered a metadata request; raise otherwise."""
        self.attempts += 1
        client = AIOKafkaClient(
            bootstrap_servers=self.bootstrap,
            client_id="ordercache-gate",
            # Longer than our wait: the abandoned bootstrap still ends, then is closed.
            request_timeout_ms=int(self.timeout * 2000),
        )
        # Never cancelled half-way (aiokafka then leaks the connection).
        await start_or_close(client.bootstrap(), client.close, timeout=self.timeout)
        await client.close()

    async def on_start(self) -> None:
        await start_until_up(self.probe, self, what="Faust (consumer and producer)")


class BrokerFirstBoot(BootStrategy):
    """Faust's server boot order with the web server first and :class:`BrokerGate`
    before the Kafka services (faust.app.base.BootStrategy.server otherwise)."""

    def __init__(self, app: faust.App, gate: BrokerGate) -> None:
        super().__init__(app)
        self.gate = gate
        self.consumers: list[ServiceT] = []

    def kafka_consumer(self) -> Iterable[ServiceT]:
        self.consumers = list(super().kafka_consumer())
        return self.consumers

    def close_unstarted_consumer_loop(self) -> None:
        """Close the Kafka consumer thread's event loop if that thread never started.

        mode's ``ServiceThread`` makes its thread's event loop when the consumer is
        built, at the start of the boot, and closes it only when the thread ends. A
        worker stopped before the gate let the consumer start left that loop open
        (``ResourceWarning: unclosed event loop`` at exit). Called once the worker
        has stopped; a thread that ran closed its own loop.
        """
        for service in self.consumers:
            # faust's ThreadDelegateConsumer keeps its thread in ``_thread``; mode's
            # ServiceThread sets its own ``_thread`` only when started.
            thread = getattr(service, "_thread", None)
            if isinstance(thread, ServiceThread) and thread._thread is None:
                loop = thread.thread_loop
                if not loop.is_running() and not loop.is_closed():
                    loop.close()

    def server(self) -> Iterable[ServiceT]:
        return self._chain(
            self.sensors(),
            self.web_server(),
            [self.gate],
            self.kafka_producer(),
            self.kafka_consumer(),
            self.agents(),
            self.kafka_conductor(),
            self.tables(),
        )


def create_app(ctx: AppContext) -> faust.App:
    """A configured Faust app with the ordercache agents, tables, views and commands."""
    settings = ctx.settings
    app = faust.App(
        settings.app_id,
        broker=settings.faust_broker,
        store="memory://",
        # The check compares a RocksDB file's offsets with the changelog's end. With the
        # memory store nothing persists: a mismatch only means the broker lost the
        # changelog (a memory broker's restart), and the check crashed the worker there.
        recovery_consistency_check=False,
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
    app.boot_strategy = BrokerFirstBoot(app, BrokerGate(settings.kafka_bootstrap))
    app.add_dependency(LifecycleService(ctx))
    commands.register(app, ctx)
    wire(app, ctx)
    return app
