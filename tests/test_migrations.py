"""Alembic migrations: a fresh database upgraded to head equals the ORM metadata."""

from __future__ import annotations

import io

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from ordercache.db import migrate
from ordercache.db.engine import create_engine, create_schema
from ordercache.db.migrate import MigrationError
from ordercache.models.orm import Base

ORM_TABLES = set(Base.metadata.tables)


async def _state(url: str) -> tuple[set[str], list[object], str | None]:
    """(tables, differences from the ORM, revision) of the database at ``url``."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            diffs = await conn.run_sync(migrate.schema_diffs) if tables & ORM_TABLES else []
        return tables, diffs, await migrate.current_revision(engine)
    finally:
        await engine.dispose()


def test_one_head_and_packaged_files() -> None:
    assert (migrate.MIGRATIONS_DIR / "alembic.ini").is_file()
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert (migrate.MIGRATIONS_DIR / "script.py.mako").is_file()
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_heads() == [migrate.head_revision()]
    assert [s.revision for s in scripts.walk_revisions()][-1] == "0001"


async def test_upgrade_fresh_database_matches_models(empty_db_url: str) -> None:
    result = await migrate.upgrade(empty_db_url)
    assert (result.before, result.after, result.adopted) == (None, migrate.head_revision(), False)
    tables, diffs, revision = await _state(empty_db_url)
    assert tables == ORM_TABLES | {"alembic_version"}
    assert diffs == []
    assert revision == migrate.head_revision()
    again = await migrate.upgrade(empty_db_url)
    assert again.before == again.after == migrate.head_revision()
    assert "already at revision" in again.summary()


async def test_downgrade_to_base_and_up_again(empty_db_url: str) -> None:
    await migrate.upgrade(empty_db_url)
    down = await migrate.downgrade(empty_db_url, "base")
    assert (down.before, down.after) == (migrate.head_revision(), None)
    tables, _, revision = await _state(empty_db_url)
    assert tables & ORM_TABLES == set()
    assert revision is None
    await migrate.upgrade(empty_db_url)
    _, diffs, revision = await _state(empty_db_url)
    assert (diffs, revision) == ([], migrate.head_revision())


async def test_upgrade_adopts_a_create_all_schema(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url, pool_size=1)
    try:
        await create_schema(engine)
        result = await migrate.upgrade_engine(engine)
        assert result.adopted
        assert result.after == migrate.head_revision()
        assert "stamped" in result.summary()
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_upgrade_refuses_an_unversioned_schema_that_differs(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url, pool_size=1)
    try:
        await create_schema(engine)
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_orders_customer_created"))
        with pytest.raises(MigrationError, match="differ from the models"):
            await migrate.upgrade_engine(engine)
        with pytest.raises(MigrationError, match="only an upgrade to head"):
            await migrate.upgrade_engine(engine, "0001")
        assert await migrate.current_revision(engine) is None
    finally:
        await engine.dispose()


async def test_unknown_revision_is_a_migration_error(empty_db_url: str) -> None:
    with pytest.raises(MigrationError, match="upgrade to nope failed"):
        await migrate.upgrade(empty_db_url, "nope")


def test_offline_sql_for_postgresql() -> None:
    config = migrate.alembic_config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    config.attributes["url"] = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    for table in ORM_TABLES:
        assert f"CREATE TABLE {table} " in sql
    assert "BIGSERIAL" in sql
    assert "CREATE INDEX ix_tracking_events_order_time" in sql
