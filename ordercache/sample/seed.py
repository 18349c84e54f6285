"""Fill the database with realistic sample data (``ordercache seed``, the local default).

Rows come from :class:`~ordercache.sample.seed_data.SeedGenerator` and go in with bulk
inserts (SQLAlchemy Core ``insert`` + executemany, a few thousand rows per call),
all in one transaction: a failed seed leaves nothing behind. Generated ids start
above the greatest existing id of each table, and PostgreSQL's id sequences are
moved past them afterwards, so later inserts by the application do not collide.
Other writers (the local default's sample traffic, ``ordercache simulate``) wait
while a seed runs: the transaction takes the write lock before it reads the greatest
ids (SQLite: a write first; PostgreSQL: ``LOCK TABLE``), so no id is handed out twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordercache.db.engine import create_schema
from ordercache.models.orm import Base
from ordercache.sample.seed_data import IdBase, OrderBatch, Row, SeedGenerator, SeedSpec

log = logging.getLogger(__name__)

#: Rows per executemany call.
INSERT_CHUNK = 5000
#: Orders generated at a time (bounds memory: their items, shipments and events).
ORDER_BATCH = 2000

#: Tables with a generated ``id`` column, in foreign-key order.
_ID_TABLES = ("customers", "products", "orders", "order_items", "shipments", "tracking_events")

__all__ = ["SeedReport", "SeedSpec", "SeedStep", "run_seed"]


@dataclass(frozen=True, slots=True)
class SeedStep:
    """Progress of a seed run: the phase, its rows so far, the orders so far."""

    phase: str
    rows: int
    orders: int
    seconds: float


#: Called after each phase and each batch of orders.
ProgressFn = Callable[[SeedStep], None]


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What a seed run inserted, and how long it took (wall time, seconds)."""

    backend: str
    customers: int
    products: int
    inventory: int
    orders: int
    order_items: int
    shipments: int
    tracking_events: int
    seconds: float

    def summary(self) -> str:
        """One line for the command's output."""
        return (
            f"seeded {self.orders:,} orders ({self.order_items:,} items, "
            f"{self.shipments:,} shipments, {self.tracking_events:,} tracking events), "
            f"{self.customers:,} customers, {self.products:,} products "
            f"on {self.backend} in {self.seconds:.1f} s"
        )


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


async def _id_base(conn: AsyncConnection) -> IdBase:
    """The greatest id of each table (0 when empty), read in one statement."""
    maxima = [
        func.coalesce(select(func.max(_table(name).c.id)).scalar_subquery(), 0)
        for name in _ID_TABLES
    ]
    row = (await conn.execute(select(*maxima))).one()
    return IdBase(*(int(v) for v in row))


async def _insert(conn: AsyncConnection, table: Table, rows: list[Row]) -> int:
    """Insert ``rows`` (dicts with the same keys, in the same order) into ``table``."""
    if not rows:
        return 0
    if conn.dialect.driver == "asyncpg":
        # COPY is about twice as fast as executemany here (the server's index and
        # foreign-key work dominates either way); same connection, same transaction.
        driver: Any = (await conn.get_raw_connection()).driver_connection
        await driver.copy_records_to_table(
            table.name, columns=list(rows[0]), records=[tuple(r.values()) for r in rows]
        )
        return len(rows)
    for start in range(0, len(rows), INSERT_CHUNK):
        await conn.execute(table.insert(), rows[start : start + INSERT_CHUNK])
    return len(rows)


async def _prefetched(batches: Iterator[OrderBatch]) -> AsyncGenerator[OrderBatch, None]:
    """Yield ``batches``, generating the next one in a thread while the caller inserts.

    Generation is CPU-bound Python; off the event loop it overlaps with the
    database's work and keeps a worker that seeds at start-up responsive.
    """
    ahead = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    try:
        while (batch := await ahead) is not None:
            ahead = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            yield batch
    finally:
        ahead.cancel()


async def _sync_sequences(conn: AsyncConnection, tables: Iterable[str]) -> None:
    """Move PostgreSQL id sequences past the ids the seed inserted explicitly."""
    for name in tables:
        table = _table(name)
        sequence = func.pg_get_serial_sequence(name, "id")
        await conn.execute(
            select(func.setval(sequence, select(func.max(table.c.id)).scalar_subquery()))
        )


async def _lock_tables(conn: AsyncConnection) -> None:
    """Hold off other writers until the seed commits (the ids read next stay free)."""
    if conn.dialect.name == "postgresql":
        names = ", ".join(
            conn.dialect.identifier_preparer.quote(n) for n in (*_ID_TABLES, "inventory")
        )
        await conn.execute(text(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE"))
    elif conn.dialect.name == "sqlite":
        # A write statement takes SQLite's write lock, even when it matches no row.
        await conn.execute(text("UPDATE customers SET id = id WHERE 0"))


async def run_seed(
    engine: AsyncEngine, spec: SeedSpec, *, progress: ProgressFn | None = None
) -> SeedReport:
    """Create missing tables and insert the sample data ``spec`` describes."""
    started = time.perf_counter()
    await create_schema(engine)
    counts = dict.fromkeys((*_ID_TABLES, "inventory"), 0)

    def step(phase: str) -> None:
        if progress is not None:
            rows = sum(counts.values())
            progress(SeedStep(phase, rows, counts["orders"], time.perf_counter() - started))

    async with engine.begin() as conn:
        await _lock_tables(conn)
        generator = SeedGenerator(spec, await _id_base(conn))
        counts["customers"] = await _insert(conn, _table("customers"), generator.customers())
        step("customers")
        counts["products"] = await _insert(conn, _table("products"), generator.products())
        step("products")
        counts["inventory"] = await _insert(conn, _table("inventory"), generator.inventory())
        step("inventory")
        async with aclosing(_prefetched(generator.order_batches(ORDER_BATCH))) as batches:
            async for batch in batches:
                for name in ("orders", "order_items", "shipments", "tracking_events"):
                    counts[name] += await _insert(conn, _table(name), getattr(batch, name))
                step("orders")
        if conn.dialect.name == "postgresql":
            await _sync_sequences(conn, (name for name in _ID_TABLES if counts[name]))
    async with engine.begin() as conn:
        # Fresh statistics, or the planner scans whole tables for the loaders' lookups.
        for name in counts:
            await conn.execute(text(f"ANALYZE {conn.dialect.identifier_preparer.quote(name)}"))
    step("analyze")
    report = SeedReport(
        backend=engine.dialect.name,
        customers=counts["customers"],
        products=counts["products"],
        inventory=counts["inventory"],
        orders=counts["orders"],
        order_items=counts["order_items"],
        shipments=counts["shipments"],
        tracking_events=counts["tracking_events"],
        seconds=time.perf_counter() - started,
    )
    log.info("%s", report.summary())
    return report
