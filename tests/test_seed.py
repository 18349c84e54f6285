"""Seed data: the pure generator (fast) and small seeds on real PostgreSQL and SQLite."""

from __future__ import annotations

import random
import statistics
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ordercache.db import repository as repo
from ordercache.db.engine import create_engine, session_factory
from ordercache.models.orm import Customer, Order, OrderItem, Product
from ordercache.sample.seed import SeedReport, SeedSpec, run_seed
from ordercache.sample.seed_data import IdBase, Row, SeedGenerator, item_count
from ordercache.sample.seed_timeline import (
    DAY,
    HOUR,
    ORDER_STATUSES,
    Timeline,
    order_timeline,
    status_at,
    tracking_steps,
)

UNTIL = datetime(2026, 6, 1, tzinfo=UTC)
SMALL = SeedSpec(customers=30, products=40, orders=400, items_per_order=3.0, seed=7, until=UNTIL)


# --------------------------------------------------------------------------- spec
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"orders": -1}, "negative"),
        ({"customers": 0}, "at least one customer"),
        ({"products": 0}, "at least one customer and one product"),
        ({"items_per_order": 0.5}, "items_per_order"),
        ({"items_per_order": 51.0}, "items_per_order"),
        ({"until": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_spec_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SeedSpec(**kwargs)


def test_spec_allows_reference_data_without_orders() -> None:
    assert SeedSpec(customers=0, products=0, orders=0).orders == 0


def test_default_window_ends_at_midnight_utc() -> None:
    end = SeedSpec().window_end()
    assert end.tzinfo is not None
    assert (end.hour, end.minute, end.second, end.microsecond) == (0, 0, 0, 0)
    assert datetime.now(UTC) - end < timedelta(days=1)


# --------------------------------------------------------------------------- timeline
_TL = Timeline(
    created=0.0, paid=60.0, picked=3 * HOUR, shipped=6 * HOUR, delivered=3 * DAY, cancelled=None
)
_CANCELLED = Timeline(
    created=0.0, paid=60.0, picked=None, shipped=None, delivered=None, cancelled=HOUR
)


@pytest.mark.parametrize(
    ("timeline", "now", "expected"),
    [
        (_TL, 0.0, ("created", 0.0)),
        (_TL, 59.0, ("created", 0.0)),
        (_TL, 60.0, ("paid", 60.0)),
        (_TL, 3 * HOUR, ("picked", 3 * HOUR)),
        (_TL, DAY, ("shipped", 6 * HOUR)),
        (_TL, 3 * DAY, ("delivered", 3 * DAY)),
        (_TL, 300 * DAY, ("delivered", 3 * DAY)),
        (_CANCELLED, 30.0, ("created", 0.0)),
        (_CANCELLED, 120.0, ("paid", 60.0)),
        (_CANCELLED, HOUR, ("cancelled", HOUR)),
        (_CANCELLED, 100 * DAY, ("cancelled", HOUR)),
    ],
)
def test_status_at(timeline: Timeline, now: float, expected: tuple[str, float]) -> None:
    assert status_at(timeline, now) == expected


def test_timelines_are_ordered_and_sometimes_cancelled() -> None:
    rng = random.Random(1)
    cancelled = 0
    for _ in range(5000):
        tl = order_timeline(rng, 1000.0)
        steps = [t for t in (tl.paid, tl.picked, tl.shipped, tl.delivered) if t is not None]
        assert steps == sorted(steps)
        assert all(t > tl.created for t in steps)
        if tl.cancelled is not None:
            cancelled += 1
            assert tl.shipped is None
            assert tl.delivered is None
            assert all(t < tl.cancelled for t in steps)
    assert 150 < cancelled < 450  # 6 % of 5000


def test_tracking_steps_run_from_label_to_delivery() -> None:
    rng = random.Random(2)
    for _ in range(500):
        tl = order_timeline(rng, 0.0)
        steps = tracking_steps(rng, tl, "Porto", ("hub",))
        if tl.shipped is None:
            assert steps == []
            continue
        statuses = [s[0] for s in steps]
        assert statuses[:2] == ["label_created", "picked_up"]
        assert statuses[-2:] == ["out_for_delivery", "delivered"]
        assert set(statuses[2:-2]) == {"in_transit"}
        times = [s[1] for s in steps]
        assert times == sorted(times)
        assert (times[0], times[-1]) == (tl.shipped, tl.delivered)
        assert steps[-1][2] == "Porto"


@pytest.mark.parametrize("mean", [1.0, 2.0, 5.0, 12.5])
def test_item_count_mean(mean: float) -> None:
    rng = random.Random(3)
    counts = [item_count(rng, mean, 50) for _ in range(20000)]
    assert min(counts) == 1
    assert max(counts) <= 50
    assert statistics.fmean(counts) == pytest.approx(mean, rel=0.05)


# --------------------------------------------------------------------------- generator
def _generate(spec: SeedSpec, base: IdBase | None = None) -> dict[str, list[Row]]:
    gen = SeedGenerator(spec, base)
    out: dict[str, list[Row]] = {
        "customers": gen.customers(),
        "products": gen.products(),
        "inventory": gen.inventory(),
        "orders": [],
        "order_items": [],
        "shipments": [],
        "tracking_events": [],
    }
    for batch in gen.order_batches(64):
        for name in ("orders", "order_items", "shipments", "tracking_events"):
            out[name] += getattr(batch, name)
    return out


def test_generator_is_deterministic_and_seed_dependent() -> None:
    assert _generate(SMALL) == _generate(SMALL)
    other = SeedSpec(**{**_spec_kwargs(SMALL), "seed": 8})
    assert _generate(other)["orders"] != _generate(SMALL)["orders"]


def _spec_kwargs(spec: SeedSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def test_generated_rows_are_consistent() -> None:
    rows = _generate(SMALL)
    assert [len(rows[t]) for t in ("customers", "products", "inventory", "orders")] == [
        30,
        40,
        40,
        400,
    ]
    orders = {o["id"]: o for o in rows["orders"]}
    # Ids grow with creation time; all within the year before `until`.
    created = [o["created_at"] for o in rows["orders"]]
    assert created == sorted(created)
    assert all(UNTIL - timedelta(days=365) <= c <= UNTIL for c in created)
    # Totals are the sum of the items; every order has at least one item.
    totals: Counter[int] = Counter()
    for item in rows["order_items"]:
        totals[item["order_id"]] += item["quantity"] * item["unit_price_cents"]
    assert {oid: o["total_cents"] for oid, o in orders.items()} == dict(totals)
    # orders_version = 1 + the customer's orders; every other version is 1.
    per_customer = Counter(o["customer_id"] for o in rows["orders"])
    assert {c["id"]: c["orders_version"] for c in rows["customers"]} == {
        c["id"]: 1 + per_customer[c["id"]] for c in rows["customers"]
    }
    for table, table_rows in rows.items():
        assert all(r["version"] == 1 for r in table_rows), table
    # One shipment per shipped or delivered order, and only for those.
    shipped = {oid for oid, o in orders.items() if o["status"] in ("shipped", "delivered")}
    assert sorted(s["order_id"] for s in rows["shipments"]) == sorted(shipped)
    # Tracking events belong to their shipment's order; ids are unique.
    ship_order = {s["id"]: s["order_id"] for s in rows["shipments"]}
    events = rows["tracking_events"]
    assert all(ship_order[e["shipment_id"]] == e["order_id"] for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    # A delivered order's last scan is "delivered", a shipped order's is not.
    last: dict[int, str] = {}
    for e in sorted(events, key=lambda e: (e["order_id"], e["occurred_at"])):
        last[e["order_id"]] = str(e["status"])
    for oid in shipped:
        assert (last[oid] == "delivered") == (orders[oid]["status"] == "delivered")


def test_statuses_cover_the_whole_life_cycle() -> None:
    spec = SeedSpec(customers=50, products=50, orders=4000, items_per_order=1.0, until=UNTIL)
    statuses = Counter(o["status"] for o in _generate(spec)["orders"])
    assert set(statuses) == set(ORDER_STATUSES)
    assert statuses["delivered"] > sum(statuses.values()) / 2  # most orders are old


def test_ids_start_above_the_base() -> None:
    base = IdBase(
        customers=100, products=200, orders=300, order_items=400, shipments=500, tracking_events=600
    )
    rows = _generate(SMALL, base)
    for table, first in [
        ("customers", 101),
        ("products", 201),
        ("orders", 301),
        ("order_items", 401),
        ("shipments", 501),
        ("tracking_events", 601),
    ]:
        assert rows[table][0]["id"] == first, table
    assert min(o["customer_id"] for o in rows["orders"]) > 100
    assert min(i["product_id"] for i in rows["order_items"]) > 200
    assert rows["inventory"][0]["product_id"] == 201


def test_report_summary() -> None:
    report = SeedReport("postgresql", 2000, 500, 500, 100000, 500123, 90000, 500000, 23.46)
    assert report.summary() == (
        "seeded 100,000 orders (500,123 items, 90,000 shipments, 500,000 tracking events), "
        "2,000 customers, 500 products on postgresql in 23.5 s"
    )


# --------------------------------------------------------------------------- on the databases
@pytest.fixture
async def engine(empty_db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(empty_db_url, pool_size=2)
    yield eng
    await eng.dispose()


_CHECKS = {
    # Each query counts violations; all must be 0.
    "order without items": "SELECT count(*) FROM orders o WHERE NOT EXISTS "
    "(SELECT 1 FROM order_items i WHERE i.order_id = o.id)",
    "total != sum(items)": "SELECT count(*) FROM orders o WHERE o.total_cents != "
    "(SELECT sum(i.quantity * i.unit_price_cents) FROM order_items i WHERE i.order_id = o.id)",
    "orders_version": "SELECT count(*) FROM customers c WHERE c.orders_version != 1 + "
    "(SELECT count(*) FROM orders o WHERE o.customer_id = c.id)",
    "shipment of unshipped order": "SELECT count(*) FROM shipments s JOIN orders o "
    "ON o.id = s.order_id WHERE o.status NOT IN ('shipped', 'delivered')",
    "shipped order without one shipment": "SELECT count(*) FROM orders o WHERE o.status IN "
    "('shipped', 'delivered') AND (SELECT count(*) FROM shipments s WHERE s.order_id = o.id) != 1",
    "event of another order's shipment": "SELECT count(*) FROM tracking_events e "
    "JOIN shipments s ON s.id = e.shipment_id WHERE s.order_id != e.order_id",
    "duplicate event id": "SELECT count(*) - count(DISTINCT event_id) FROM tracking_events",
    "product without inventory": "SELECT count(*) FROM products p WHERE NOT EXISTS "
    "(SELECT 1 FROM inventory i WHERE i.product_id = p.id)",
}


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    tables = ["customers", "products", "inventory", "orders", "order_items", "shipments"]
    tables.append("tracking_events")
    async with engine.connect() as conn:
        return {
            t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one() for t in tables
        }


async def test_seed_inserts_what_it_reports(engine: AsyncEngine) -> None:
    report = await run_seed(engine, SMALL)
    assert (report.customers, report.products, report.orders) == (30, 40, 400)
    assert report.seconds > 0
    counts = await _counts(engine)
    assert counts == {
        "customers": 30,
        "products": 40,
        "inventory": 40,
        "orders": 400,
        "order_items": report.order_items,
        "shipments": report.shipments,
        "tracking_events": report.tracking_events,
    }
    assert report.order_items >= 400
    assert report.shipments > 0
    assert report.tracking_events >= 5 * report.shipments
    async with engine.connect() as conn:
        for name, sql in _CHECKS.items():
            assert (await conn.execute(text(sql))).scalar_one() == 0, name


async def test_seed_twice_appends_and_keeps_ids_usable(engine: AsyncEngine) -> None:
    first = await run_seed(engine, SMALL)
    second = await run_seed(engine, SMALL)
    counts = await _counts(engine)
    assert counts["orders"] == first.orders + second.orders
    assert counts["tracking_events"] == first.tracking_events + second.tracking_events
    # The application's own inserts still get fresh ids (PostgreSQL sequences moved on).
    async with session_factory(engine)() as session:
        customer = Customer(email=f"new-{uuid.uuid4().hex}@example.com", name="New")
        product = Product(sku=f"NEW-{uuid.uuid4().hex[:8]}", name="New", price_cents=1)
        session.add_all([customer, product])
        await session.flush()
        order = Order(customer_id=customer.id)
        session.add(order)
        await session.flush()
        session.add(
            OrderItem(order_id=order.id, product_id=product.id, quantity=1, unit_price_cents=1)
        )
        await session.commit()
        assert order.id == 2 * SMALL.orders + 1
        assert customer.id == 2 * SMALL.customers + 1


async def test_seeded_data_through_the_loaders(engine: AsyncEngine) -> None:
    await run_seed(engine, SMALL)
    async with session_factory(engine)() as session:
        delivered = (
            await session.execute(select(Order.id).where(Order.status == "delivered").limit(5))
        ).scalars()
        details = await repo.load_order_details_many(session, list(delivered))
        assert len(details) == 5
        for d in details.values():
            assert d.latest_tracking is not None
            assert d.latest_tracking.status == "delivered"
            assert sum(i.quantity * i.unit_price_cents for i in d.items) == d.total_cents
        busiest = (
            (
                await session.execute(
                    select(Order.customer_id)
                    .group_by(Order.customer_id)
                    .order_by(func.count().desc())
                )
            )
            .scalars()
            .first()
        )
        assert busiest is not None
        history = await repo.load_customer_history(session, busiest, limit=10)
        assert history is not None
        assert history.version == 1 + history.total_orders
        created = [o.created_at for o in history.orders]
        assert created == sorted(created, reverse=True)
        inventory = await repo.load_inventory(session, 1)
        assert inventory is not None
        assert 0 <= inventory.reserved <= inventory.available
