"""The view loaders against real PostgreSQL and SQLite, on a small hand-built dataset."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ordercache.db import repository as repo
from ordercache.db.engine import create_engine, create_schema, session_factory
from ordercache.models.orm import (
    Customer,
    Inventory,
    Order,
    OrderItem,
    Product,
    Shipment,
    TrackingEvent,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNKNOWN = 9_000_000_000_000  # no test inserts ids anywhere near this


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """The same tests on PostgreSQL (session database with the schema) and SQLite."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_schema"))
    return sqlite_url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url, pool_size=2)
    await create_schema(eng)  # no-op on the prepared PostgreSQL database
    yield eng
    await eng.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with session_factory(engine)() as s:
        yield s


@dataclass
class Data:
    customer: int
    lonely_customer: int
    products: list[int]
    unstocked_product: int
    orders: list[int]  # in insertion order; see _build for their times
    bare_order: int
    skus: dict[int, str]


async def _build(session: AsyncSession) -> Data:
    """One customer with five orders, one without; products with and without stock."""
    tag = uuid.uuid4().hex[:10]
    customer = Customer(email=f"c-{tag}@example.com", name="C", orders_version=6)
    lonely = Customer(email=f"l-{tag}@example.com", name="L", orders_version=1)
    products = [
        Product(sku=f"S{i}-{tag}", name=f"P{i}", price_cents=100 * (i + 1)) for i in range(3)
    ]
    unstocked = Product(sku=f"U-{tag}", name="U", price_cents=5)
    session.add_all([customer, lonely, *products, unstocked])
    await session.flush()
    session.add_all(
        Inventory(product_id=p.id, available=10 * (i + 1), reserved=i, version=3 + i, updated_at=T0)
        for i, p in enumerate(products)
    )
    # Created: o0 T0, o1 T0+1d, o2 T0+2d, o3 T0+2d (same instant as o2), o4 T0-1d.
    offsets = [0, 1, 2, 2, -1]
    orders = [
        Order(
            customer_id=customer.id,
            status="paid",
            total_cents=100 + i,
            created_at=T0 + timedelta(days=d),
            updated_at=T0 + timedelta(days=d, hours=1),
            version=1 + i,
        )
        for i, d in enumerate(offsets)
    ]
    session.add_all(orders)
    await session.flush()
    o0 = orders[0]
    session.add_all(
        [
            OrderItem(order_id=o0.id, product_id=products[2].id, quantity=2, unit_price_cents=300),
            OrderItem(order_id=o0.id, product_id=products[0].id, quantity=1, unit_price_cents=100),
            OrderItem(
                order_id=orders[1].id, product_id=products[1].id, quantity=5, unit_price_cents=7
            ),
        ]
    )
    shipment = Shipment(order_id=o0.id, carrier="DHL", tracking_number=f"T{tag}")
    session.add(shipment)
    await session.flush()

    def event(order: Order, status: str, at: datetime, loc: str | None) -> TrackingEvent:
        return TrackingEvent(
            event_id=f"{status}-{order.id}-{uuid.uuid4().hex}",
            order_id=order.id,
            shipment_id=shipment.id if order is o0 else None,
            status=status,
            location=loc,
            carrier="DHL",
            occurred_at=at,
        )

    # o0: the latest scan is inserted before an older one (order by time, not by id).
    session.add(event(o0, "in_transit", T0 + timedelta(hours=5), "Venlo"))
    await session.flush()
    session.add(event(o0, "label_created", T0 + timedelta(hours=1), "Berlin"))
    # o1: two scans at the same instant: the later id wins.
    session.add(event(orders[1], "picked_up", T0 + timedelta(days=1, hours=3), "A"))
    await session.flush()
    session.add(event(orders[1], "out_for_delivery", T0 + timedelta(days=1, hours=3), "B"))
    await session.commit()
    return Data(
        customer=customer.id,
        lonely_customer=lonely.id,
        products=[p.id for p in products],
        unstocked_product=unstocked.id,
        orders=[o.id for o in orders],
        bare_order=orders[2].id,
        skus={p.id: p.sku for p in products},
    )


@pytest.fixture
async def data(session: AsyncSession) -> Data:
    return await _build(session)


# --------------------------------------------------------------------------- order details
async def test_order_details_items_and_latest_tracking(session: AsyncSession, data: Data) -> None:
    details = await repo.load_order_details(session, data.orders[0])
    assert details is not None
    assert details.order_id == data.orders[0]
    assert details.customer_id == data.customer
    assert (details.status, details.total_cents, details.currency) == ("paid", 100, "EUR")
    assert details.version == 1
    assert details.created_at == T0
    assert details.created_at.tzinfo is not None
    assert details.updated_at == T0 + timedelta(hours=1)
    # Items in insertion (id) order, with their product's SKU.
    p0, _, p2 = data.products
    assert [(i.product_id, i.sku, i.quantity, i.unit_price_cents) for i in details.items] == [
        (p2, data.skus[p2], 2, 300),
        (p0, data.skus[p0], 1, 100),
    ]
    assert details.latest_tracking is not None
    assert details.latest_tracking.status == "in_transit"
    assert details.latest_tracking.location == "Venlo"
    assert details.latest_tracking.carrier == "DHL"
    assert details.latest_tracking.occurred_at == T0 + timedelta(hours=5)


async def test_order_details_tracking_tie_goes_to_greater_id(
    session: AsyncSession, data: Data
) -> None:
    details = await repo.load_order_details(session, data.orders[1])
    assert details is not None
    assert details.latest_tracking is not None
    assert details.latest_tracking.status == "out_for_delivery"
    assert [i.quantity for i in details.items] == [5]


async def test_order_without_items_or_tracking(session: AsyncSession, data: Data) -> None:
    details = await repo.load_order_details(session, data.bare_order)
    assert details is not None
    assert details.items == []
    assert details.latest_tracking is None


async def test_unknown_order_is_none(session: AsyncSession, data: Data) -> None:
    assert await repo.load_order_details(session, UNKNOWN) is None


async def test_order_details_many_matches_single_loads(session: AsyncSession, data: Data) -> None:
    # Known ids spread over three IN-list chunks, with duplicates and unknown ids.
    ids = [UNKNOWN + i for i in range(2 * repo.BATCH_CHUNK + 10)]
    for pos, oid in zip(
        (0, repo.BATCH_CHUNK - 1, repo.BATCH_CHUNK, len(ids) - 1), data.orders, strict=False
    ):
        ids[pos] = oid
    ids.append(data.orders[0])
    many = await repo.load_order_details_many(session, ids)
    assert set(many) == set(data.orders[:4])
    for oid, details in many.items():
        assert details == await repo.load_order_details(session, oid)
    assert await repo.load_order_details_many(session, []) == {}


# --------------------------------------------------------------------------- history
async def test_history_newest_first_with_total_and_version(
    session: AsyncSession, data: Data
) -> None:
    history = await repo.load_customer_history(session, data.customer)
    assert history is not None
    assert history.customer_id == data.customer
    assert history.version == 6
    assert history.total_orders == 5
    o = data.orders
    # created_at desc; o2 and o3 were created at the same instant: greater id first.
    assert [s.order_id for s in history.orders] == [o[3], o[2], o[1], o[0], o[4]]
    first = history.orders[0]
    assert (first.status, first.total_cents, first.version) == ("paid", 103, 4)
    assert first.created_at == T0 + timedelta(days=2)


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [
        (1, 0, [3]),
        (1, 1, [2]),
        (2, 0, [3, 2]),
        (2, 2, [1, 0]),
        (2, 4, [4]),
        (10, 5, []),
        (0, 0, []),
    ],
)
async def test_history_paging(
    session: AsyncSession, data: Data, limit: int, offset: int, expected: list[int]
) -> None:
    history = await repo.load_customer_history(session, data.customer, limit=limit, offset=offset)
    assert history is not None
    assert [s.order_id for s in history.orders] == [data.orders[i] for i in expected]
    assert history.total_orders == 5


async def test_history_of_customer_without_orders(session: AsyncSession, data: Data) -> None:
    history = await repo.load_customer_history(session, data.lonely_customer)
    assert history is not None
    assert (history.orders, history.total_orders, history.version) == ([], 0, 1)


async def test_history_of_unknown_customer_is_none(session: AsyncSession, data: Data) -> None:
    assert await repo.load_customer_history(session, UNKNOWN) is None


@pytest.mark.parametrize(("limit", "offset"), [(-1, 0), (10, -1)])
async def test_history_rejects_negative_paging(
    session: AsyncSession, data: Data, limit: int, offset: int
) -> None:
    with pytest.raises(ValueError, match="negative"):
        await repo.load_customer_history(session, data.customer, limit=limit, offset=offset)


# --------------------------------------------------------------------------- inventory
async def test_inventory(session: AsyncSession, data: Data) -> None:
    pid = data.products[1]
    inv = await repo.load_inventory(session, pid)
    assert inv is not None
    assert (inv.product_id, inv.sku, inv.available, inv.reserved, inv.version) == (
        pid,
        data.skus[pid],
        20,
        1,
        4,
    )
    assert inv.updated_at == T0


async def test_inventory_unknown_or_unstocked_is_none(session: AsyncSession, data: Data) -> None:
    assert await repo.load_inventory(session, UNKNOWN) is None
    assert await repo.load_inventory(session, data.unstocked_product) is None


async def test_inventory_many(session: AsyncSession, data: Data) -> None:
    ids = [*data.products, data.unstocked_product, UNKNOWN, data.products[0]]
    many = await repo.load_inventory_many(session, ids)
    assert set(many) == set(data.products)
    assert [many[p].available for p in data.products] == [10, 20, 30]


# --------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 1, 10), datetime(2026, 1, 1, 10, tzinfo=UTC)),
        (datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 10, tzinfo=UTC)),
        (
            datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 1, 1, 12, tzinfo=UTC),
        ),
    ],
)
def test_as_utc(value: datetime, expected: datetime) -> None:
    out = repo.as_utc(value)
    assert out == expected
    assert out.utcoffset() == timedelta(0)
