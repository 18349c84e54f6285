"""Replica identity: migration 0002 sets what the cache needs; the check names shortfalls."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from ordercache.app.context import AppContext
from ordercache.app.faust_app import LifecycleService
from ordercache.db.engine import create_engine, create_schema
from ordercache.db.migrate import upgrade
from ordercache.db.replica_identity import REQUIRED, problems_of, replica_identity_problems
from tests.conftest import REDIS_URL, make_settings

ALL_OK = {t: ("f", frozenset()) for t in REQUIRED}


@pytest.mark.parametrize(
    ("table", "found", "problem"),
    [
        ("orders", ("d", frozenset({"id"})), "orders: REPLICA IDENTITY DEFAULT, needs FULL"),
        ("orders", ("i", frozenset({"id", "customer_id"})), "needs FULL"),
        (
            "order_items",
            ("d", frozenset({"id"})),
            "order_items: REPLICA IDENTITY DEFAULT lacks order_id",
        ),
        ("order_items", ("i", frozenset({"order_id", "id"})), None),
        ("tracking_events", ("f", frozenset()), None),
        ("inventory", ("d", frozenset({"product_id"})), None),
        ("inventory", ("n", frozenset()), "inventory: REPLICA IDENTITY NOTHING"),
        ("outbox", ("d", frozenset({"seq"})), None),
    ],
)
def test_problems_of(table: str, found: tuple[str, frozenset[str]], problem: str | None) -> None:
    got = problems_of({**ALL_OK, table: found})
    if problem is None:
        assert got == []
    else:
        assert len(got) == 1 and got[0].startswith(table) and problem in got[0]


@pytest.mark.postgres
async def test_migrations_set_the_identities_and_the_check_names_a_table_that_differs(
    fresh_pg_url: str,
) -> None:
    await upgrade(fresh_pg_url)
    engine = create_engine(fresh_pg_url)
    try:
        assert await replica_identity_problems(engine) == []
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE orders REPLICA IDENTITY DEFAULT"))
            await conn.execute(text("ALTER TABLE shipments REPLICA IDENTITY DEFAULT"))
        problems = await replica_identity_problems(engine)
        assert [p.split(":")[0] for p in problems] == ["orders", "shipments"]
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_the_worker_names_a_misconfigured_table_at_start_up(
    fresh_pg_url: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    engine = create_engine(fresh_pg_url)
    try:
        await create_schema(engine)
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE tracking_events REPLICA IDENTITY DEFAULT"))
    finally:
        await engine.dispose()
    ctx = AppContext.build(
        make_settings(
            redis_url=REDIS_URL, database_url=fresh_pg_url, data_dir=tmp_path,
            kafka_broker="127.0.0.1:9",
        )
    )  # fmt: skip
    lifecycle = LifecycleService(ctx)
    try:
        with caplog.at_level(logging.WARNING, logger="ordercache.app.faust_app"):
            await lifecycle.on_start()
    finally:
        await ctx.aclose()
    named = [r.getMessage() for r in caplog.records if "replica identity" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith("replica identity: tracking_events"), named


@pytest.mark.postgres
async def test_create_schema_sets_the_same_identities(fresh_pg_url: str) -> None:
    engine = create_engine(fresh_pg_url)
    try:
        await create_schema(engine)
        assert await replica_identity_problems(engine) == []
    finally:
        await engine.dispose()


async def test_other_databases_have_no_identity(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        await create_schema(engine)
        assert await replica_identity_problems(engine) == []
    finally:
        await engine.dispose()
