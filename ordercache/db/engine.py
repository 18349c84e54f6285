"""Database engine and sessions (SQLAlchemy 2 async).

PostgreSQL through asyncpg for real deployments; SQLite through aiosqlite for the
local default. The URL comes from settings and never reaches a log line.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from ordercache.config.settings import Settings
from ordercache.models.orm import Base
from ordercache.tasks import run_to_completion

T = TypeVar("T")


def create_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """An async engine for ``url`` with settings suited to its dialect."""
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            use_wal(path)
        kwargs["connect_args"] = {"timeout": 30}
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    kwargs["pool_size"] = pool_size
    kwargs["max_overflow"] = pool_size
    return create_async_engine(url, **kwargs)


def use_wal(path: str, *, timeout: float = 30.0) -> None:
    """Put the SQLite file at ``path`` in WAL mode, once, before the pool opens it.

    WAL is a property of the file, not of a connection. Switching it from every new
    connection raced: a connection switching a fresh file while another connection
    of the same worker held a write lock (the schema being created, the seed) failed
    at once with "database is locked" (SQLite's busy timeout does not cover the
    switch), and the worker's start or a health check with it. Blocking, and only at
    engine creation: the switch takes milliseconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(path, timeout=timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
        finally:
            conn.close()
        time.sleep(0.05)  # another process holds a lock on a file not yet in WAL


def engine_from_settings(settings: Settings) -> AsyncEngine:
    return create_engine(settings.database_dsn, pool_size=settings.database_pool_size)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def in_transaction(
    sessions: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """``work`` in one transaction: committed when it returns, rolled back when it
    raises — and never left half-way. A cancellation (a worker stopping) waits for
    the commit or rollback and is raised after it; cancelling the rollback itself
    would leave SQLAlchemy to reset a connection while cancelled ("Exception during
    reset", the connection lost)."""

    async def run() -> T:
        async with sessions() as session, session.begin():
            return await work(session)

    return await run_to_completion(run())


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables (local default and tests). Production uses Alembic."""
    from ordercache.db.replica_identity import IDENTITY_DDL

    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        if engine.dialect.name == "postgresql":
            for statement in IDENTITY_DDL:  # as migration 0002 (CDC needs them)
                await conn.execute(text(statement))
