"""The public producer API (ordercache.publish) against the real broker and pipeline.

A change written to the database and published with :class:`EventPublisher` reaches
the change pipeline and invalidates the cached view; the wire form is the outbox
form the decoder accepts; an order's events share a partition; delivery errors are
raised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import insert

import ordercache
from ordercache.agents.decode import decode
from ordercache.agents.pipeline import ChangePipeline
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.cache.views import ORDER
from ordercache.config.settings import Settings
from ordercache.db import repository as repo
from ordercache.models.events import ChangeEvent, Entity, Op, OrderRow, TrackingEventRow
from ordercache.models.orm import Customer, Inventory, Product
from ordercache.publish import EventPublisher, PublishError, Topics, outbox_message
from ordercache.sample import writes
from tests.conftest import REDIS_URL, make_settings, unique
from tests.test_pipeline import eventually

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_the_api_is_exported_from_the_package() -> None:
    assert ordercache.EventPublisher is EventPublisher
    assert ordercache.OrderRow is OrderRow


def test_outbox_form_decodes_with_the_event_id_and_order_key() -> None:
    image = {
        "id": 9,
        "event_id": "scan-1",
        "order_id": 41,
        "status": "in_transit",
        "occurred_at": "2026-03-01T10:00:00Z",
        "version": 3,
    }
    key, value, headers = outbox_message(Entity.TRACKING_EVENT, image, Op.CREATE, "evt-123")
    assert key == b"41"  # the order id: one order's events share a partition
    event = decode("tracking.updates", key, value, headers)
    assert isinstance(event, ChangeEvent)
    assert (event.entity, event.op, event.entity_id, event.event_id, event.form) == (
        Entity.TRACKING_EVENT,
        Op.CREATE,
        9,
        "evt-123",
        "outbox",
    )


@pytest.fixture(scope="module")
async def env(
    kafka_broker: str, pg_schema: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, AppContext, ChangePipeline]]:
    tag = unique("pub")
    settings = make_settings(
        redis_url=REDIS_URL,
        redis_key_prefix=tag,
        database_url=pg_schema,
        kafka_broker=kafka_broker,
        app_id=f"oc-{tag}",
        topic_orders=f"{tag}.orders",
        topic_inventory=f"{tag}.inventory",
        topic_tracking=f"{tag}.tracking",
        topic_dlq=f"{tag}.dlq",
        kafka_partitions=3,
        data_dir=tmp_path_factory.mktemp("pub"),
    )
    ctx = AppContext.build(settings)
    pipeline = build_pipeline(ctx, [kafka_broker])
    await pipeline.start()
    yield settings, ctx, pipeline
    await pipeline.stop()
    client = aioredis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{tag}:*", count=500):
        await client.unlink(key)
    await client.aclose()
    await ctx.aclose()


async def _new_order(ctx: AppContext) -> int:
    async with ctx.sessions() as s, s.begin():
        cust = Customer(email=f"{unique('c')}@example.com", name="Ada")
        prod = Product(sku=unique("SKU-"), name="Widget", price_cents=250)
        s.add_all([cust, prod])
        await s.flush()
        await s.execute(
            insert(Inventory),
            [
                {
                    "product_id": prod.id,
                    "available": 50,
                    "reserved": 0,
                    "version": 1,
                    "updated_at": NOW,
                }
            ],
        )
        changes = await writes.create_order(s, cust.id, [(prod.id, 2)], NOW)
    return int(next(c.after["id"] for c in changes if c.entity is Entity.ORDER and c.after))


@pytest.mark.kafka
async def test_published_change_invalidates_the_cached_view(env: Any) -> None:
    settings, ctx, _ = env
    order_id = await _new_order(ctx)

    async def load(i: int) -> Any:
        async with ctx.sessions() as s:
            return await repo.load_order_details(s, i)

    assert (await ctx.cache.get_or_load(ORDER, order_id, load)).value.status == "created"
    assert (await ctx.cache.get_or_load(ORDER, order_id, load)).status == "hit"

    async with ctx.sessions() as s, s.begin():
        (paid,) = await writes.set_status(s, order_id, "paid", NOW)
        (scan,) = [
            c
            for c in await writes.add_tracking_event(
                s, order_id, "in_transit", NOW, location="Hub", event_id=unique("e")
            )
            if c.entity is Entity.TRACKING_EVENT
        ]
    assert paid.after is not None and scan.after is not None
    async with EventPublisher.from_settings(settings, linger_ms=20) as pub:
        sent = await pub.publish_many(
            [
                (OrderRow.model_validate(paid.after), Op.UPDATE, "paid-" + unique("i")),
                (TrackingEventRow.model_validate(scan.after), Op.CREATE),
            ]
        )
    # keyed by the order id: both topics put them on the same partition number
    assert sent[0].partition == sent[1].partition
    assert sent[0].event_id.startswith("paid-") and len(sent[1].event_id) == 32

    async def shows_paid() -> bool:
        read = await ctx.cache.get_or_load(ORDER, order_id, load)
        return read.value is not None and read.value.status == "paid"

    await eventually(shows_paid)


@pytest.mark.kafka
async def test_delivery_errors_are_raised(kafka_broker: str) -> None:
    row = OrderRow(
        id=1,
        customer_id=1,
        status="paid",
        total_cents=1,
        currency="EUR",
        created_at=NOW,
        updated_at=NOW,
        version=1,
    )
    bad = Topics(orders="not a valid topic name!")
    async with EventPublisher([kafka_broker], bad, request_timeout_ms=3000) as pub:
        with pytest.raises(PublishError):
            await pub.publish(row)
    unstarted = EventPublisher([kafka_broker])
    with pytest.raises(PublishError, match="not started"):
        await unstarted.publish(row)
