"""Schema migrations with Alembic, run programmatically (``ordercache migrate``).

The migration scripts live in the package (``ordercache/migrations``) next to their
``alembic.ini``. Alembic runs inside a connection of our async engine
(``AsyncConnection.run_sync``), in one transaction: on PostgreSQL a failed upgrade
leaves the schema as it was.

A database whose tables were made by :func:`ordercache.db.engine.create_schema` (the
local default, tests) has no ``alembic_version``. :func:`upgrade` adopts it: if
its tables match the ORM exactly (Alembic's ``compare_metadata`` finds nothing),
it is stamped at head; otherwise :class:`MigrationError` says so instead of
guessing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ordercache.db.engine import create_engine
from ordercache.errors import OrderCacheError
from ordercache.models.orm import Base

log = logging.getLogger(__name__)

#: The package's migration scripts and their ``alembic.ini``.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

__all__ = [
    "MIGRATIONS_DIR",
    "MigrationError",
    "MigrationResult",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "schema_diffs",
    "upgrade",
    "upgrade_engine",
]


class MigrationError(OrderCacheError):
    """The schema could not be migrated (the message says why; no URL in it)."""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """Where an upgrade started and ended; ``adopted``: stamped, not created."""

    before: str | None
    after: str | None
    adopted: bool = False

    def summary(self) -> str:
        if self.adopted:
            return f"database schema matched the models; stamped at revision {self.after}"
        if self.before == self.after:
            return f"database already at revision {self.after}"
        return f"database upgraded from revision {self.before or '(empty)'} to {self.after}"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the package's scripts, bound to ``connection``."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision among the package's scripts."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("no migration scripts found")
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def schema_diffs(connection: Connection) -> list[Any]:
    """Differences between the live schema and the ORM metadata (empty: identical)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _upgrade_sync(connection: Connection, revision: str) -> MigrationResult:
    before = _current(connection)
    tables = set(inspect(connection).get_table_names())
    if before is None and tables & set(Base.metadata.tables):
        if revision != "head":
            raise MigrationError(
                "unversioned database with ordercache tables: only an upgrade to head can adopt it"
            )
        diffs = schema_diffs(connection)
        if diffs:
            raise MigrationError(
                f"unversioned database whose tables differ from the models ({len(diffs)} "
                f"differences, first: {diffs[0]!r}); migrate it by hand or start empty"
            )
        command.stamp(alembic_config(connection), "head")
        return MigrationResult(before=None, after=_current(connection), adopted=True)
    command.upgrade(alembic_config(connection), revision)
    return MigrationResult(before=before, after=_current(connection))


def _downgrade_sync(connection: Connection, revision: str) -> MigrationResult:
    before = _current(connection)
    command.downgrade(alembic_config(connection), revision)
    return MigrationResult(before=before, after=_current(connection))


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> MigrationResult:
    """Upgrade the database behind ``engine`` to ``revision``, in one transaction."""
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_upgrade_sync, revision)
    except (CommandError, SQLAlchemyError) as exc:
        raise MigrationError(f"upgrade to {revision} failed: {exc}") from exc


async def upgrade(url: str, revision: str = "head") -> MigrationResult:
    """Upgrade the database at ``url`` (an async SQLAlchemy URL) to ``revision``."""
    engine = create_engine(url, pool_size=1)
    try:
        return await upgrade_engine(engine, revision)
    finally:
        await engine.dispose()


async def downgrade(url: str, revision: str) -> MigrationResult:
    """Downgrade the database at ``url`` to ``revision`` (``"base"``: drop everything)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_downgrade_sync, revision)
    except (CommandError, SQLAlchemyError) as exc:
        raise MigrationError(f"downgrade to {revision} failed: {exc}") from exc
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is stamped at (``None``: not under Alembic)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
