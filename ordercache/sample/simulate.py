"""Sample traffic: a realistic order lifecycle against the database, with its events.

Each step is one database transaction through :mod:`ordercache.sample.writes`
(versions bumped in SQL); after the commit the simulator emits the committed row
images as change events, as CDC would. Unlike CDC, a crash between the commit and
the send loses those events — production uses Debezium or an outbox for that.

Lifecycle: created (stock reserved) -> paid -> picked -> shipped (shipment row,
stock leaves) -> in_transit scans -> out_for_delivery -> delivered. Orders that
have not shipped may be cancelled (reservations released); products get restocked.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ordercache.db.engine import create_schema, in_transaction, session_factory
from ordercache.models.events import Entity, Op, RowChange
from ordercache.sample import writes
from ordercache.sample.producer import ChangeEventProducer, Topics

log = logging.getLogger(__name__)

CARRIERS = ("DHL", "UPS", "DPD", "GLS", "FedEx")
HUBS = ("Leipzig Hub", "Köln Hub", "Hamburg Hub", "München Hub", "Frankfurt Hub", "Berlin Depot")
OPEN_STATUSES = ("created", "paid", "picked", "shipped", "in_transit", "out_for_delivery")
_MAX_OPEN_ORDERS = 200
_FLUSH_EVERY = 500


@dataclass
class SimulationStats:
    """What a run did."""

    events: int = 0
    transactions: int = 0
    orders_created: int = 0
    orders_cancelled: int = 0
    orders_delivered: int = 0
    restocks: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.events / self.seconds if self.seconds else 0.0
        return (
            f"{self.events} events in {self.transactions} transactions, {self.seconds:.1f} s "
            f"({rate:.0f}/s): {self.orders_created} orders created, "
            f"{self.orders_cancelled} cancelled, {self.orders_delivered} delivered, "
            f"{self.restocks} restocks"
        )


@dataclass
class _Open:
    status: str
    shipment_id: int | None = None
    carrier: str | None = None
    scans_left: int = 0


@dataclass
class _Catalog:
    customers: list[int] = field(default_factory=list)
    products: list[int] = field(default_factory=list)


Write = Callable[[AsyncSession], Awaitable[list[RowChange]]]


class Simulator:
    """Drives order lifecycles at ``rate`` events per second (``math.inf``: flat out)."""

    def __init__(
        self,
        db: async_sessionmaker[AsyncSession] | AsyncEngine,
        producer: ChangeEventProducer,
        rate: float = 20.0,
        *,
        seed: int | None = None,
        customers: int = 50,
        products: int = 50,
        outbox: bool = False,
    ) -> None:
        """``outbox``: write each transaction's events into the outbox table in the same
        transaction (for a relay or Debezium to send) instead of sending them after
        the commit."""
        if not rate > 0:
            raise ValueError("rate must be > 0 events per second (math.inf for no limit)")
        self.sessions = session_factory(db) if isinstance(db, AsyncEngine) else db
        self.outbox = outbox
        self.producer = producer
        self.rate = rate
        self.rng = random.Random(seed)
        self.want_customers = customers
        self.want_products = products
        self.stats = SimulationStats()
        self._catalog = _Catalog()
        self._open: dict[int, _Open] = {}
        self._pending: list[Any] = []
        self._prepared = False
        self._stopping = False

    def stop(self) -> None:
        """End :meth:`run` before its next transaction (the one in flight completes:
        cancelling it half-way would leave a connection to roll back while cancelled)."""
        self._stopping = True

    @property
    def open_orders(self) -> list[int]:
        """Orders this simulator is still moving through their lifecycle."""
        return list(self._open)

    # ------------------------------------------------------------------ setup
    async def prepare(self) -> None:
        """Make sure customers and stocked products exist; pick up open orders."""
        changes = await self._write(self._ensure_catalog)
        await self._emit(changes)
        async with self.sessions() as session:
            self._catalog.customers = list(
                (await session.execute(select(writes.CUSTOMERS.c.id).limit(1000))).scalars()
            )
            self._catalog.products = list(
                (await session.execute(select(writes.INVENTORY.c.product_id).limit(1000))).scalars()
            )
            rows = await session.execute(
                select(writes.ORDERS.c.id, writes.ORDERS.c.status)
                .where(writes.ORDERS.c.status.in_(OPEN_STATUSES))
                .order_by(writes.ORDERS.c.id.desc())
                .limit(_MAX_OPEN_ORDERS)
            )
            for order_id, status in rows:
                self._open[int(order_id)] = _Open(status)
            shipped = [oid for oid, o in self._open.items() if o.status not in OPEN_STATUSES[:3]]
            if shipped:
                ships = await session.execute(
                    select(
                        writes.SHIPMENTS.c.order_id,
                        writes.SHIPMENTS.c.id,
                        writes.SHIPMENTS.c.carrier,
                    ).where(writes.SHIPMENTS.c.order_id.in_(shipped))
                )
                for order_id, shipment_id, carrier in ships:
                    state = self._open[int(order_id)]
                    state.shipment_id, state.carrier = int(shipment_id), str(carrier)
        # An order that shipped but lost its shipment row cannot go on.
        for order_id in [k for k, o in self._open.items() if o.status in OPEN_STATUSES[3:]]:
            if self._open[order_id].shipment_id is None:
                del self._open[order_id]
        self._prepared = True

    async def _ensure_catalog(self, session: AsyncSession) -> list[RowChange]:
        n_customers = (
            await session.execute(select(func.count()).select_from(writes.CUSTOMERS))
        ).scalar_one()
        n_stocked = (
            await session.execute(select(func.count()).select_from(writes.INVENTORY))
        ).scalar_one()
        tag = uuid.uuid4().hex[:8]
        now = datetime.now(UTC)
        if n_customers < self.want_customers:
            await session.execute(
                insert(writes.CUSTOMERS),
                [
                    {
                        "email": f"sim-{tag}-{i}@example.com",
                        "name": f"Sim Customer {tag}-{i}",
                        "created_at": now,
                        "version": 1,
                        "orders_version": 1,
                    }
                    for i in range(self.want_customers - n_customers)
                ],
            )
        changes: list[RowChange] = []
        for i in range(max(0, self.want_products - n_stocked)):
            product = (
                await session.execute(
                    insert(writes.PRODUCTS)
                    .values(
                        sku=f"SIM-{tag}-{i:04d}",
                        name=f"Sim product {tag}-{i}",
                        price_cents=self.rng.randint(199, 19999),
                        version=1,
                    )
                    .returning(writes.PRODUCTS.c.id)
                )
            ).scalar_one()
            stock = (
                (
                    await session.execute(
                        insert(writes.INVENTORY)
                        .values(
                            product_id=product,
                            available=self.rng.randint(200, 1000),
                            reserved=0,
                            version=1,
                            updated_at=now,
                        )
                        .returning(*writes.INVENTORY.c)
                    )
                )
                .mappings()
                .one()
            )
            changes.append(RowChange(Entity.INVENTORY, Op.CREATE, after=dict(stock)))
        return changes

    # ------------------------------------------------------------------ running
    async def run(
        self, duration: float | None = None, events: int | None = None
    ) -> SimulationStats:
        """Run until ``duration`` seconds passed or ``events`` were emitted (or forever)."""
        if not self._prepared:
            await self.prepare()
        start = time.monotonic()
        first = self.stats.events
        try:
            while not self._stopping:
                done = self.stats.events - first
                elapsed = time.monotonic() - start
                if (events is not None and done >= events) or (
                    duration is not None and elapsed >= duration
                ):
                    break
                await self.step()
                if not math.isinf(self.rate):
                    ahead = (self.stats.events - first) / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead if duration is None else min(ahead, duration))
        finally:
            await self._drain()
            self.stats.seconds += time.monotonic() - start
        return self.stats

    async def step(self) -> int:
        """One transaction of the lifecycle; returns the number of events emitted."""
        if not self._prepared:
            await self.prepare()
        roll = self.rng.random()
        if roll < 0.04 or not self._catalog.customers:
            return await self._restock()
        if (roll < 0.35 and len(self._open) < _MAX_OPEN_ORDERS) or not self._open:
            return await self._create()
        order_id = self.rng.choice(list(self._open))
        return await self._advance(order_id, self._open[order_id])

    async def _restock(self, product: int | None = None, qty: int | None = None) -> int:
        if product is None:
            if not self._catalog.products:
                return 0
            product = self.rng.choice(self._catalog.products)
        if qty is None:
            qty = self.rng.randint(20, 200)
        self.stats.restocks += 1
        return await self._tx(lambda s: writes.restock(s, product, qty, _now()))

    async def _create(self) -> int:
        customer = self.rng.choice(self._catalog.customers)
        n = min(len(self._catalog.products), self.rng.randint(1, 4))
        products = self.rng.sample(self._catalog.products, n)
        lines = [(p, self.rng.randint(1, 3)) for p in products]
        changes = await self._write(lambda s: writes.create_order(s, customer, lines, _now()))
        if not changes:  # out of stock everywhere: restock instead
            return sum([await self._restock(product, 500) for product in products])
        order_id = next(c.after["id"] for c in changes if c.entity is Entity.ORDER and c.after)
        self._open[int(order_id)] = _Open("created")
        self.stats.orders_created += 1
        return await self._emit(changes)

    async def _advance(self, order_id: int, state: _Open) -> int:
        rng = self.rng
        if state.status in ("created", "paid") and rng.random() < 0.08:
            del self._open[order_id]
            self.stats.orders_cancelled += 1
            return await self._tx(lambda s: writes.cancel_order(s, order_id, _now()))
        if state.status == "created":
            state.status = "paid"
            return await self._tx(lambda s: writes.set_status(s, order_id, "paid", _now()))
        if state.status == "paid":
            state.status = "picked"
            return await self._tx(lambda s: writes.set_status(s, order_id, "picked", _now()))
        if state.status == "picked":
            carrier = rng.choice(CARRIERS)
            tracking_no = f"{carrier[:2].upper()}{rng.randrange(10**9, 10**10)}"
            shipped: list[int] = []

            async def ship(s: AsyncSession) -> list[RowChange]:
                changes, shipment_id = await writes.ship_order(
                    s, order_id, carrier, tracking_no, _now()
                )
                shipped.append(shipment_id)
                return changes

            changes = await self._write(ship)
            state.status, state.shipment_id, state.carrier = "shipped", shipped[0], carrier
            state.scans_left = rng.randint(1, 3)
            return await self._emit(changes)
        if state.status in ("shipped", "in_transit") and state.scans_left > 0:
            state.status, state.scans_left = "in_transit", state.scans_left - 1
            return await self._scan(order_id, state, "in_transit", rng.choice(HUBS), "in_transit")
        if state.status in ("shipped", "in_transit"):
            state.status = "out_for_delivery"
            return await self._scan(
                order_id, state, "out_for_delivery", "Delivery van", "out_for_delivery"
            )
        # out_for_delivery -> delivered
        del self._open[order_id]
        self.stats.orders_delivered += 1
        ship_id = state.shipment_id

        async def deliver(s: AsyncSession) -> list[RowChange]:
            changes = await writes.add_tracking_event(
                s,
                order_id,
                "delivered",
                _now(),
                shipment_id=ship_id,
                location="Front door",
                carrier=state.carrier,
                order_status="delivered",
            )
            if ship_id is not None:
                changes += await writes.set_shipment_status(s, ship_id, "delivered", _now())
            return changes

        return await self._tx(deliver)

    async def _scan(
        self, order_id: int, state: _Open, status: str, location: str, order_status: str
    ) -> int:
        return await self._tx(
            lambda s: writes.add_tracking_event(
                s,
                order_id,
                status,
                _now(),
                shipment_id=state.shipment_id,
                location=location,
                carrier=state.carrier,
                order_status=order_status,
            )
        )

    # ------------------------------------------------------------------ plumbing
    async def _write(self, fn: Write) -> list[RowChange]:
        """One transaction: the rows, and the outbox records of their changes."""

        async def write(session: AsyncSession) -> list[RowChange]:
            changes = await fn(session)
            await self._record(session, changes)
            return changes

        return await in_transaction(self.sessions, write)

    async def _record(self, session: AsyncSession, changes: list[RowChange]) -> None:
        if self.outbox:
            await writes.record_outbox(session, changes, _now())

    async def _tx(self, fn: Write) -> int:
        return await self._emit(await self._write(fn))

    async def _emit(self, changes: list[RowChange]) -> int:
        """Send a committed transaction's changes (delivery awaited in bulk)."""
        if not changes:
            return 0
        if not self.outbox:  # (with the outbox, the commit was the send)
            self._pending += await self.producer.emit_transaction(changes, wait=False)
        self.stats.transactions += 1
        self.stats.events += len(changes)
        if len(self._pending) >= _FLUSH_EVERY:
            await self._drain()
        return len(changes)

    async def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for fut in pending:
            await fut


def _now() -> datetime:
    return datetime.now(UTC)


async def run_simulation(
    engine: AsyncEngine,
    topics: Topics,
    bootstrap_servers: list[str],
    *,
    rate: float,
    duration: float | None = None,
    events: int | None = None,
    form: Literal["envelope", "outbox"] = "envelope",
    seed: int | None = None,
    on_start: Callable[[Simulator], object] | None = None,
) -> SimulationStats:
    """The ``ordercache simulate`` command: schema, producer, simulator, run.

    ``on_start`` gets the simulator before it runs (progress reporting reads its stats).
    """
    await create_schema(engine)
    producer = ChangeEventProducer(bootstrap_servers, topics, form=form)
    async with producer:
        sim = Simulator(engine, producer, rate if rate > 0 else math.inf, seed=seed)
        if on_start is not None:
            on_start(sim)
        return await sim.run(duration=duration, events=events)
