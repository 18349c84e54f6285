"""Alembic environment of ordercache: migrations run on the async engine.

:mod:`ordercache.db.migrate` runs Alembic inside a connection it already holds
(``config.attributes["connection"]``, a sync facade over the async connection, see
``AsyncConnection.run_sync``). Run from Alembic's CLI, this file builds the engine
itself from ``config.attributes["url"]`` or ``ORDERCACHE_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from ordercache.config.settings import load_settings
from ordercache.db.engine import create_engine
from ordercache.models.orm import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("url")
    return str(url) if url else load_settings().database_dsn


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: autogenerate batch operations (a no-op
        # wrapper on PostgreSQL).
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_new_engine(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=_database_url(),
            target_metadata=target_metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Alembic's CLI: log its progress as its ini file says. Never for programmatic
    # use, where the application owns logging.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(_run_on_new_engine(_database_url()))


_main()
