"""The database engine on SQLite and PostgreSQL: WAL from the start, transactions
that a cancellation never leaves half-way."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from ordercache.db.engine import AsyncSession, create_engine, in_transaction, session_factory


def test_a_sqlite_file_is_in_wal_mode_before_the_first_connection(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    create_engine(f"sqlite+aiosqlite:///{path}")
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_connection_opens_while_another_holds_the_write_lock(tmp_path: Path) -> None:
    # The race that failed the local default's start: its schema creation held the
    # write lock while a health check opened its first connection. Switching the
    # journal mode from that connection failed at once with "database is locked".
    path = tmp_path / "busy.db"
    sqlite3.connect(path).close()  # the file exists, not yet in WAL
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("CREATE TABLE t (x INTEGER)")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await engine.dispose()


async def test_transactions_cancelled_at_random_points_all_complete(
    empty_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker's stop cancels its writers wherever they are. Cancelled inside a
    # plain `session.begin()` block, a rollback or commit is cut short, and SQLAlchemy
    # logs "Exception during reset or similar" with a traceback (in about one in ten
    # of these cancellations on SQLite). in_transaction finishes every transaction it
    # began, so the rows counted as written are exactly those in the table.
    engine = create_engine(empty_db_url)
    sessions = session_factory(engine)
    rng = random.Random(20261202)
    written = 0

    async def insert(session: AsyncSession) -> None:
        nonlocal written
        await session.execute(text("INSERT INTO tx_probe (x) VALUES (1)"))
        written += 1

    async def write_for_ever() -> None:
        while True:
            await in_transaction(sessions, insert)

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE tx_probe (x INTEGER)"))
        caplog.set_level(logging.WARNING, logger="sqlalchemy")
        for _ in range(150):
            task = asyncio.create_task(write_for_ever())
            await asyncio.sleep(rng.uniform(0, 0.01))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT count(*) FROM tx_probe"))).scalar_one()
        assert rows == written
        assert written > 0
        assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []
    finally:
        await engine.dispose()
