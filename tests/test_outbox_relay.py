"""The transactional outbox and the worker's relay, against real PostgreSQL, broker and Redis."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select

from ordercache.agents.outbox import OutboxRelay, message_of, topic_map
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.cache.views import ORDER
from ordercache.db import repository as repo
from ordercache.db.engine import create_engine, create_schema
from ordercache.models.orm import Outbox
from ordercache.sample import writes
from tests.conftest import REDIS_URL, make_settings, unique
from tests.test_pipeline import eventually, seed_catalog
from tests.workers import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
async def env(
    kafka_broker: str, fresh_pg_url: str, tmp_path: Any
) -> AsyncIterator[tuple[AppContext, Any, str]]:
    """A database of its own: the outbox and the open orders these tests leave must not
    meet other tests (the simulator picks up open orders)."""
    engine = create_engine(fresh_pg_url)
    await create_schema(engine)
    await engine.dispose()
    pg_schema = fresh_pg_url
    tag = unique("ob")
    settings = make_settings(
        redis_url=REDIS_URL, redis_key_prefix=tag, database_url=pg_schema,
        kafka_broker=kafka_broker, app_id=f"oc-{tag}", topic_orders=f"{tag}.orders",
        topic_inventory=f"{tag}.inventory", topic_tracking=f"{tag}.tracking",
        topic_dlq=f"{tag}.dlq", kafka_partitions=2, data_dir=tmp_path,
    )  # fmt: skip
    ctx = AppContext.build(settings)
    pipeline = build_pipeline(ctx, [kafka_broker])
    await pipeline.start()
    yield ctx, pipeline, kafka_broker
    await pipeline.stop()
    client = aioredis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{tag}:*", count=500):
        await client.unlink(key)
    await client.aclose()
    await ctx.aclose()


def relay_for(ctx: AppContext, broker: str) -> OutboxRelay:
    s = ctx.settings
    return OutboxRelay(
        ctx.sessions, [broker], topic_map(s.topic_orders, s.topic_inventory, s.topic_tracking),
        idle_poll=0.05,
    )  # fmt: skip


async def pending(ctx: AppContext, aggregate_id: int) -> int:
    async with ctx.sessions() as s:
        query = select(func.count()).select_from(Outbox).where(Outbox.aggregateid == aggregate_id)
        return int((await s.execute(query)).scalar_one())


async def test_writer_killed_after_commit_still_reaches_the_cache(env: Any) -> None:
    ctx, _pipeline, broker = env
    customer, products = await seed_catalog(ctx)
    async with ctx.sessions() as s, s.begin():
        changes = await writes.create_order(s, customer, [(products[0], 1)], NOW)
    order_id = next(c.after["id"] for c in changes if c.entity.value == "orders" and c.after)

    async def load(i: int) -> Any:
        async with ctx.sessions() as s:
            return await repo.load_order_details(s, i)

    cached = await ctx.cache.get_or_load(ORDER, order_id, load)
    assert cached.value is not None and cached.value.status == "created"

    # The writer commits status "paid" with its outbox row, then dies before any send.
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.outbox_writer", ctx.settings.database_url.get_secret_value(), str(order_id),
         "paid"],
        cwd=str(ROOT), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert await pending(ctx, order_id) == 1  # committed with the change
    assert (await ctx.cache.get(ORDER, order_id)).status == "created"  # stale: nothing sent

    relay = relay_for(ctx, broker)
    await relay.start()
    try:

        async def fresh() -> bool:
            value = await ctx.cache.get_or_load(ORDER, order_id, load)
            return value.value is not None and value.value.status == "paid"

        await eventually(fresh)
        assert await pending(ctx, order_id) == 0  # relayed, then deleted
    finally:
        await relay.stop()


async def test_two_relays_share_the_outbox_without_sending_a_row_twice(env: Any) -> None:
    ctx, _pipeline, broker = env
    customer, products = await seed_catalog(ctx)
    first = await newer_than(ctx, -1)
    for _ in range(30):
        async with ctx.sessions() as s, s.begin():
            changes = await writes.create_order(s, customer, [(products[1], 1)], NOW)
            await writes.record_outbox(s, changes, NOW)
    async with ctx.sessions() as s:
        floor = int((await s.execute(select(func.coalesce(func.min(Outbox.seq), 0)))).scalar_one())
    expected = await newer_than(ctx, floor - 1)
    assert expected == 60 + first  # an OrderCreated and an InventoryUpdated per order
    relays = [relay_for(ctx, broker) for _ in range(2)]
    for r in relays:
        r.batch = 7
        await r.start()
    try:

        async def drained() -> bool:
            return await newer_than(ctx, floor - 1) == 0

        await eventually(drained)
    finally:
        for r in relays:
            await r.stop()
    # Each row is sent once per successful relay commit: no crash here, so exactly once.
    assert sum(r.sent for r in relays) == expected


async def test_a_paused_relay_sends_nothing_until_resumed(env: Any) -> None:
    """The local default's topic truncation holds the relay still (``pause``)."""
    ctx, _pipeline, broker = env
    customer, products = await seed_catalog(ctx)
    relay = relay_for(ctx, broker)
    await relay.start()
    try:
        assert await relay.pause() is True
        async with ctx.sessions() as s, s.begin():
            changes = await writes.create_order(s, customer, [(products[0], 1)], NOW)
            await writes.record_outbox(s, changes, NOW)
        order_id = next(c.after["id"] for c in changes if c.entity.value == "orders" and c.after)
        written = await pending(ctx, order_id)
        assert written >= 1
        # several poll intervals pass: the rows stay where they are
        await asyncio.sleep(0.5)
        assert await pending(ctx, order_id) == written
        assert relay.sent == 0
        await relay.resume()

        async def relayed() -> bool:
            return await pending(ctx, order_id) == 0

        await eventually(relayed)
        assert relay.sent >= 1
    finally:
        await relay.stop()


async def newer_than(ctx: AppContext, seq: int) -> int:
    async with ctx.sessions() as s:
        query = select(func.count()).select_from(Outbox).where(Outbox.seq > seq)
        return int((await s.execute(query)).scalar_one())


def test_message_has_the_outbox_routers_shape() -> None:
    key, value, headers = message_of(
        {"id": "e-1", "aggregatetype": "order", "aggregateid": 42, "type": "OrderPaid",
         "payload": {"id": 42, "status": "paid"}}
    )  # fmt: skip
    assert key == b"42"
    assert value == b'"{\\"id\\":42,\\"status\\":\\"paid\\"}"'
    assert headers == [("id", b"e-1"), ("aggregatetype", b"order"), ("eventType", b"OrderPaid")]
