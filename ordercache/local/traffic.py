"""The local default's sample data and traffic.

When the worker runs on the embedded local default (no broker, Redis or database
configured), this service creates the SQLite schema, seeds a small dataset on the
first start, and then drives order lifecycles at ``ORDERCACHE_SIMULATE_RATE`` events
per second. Each transaction writes its events into the transactional outbox, and the
worker's OutboxRelay sends them through the bundled broker, so the pipeline, the
streams and the read API have something to show. Production never runs it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from typing import Any

import mode
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ordercache.agents.kafka_clients import start_until_up
from ordercache.config.settings import Settings
from ordercache.db.engine import create_schema
from ordercache.models.events import RowChange
from ordercache.models.orm import Order
from ordercache.sample.producer import ChangeEventProducer, Topics
from ordercache.sample.seed import SeedSpec, run_seed
from ordercache.sample.simulate import Simulator
from ordercache.tasks import cancel_and_wait

log = logging.getLogger(__name__)


#: Seconds the sample traffic has to finish its transaction in flight when stopped.
STOP_GRACE = 5.0


class GatedProducer(ChangeEventProducer):
    """A producer that can be held still (the local default's topic truncation)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open = asyncio.Event()
        self._open.set()
        self._sending = asyncio.Lock()

    async def emit_transaction(
        self, changes: Iterable[RowChange], *, wait: bool = True
    ) -> list[Any]:
        while True:
            await self._open.wait()
            async with self._sending:
                if self._open.is_set():
                    return await super().emit_transaction(changes, wait=wait)

    async def pause(self) -> bool:
        """No transaction is sent after this returns, and every one sent is delivered."""
        self._open.clear()
        async with self._sending:
            await self.flush()
        return True

    async def resume(self) -> None:
        self._open.set()


class LocalTraffic(mode.Service):
    """Seed once, then simulate; stops with the worker."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self._producer: GatedProducer | None = None
        self._task: asyncio.Future[None] | None = None
        self._sim: Simulator | None = None

    async def on_start(self) -> None:
        await create_schema(self.engine)
        async with self.sessions() as session:
            orders = int(
                (await session.execute(select(func.count()).select_from(Order))).scalar_one()
            )
        wanted = self.settings.local_seed_orders
        if orders == 0 and wanted > 0:
            spec = SeedSpec(
                customers=max(20, wanted // 20),
                products=max(20, min(500, wanted // 10)),
                orders=wanted,
            )
            report = await run_seed(self.engine, spec)
            log.info("local default: %s", report.summary())
        if self.settings.simulate_rate > 0:
            self._task = self.add_future(self._simulate())

    async def _simulate(self) -> None:
        rate = self.settings.simulate_rate
        producer = GatedProducer(self.settings.kafka_bootstrap, Topics.from_settings(self.settings))
        if not await start_until_up(producer.start, self, what="the sample traffic"):
            return
        self._producer = producer
        log.info("local default: sample traffic at %.0f events/s", rate)
        while not self.should_stop:
            # Events go through the transactional outbox; the worker's OutboxRelay sends them.
            sim = Simulator(self.sessions, producer, rate if rate > 0 else math.inf, outbox=True)
            self._sim = sim
            try:
                await sim.run(duration=None)
            except OperationalError as exc:
                # `ordercache seed` holds SQLite's write lock for its whole transaction;
                # sample traffic waits it out and starts afresh from the database.
                log.warning("local default: sample traffic paused: %s", type(exc).__name__)
                await self.sleep(1.0)

    async def pause(self) -> bool:
        """Hold the sample traffic still (see ``Pausable``); False when there is none."""
        if self._producer is None:
            return False
        return await self._producer.pause()

    async def resume(self) -> None:
        if self._producer is not None:
            await self._producer.resume()

    async def on_stop(self) -> None:
        # Stop the traffic before its producer, or it would send into a closed client;
        # between transactions if it can (see Simulator.stop), cancelled if it must.
        if self._sim is not None:
            self._sim.stop()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=STOP_GRACE)
        await cancel_and_wait(self._task)
        if self._producer is not None:
            await self._producer.stop()
