"""Database loaders of the cached views: one query (one round trip) per view.

Every loader reads the view and its ``version`` in one statement, so both come
from one snapshot: a fill can never carry a version newer than its data
(invariant 1). Queries are written once for PostgreSQL (asyncpg) and SQLite
(aiosqlite): no LATERAL, no DISTINCT ON; the latest tracking event is found by a
correlated ``ORDER BY occurred_at DESC, id DESC LIMIT 1`` that walks the
``ix_tracking_events_order_time`` index backwards.

Timestamps come back timezone-aware in UTC on both backends (SQLite stores them
without an offset; the write path stores UTC).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Integer, Row, bindparam, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from ordercache.models.orm import Customer, Inventory, Order, OrderItem, Product, TrackingEvent
from ordercache.models.views import (
    HISTORY_CACHED_ORDERS,
    CustomerOrderHistory,
    OrderDetails,
    OrderItemView,
    OrderSummary,
    ProductInventory,
    TrackingStatusView,
)

#: Ids per ``IN (...)`` list of a batch load: well under SQLite's bound-parameter
#: limit and small enough for PostgreSQL to plan as index lookups.
BATCH_CHUNK = 500

__all__ = [
    "BATCH_CHUNK",
    "load_customer_history",
    "load_inventory",
    "load_inventory_many",
    "load_order_details",
    "load_order_details_many",
]


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite returns naive UTC values)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), BATCH_CHUNK):
        yield unique[start : start + BATCH_CHUNK]


# --------------------------------------------------------------------------- order details
_latest = aliased(TrackingEvent, name="latest")
_probe = aliased(TrackingEvent, name="probe")

#: Id of the order's latest tracking event (correlated to the outer ``orders`` row).
_latest_id = (
    select(_probe.id)
    .where(_probe.order_id == Order.id)
    .order_by(_probe.occurred_at.desc(), _probe.id.desc())
    .limit(1)
    .correlate(Order)
    .scalar_subquery()
)


#: One row per item (or one row for an order without items), the order's and the
#: latest tracking event's columns repeated: five or so narrow rows beat a second
#: round trip. Built once: bound parameters keep SQLAlchemy's compiled-statement
#: cache and the server's prepared-statement cache hot.
_ORDER_DETAILS = (
    select(
        Order.id,
        Order.customer_id,
        Order.status,
        Order.total_cents,
        Order.currency,
        Order.created_at,
        Order.updated_at,
        Order.version,
        OrderItem.product_id,
        Product.sku,
        OrderItem.quantity,
        OrderItem.unit_price_cents,
        _latest.status.label("t_status"),
        _latest.location.label("t_location"),
        _latest.carrier.label("t_carrier"),
        _latest.occurred_at.label("t_occurred_at"),
    )
    .select_from(Order)
    .outerjoin(_latest, _latest.id == _latest_id)
    .outerjoin(OrderItem, OrderItem.order_id == Order.id)
    .outerjoin(Product, Product.id == OrderItem.product_id)
    .where(Order.id.in_(bindparam("ids", expanding=True)))
    .order_by(Order.id, OrderItem.id)
)


def _order_details_from_rows(rows: Sequence[Row[*tuple[Any, ...]]]) -> OrderDetails:
    first = rows[0]
    items = [
        OrderItemView(
            product_id=r.product_id,
            sku=r.sku,
            quantity=r.quantity,
            unit_price_cents=r.unit_price_cents,
        )
        for r in rows
        if r.product_id is not None
    ]
    latest = None
    if first.t_occurred_at is not None:
        latest = TrackingStatusView(
            status=first.t_status,
            location=first.t_location,
            carrier=first.t_carrier,
            occurred_at=as_utc(first.t_occurred_at),
        )
    return OrderDetails(
        order_id=first.id,
        customer_id=first.customer_id,
        status=first.status,
        total_cents=first.total_cents,
        currency=first.currency,
        created_at=as_utc(first.created_at),
        updated_at=as_utc(first.updated_at),
        version=first.version,
        items=items,
        latest_tracking=latest,
    )


async def load_order_details_many(
    session: AsyncSession, order_ids: Iterable[int]
) -> dict[int, OrderDetails]:
    """Order details of every existing order among ``order_ids`` (one query per 500 ids).

    Unknown ids are absent from the result.
    """
    out: dict[int, OrderDetails] = {}
    for chunk in _chunks(order_ids):
        rows = (await session.execute(_ORDER_DETAILS, {"ids": chunk})).all()
        start = 0
        # Rows are sorted by order id: cut them into one run per order.
        for end in range(1, len(rows) + 1):
            if end == len(rows) or rows[end].id != rows[start].id:
                details = _order_details_from_rows(rows[start:end])
                out[details.order_id] = details
                start = end
    return out


async def load_order_details(session: AsyncSession, order_id: int) -> OrderDetails | None:
    """The order with its items (and product SKUs) and its latest tracking status.

    The latest status is the tracking event with the greatest ``occurred_at``, ties
    broken by the greater id. ``None`` if the order does not exist.
    """
    return (await load_order_details_many(session, (order_id,))).get(order_id)


# --------------------------------------------------------------------------- history
# Uncorrelated on purpose: a correlated count in the select list would run once per
# output row.
_history_total = (
    select(func.count().label("total"))
    .select_from(Order)
    .where(Order.customer_id == bindparam("customer_id"))
    .subquery("total")
)
_history_page = (
    select(
        Order.id,
        Order.status,
        Order.total_cents,
        Order.currency,
        Order.created_at,
        Order.version,
    )
    .where(Order.customer_id == bindparam("customer_id"))
    .order_by(Order.created_at.desc(), Order.id.desc())
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
    .subquery("page")
)
#: The customer row joined to its count and its page: version, count and orders in
#: one snapshot; the outer join keeps the customer row when the page is empty.
_HISTORY = (
    select(Customer.orders_version, _history_total.c.total, _history_page)
    .select_from(Customer)
    .join(_history_total, true())
    .outerjoin(_history_page, true())
    .where(Customer.id == bindparam("customer_id"))
    .order_by(_history_page.c.created_at.desc(), _history_page.c.id.desc())
)


async def load_customer_history(
    session: AsyncSession,
    customer_id: int,
    *,
    limit: int = HISTORY_CACHED_ORDERS,
    offset: int = 0,
) -> CustomerOrderHistory | None:
    """A page of the customer's orders, newest first (``created_at`` desc, ``id`` desc).

    ``total_orders`` counts all the customer's orders; ``version`` is the customer's
    ``orders_version``. ``None`` if the customer does not exist; a customer without
    orders (or a page past the end) gives an empty list.
    """
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")
    params = {"customer_id": customer_id, "limit": limit, "offset": offset}
    rows = (await session.execute(_HISTORY, params)).all()
    if not rows:
        return None
    orders = [
        OrderSummary(
            order_id=r.id,
            status=r.status,
            total_cents=r.total_cents,
            currency=r.currency,
            created_at=as_utc(r.created_at),
            version=r.version,
        )
        for r in rows
        if r.id is not None
    ]
    return CustomerOrderHistory(
        customer_id=customer_id,
        version=rows[0].orders_version,
        total_orders=rows[0].total,
        orders=orders,
    )


# --------------------------------------------------------------------------- inventory
_INVENTORY = (
    select(
        Inventory.product_id,
        Product.sku,
        Inventory.available,
        Inventory.reserved,
        Inventory.version,
        Inventory.updated_at,
    )
    .join(Product, Product.id == Inventory.product_id)
    .where(Inventory.product_id.in_(bindparam("ids", expanding=True)))
)


async def load_inventory_many(
    session: AsyncSession, product_ids: Iterable[int]
) -> dict[int, ProductInventory]:
    """Inventory of every product among ``product_ids`` that has an inventory row."""
    out: dict[int, ProductInventory] = {}
    for chunk in _chunks(product_ids):
        for r in await session.execute(_INVENTORY, {"ids": chunk}):
            out[r.product_id] = ProductInventory(
                product_id=r.product_id,
                sku=r.sku,
                available=r.available,
                reserved=r.reserved,
                version=r.version,
                updated_at=as_utc(r.updated_at),
            )
    return out


async def load_inventory(session: AsyncSession, product_id: int) -> ProductInventory | None:
    """Available and reserved stock of one product.

    ``None`` if the product has no inventory row (unknown product, or one never
    stocked): the view's version is the inventory row's, so without a row there
    is nothing to version.
    """
    return (await load_inventory_many(session, (product_id,))).get(product_id)
