"""Producer and simulator against real PostgreSQL and the Tansu broker.

The events are read back with a plain consumer on assigned partitions (no group
join: Tansu's rebalance wait is not needed), decoded with decode(), and checked
against the committed rows.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ordercache.agents.decode import decode
from ordercache.agents.plan import plan
from ordercache.cache.ops import Invalidate
from ordercache.cache.views import View
from ordercache.db.engine import create_engine, create_schema
from ordercache.models.events import (
    PRIMARY_KEY,
    ROW_MODELS,
    ChangeEvent,
    Entity,
    Op,
    OrderRow,
    RowChange,
    Tombstone,
)
from ordercache.sample import writes
from ordercache.sample.producer import ChangeEventProducer, Topics
from ordercache.sample.simulate import Simulator
from tests.conftest import unique

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

TABLES = {
    Entity.ORDER: writes.ORDERS,
    Entity.ORDER_ITEM: writes.ORDER_ITEMS,
    Entity.INVENTORY: writes.INVENTORY,
    Entity.SHIPMENT: writes.SHIPMENTS,
    Entity.TRACKING_EVENT: writes.TRACKING_EVENTS,
}


@pytest.fixture
async def engine(fresh_pg_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of its own: the simulator picks up every open order it finds, so the
    open orders other tests leave in the session database would take its events."""
    eng = create_engine(fresh_pg_url, pool_size=2)
    await create_schema(eng)
    yield eng
    await eng.dispose()


async def make_topics(broker: str, partitions: int = 3) -> Topics:
    topics = Topics(unique("orders."), unique("inventory."), unique("tracking."))
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, partitions, 1) for t in (topics.orders, topics.inventory, topics.tracking)]
        )
    finally:
        await admin.close()
    return topics


async def partitions(broker: str, topics: list[str], timeout: float = 30.0) -> dict[str, list[int]]:
    """Each topic's partitions, once the broker's metadata has them all (a topic the
    producer just created may not be listed, or have no partitions yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = {
                d["topic"]: sorted(p["partition"] for p in d["partitions"])
                for d in await admin.describe_topics(topics)
                if d["error_code"] == 0
            }
            if all(found.get(t) for t in topics):
                return {t: found[t] for t in topics}
            assert asyncio.get_running_loop().time() < deadline, f"no metadata: {found}"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def read_all(broker: str, topics: list[str]) -> list[Any]:
    """Every message now in ``topics``, in offset order per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p) for t, parts in (await partitions(broker, topics)).items()
            for p in parts
        ]  # fmt: skip
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                out.extend(records)
        return sorted(out, key=lambda r: (r.topic, r.partition, r.offset))
    finally:
        await consumer.stop()


def decoded(records: list[Any]) -> list[ChangeEvent | Tombstone]:
    return [decode(r.topic, r.key, r.value, r.headers) for r in records]


# --------------------------------------------------------------------------- producer
@pytest.mark.parametrize("form", ["envelope", "outbox"])
async def test_producer_events_decode(kafka_broker: str, form: str) -> None:
    topics = await make_topics(kafka_broker)
    now = datetime.now(UTC)
    order = {
        "id": 501, "customer_id": 9, "status": "created", "total_cents": 990,
        "currency": "EUR", "created_at": now, "updated_at": now, "version": 1,
    }  # fmt: skip
    item = {"id": 601, "order_id": 501, "product_id": 3, "quantity": 2, "unit_price_cents": 495,
            "version": 1}  # fmt: skip
    stock = {"product_id": 3, "available": 8, "reserved": 2, "version": 4, "updated_at": now}
    scan = {
        "id": 701, "event_id": "scan-701", "order_id": 501, "shipment_id": None,
        "status": "in_transit", "location": "Hub", "carrier": "DHL", "occurred_at": now,
        "version": 1,
    }  # fmt: skip
    producer = ChangeEventProducer(kafka_broker, topics, form=form, first_lsn=1000)  # type: ignore[arg-type]
    async with producer:
        await producer.emit_transaction(
            [
                RowChange(Entity.INVENTORY, Op.UPDATE, after=stock),
                RowChange(Entity.ORDER, Op.CREATE, after=order),
                RowChange(Entity.ORDER_ITEM, Op.CREATE, after=item),
                RowChange(Entity.TRACKING_EVENT, Op.CREATE, after=scan),
            ]
        )
        await producer.emit(RowChange(Entity.ORDER, Op.DELETE, before={**order, "version": 2}))
        await producer.emit_tombstone(Entity.ORDER, order)
        await producer.send_raw(topics.orders, b"501", b"not json", [("x", b"\x00\x01")])

    records = await read_all(kafka_broker, [topics.orders, topics.inventory, topics.tracking])
    by_topic = Counter(r.topic for r in records)
    assert by_topic == {topics.orders: 5, topics.inventory: 1, topics.tracking: 1}

    raw = [r for r in records if r.value == b"not json"]
    assert len(raw) == 1
    assert raw[0].headers == (("x", b"\x00\x01"),)

    order_msgs = [r for r in records if r.topic == topics.orders and r.value != b"not json"]
    # the order, its item, its delete and tombstone share the key -> one partition, in order
    assert {r.key for r in order_msgs} == {b"501"}
    assert len({r.partition for r in order_msgs}) == 1
    events = decoded(order_msgs)
    assert [(e.entity, e.op) if isinstance(e, ChangeEvent) else "tombstone" for e in events] == [
        (Entity.ORDER, Op.CREATE),
        (Entity.ORDER_ITEM, Op.CREATE),
        (Entity.ORDER, Op.DELETE),
        "tombstone",
    ]
    created, _, deleted, _ = events
    assert isinstance(created, ChangeEvent)
    assert created.after == OrderRow.model_validate(order)
    assert created.form == form
    assert created.event_id is not None
    if form == "envelope":
        assert created.source.tx_id == 1
        assert created.source.lsn is not None
        assert created.source.lsn > 1000
    assert isinstance(deleted, ChangeEvent)
    assert plan(deleted) == [Invalidate(View.ORDER, 501, 3), Invalidate(View.HISTORY, 9)]

    (stock_msg,) = [r for r in records if r.topic == topics.inventory]
    assert stock_msg.key == b"3"
    (scan_msg,) = [r for r in records if r.topic == topics.tracking]
    assert scan_msg.key == b"501"  # tracking keyed by order id
    scan_ev = decode(scan_msg.topic, scan_msg.key, scan_msg.value, scan_msg.headers)
    assert isinstance(scan_ev, ChangeEvent)
    assert scan_ev.entity is Entity.TRACKING_EVENT


# --------------------------------------------------------------------------- simulator
async def snapshot(engine: AsyncEngine, entity: Entity) -> dict[int, dict[str, Any]]:
    table = TABLES[entity]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table))).mappings().all()
    pk = PRIMARY_KEY[entity]
    return {int(r[pk]): dict(r) for r in rows}


async def customer_versions(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(writes.CUSTOMERS.c.id, writes.CUSTOMERS.c.orders_version))
        return {int(i): int(v) for i, v in rows}


async def test_simulation_events_match_the_database(kafka_broker: str, engine: AsyncEngine) -> None:
    topics = await make_topics(kafka_broker)
    customers_before = await customer_versions(engine)
    async with ChangeEventProducer(kafka_broker, topics) as producer:
        sim = Simulator(engine, producer, math.inf, seed=7, customers=6, products=8)
        stats = await sim.run(events=400)
    assert stats.events >= 400
    assert stats.orders_created > 0
    assert stats.orders_delivered > 0  # the whole lifecycle ran

    records = await read_all(kafka_broker, [topics.orders, topics.inventory, topics.tracking])
    assert len(records) == stats.events
    events = decoded(records)
    assert all(isinstance(e, ChangeEvent) for e in events)  # no deletes, no tombstones

    last: dict[tuple[Entity, int], ChangeEvent] = {}
    versions: dict[tuple[Entity, int], list[int]] = defaultdict(list)
    order_events: Counter[int] = Counter()
    for rec, ev in zip(records, events, strict=True):
        assert isinstance(ev, ChangeEvent)
        assert ev.after is not None
        assert ev.entity_id is not None
        ident = (ev.entity, ev.entity_id)
        versions[ident].append(ev.after.version)
        last[ident] = ev
        view_id = getattr(ev.after, "product_id" if ev.entity is Entity.INVENTORY else "order_id",
                          None) if ev.entity is not Entity.ORDER else ev.entity_id  # fmt: skip
        assert rec.key == str(view_id).encode()
        assert rec.topic == topics.for_entity(ev.entity)
        if ev.entity is Entity.ORDER:
            order_events[ev.entity_id] += 1

    # per row, versions only go up in partition order (every bump emitted once)
    for ident, seen in versions.items():
        assert seen == sorted(set(seen)), ident

    # the latest event of every row is the committed row
    for entity in TABLES:
        rows = await snapshot(engine, entity)
        model = ROW_MODELS[entity]
        for (ent, entity_id), ev in last.items():
            if ent is entity:
                assert entity_id in rows, (entity, entity_id)
                assert ev.after == model.model_validate(rows[entity_id]), (entity, entity_id)

    # every change of an order's details bumped orders.version exactly once
    orders = await snapshot(engine, Entity.ORDER)
    for order_id, count in order_events.items():
        assert orders[order_id]["version"] == versions[(Entity.ORDER, order_id)][-1]
        if versions[(Entity.ORDER, order_id)][0] == 1:  # created in this run
            assert orders[order_id]["version"] == count

    # ... and the customer's history version once per order change
    customers_after = await customer_versions(engine)
    per_customer: Counter[int] = Counter()
    for ev in events:
        assert isinstance(ev, ChangeEvent)
        if isinstance(ev.after, OrderRow):
            per_customer[ev.after.customer_id] += 1
    for customer_id, count in per_customer.items():
        assert customers_after[customer_id] - customers_before.get(customer_id, 1) == count

    # stock never goes negative
    for row in (await snapshot(engine, Entity.INVENTORY)).values():
        assert row["available"] >= 0
        assert row["reserved"] >= 0


async def test_simulation_paces_itself_to_the_rate(kafka_broker: str, engine: AsyncEngine) -> None:
    """A duration-bounded run stops; with a low rate it emits few events."""
    topics = await make_topics(kafka_broker, partitions=1)
    async with ChangeEventProducer(kafka_broker, topics, form="outbox") as producer:
        sim = Simulator(engine, producer, rate=20.0, seed=3, customers=6, products=8)
        await sim.prepare()
        stats = await sim.run(duration=0.5)
    # 20/s for 0.5 s: one transaction may overshoot by a few events, never by hundreds
    assert 0 < stats.events < 40
    records = await read_all(kafka_broker, [topics.orders, topics.inventory, topics.tracking])
    assert len(records) == stats.events
    for ev in decoded(records):
        assert isinstance(ev, ChangeEvent)
        assert ev.form == "outbox"


def test_simulate_command(kafka_broker: str, pg_schema: str, tmp_path: Path) -> None:
    """``ordercache simulate`` end to end, as an operator runs it."""
    topics = Topics(unique("orders."), unique("inventory."), unique("tracking."))
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "ORDERCACHE_KAFKA_BROKER": kafka_broker,
        "ORDERCACHE_DATABASE_URL": pg_schema,
        "ORDERCACHE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "ORDERCACHE_DATA_DIR": str(tmp_path),
        "ORDERCACHE_TOPIC_ORDERS": topics.orders,
        "ORDERCACHE_TOPIC_INVENTORY": topics.inventory,
        "ORDERCACHE_TOPIC_TRACKING": topics.tracking,
    }
    code = "from ordercache.app.main import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "simulate", "--rate", "0", "--events", "30", "--seed", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "events in" in proc.stdout

    records = asyncio.run(
        read_all(kafka_broker, [topics.orders, topics.inventory, topics.tracking])
    )
    assert len(records) >= 30
    assert all(isinstance(e, ChangeEvent) for e in decoded(records))
