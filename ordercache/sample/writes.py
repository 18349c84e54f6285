"""Writes to the system of record that keep the cached views' versions right.

Every helper runs inside the caller's transaction and returns the committed row
images it produced, in statement order, as :class:`RowChange` — what CDC would
emit after the commit. Version rules (see :mod:`ordercache.models.orm`):

* any change of an order's details (the order row, its items, its tracking
  events) bumps ``orders.version``; every such change also changes the customer's
  history (its summaries carry the order's version), so it bumps
  ``customers.orders_version`` (and the customer row's own ``version``);
* any change of a product's stock bumps ``inventory.version``.

Increments happen in SQL (``version = version + 1 ... RETURNING``), never from a
value read earlier, so concurrent writers cannot lose a bump. Rows are locked in
one order — inventory (by product id), orders, customers — to avoid deadlocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ordercache.models.events import Entity, Op, RowChange
from ordercache.models.orm import (
    Customer,
    Inventory,
    Order,
    OrderItem,
    Outbox,
    Product,
    Shipment,
    TrackingEvent,
)

CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
INVENTORY: Table = Inventory.__table__  # type: ignore[assignment]
OUTBOX: Table = Outbox.__table__  # type: ignore[assignment]
ORDERS: Table = Order.__table__  # type: ignore[assignment]
ORDER_ITEMS: Table = OrderItem.__table__  # type: ignore[assignment]
PRODUCTS: Table = Product.__table__  # type: ignore[assignment]
SHIPMENTS: Table = Shipment.__table__  # type: ignore[assignment]
TRACKING_EVENTS: Table = TrackingEvent.__table__  # type: ignore[assignment]


def _updated(entity: Entity, image: Mapping[Any, Any]) -> RowChange:
    return RowChange(entity, Op.UPDATE, after=dict(image))


def _created(entity: Entity, image: Mapping[Any, Any]) -> RowChange:
    return RowChange(entity, Op.CREATE, after=dict(image))


# --------------------------------------------------------------------------- stock
async def _stock(
    session: AsyncSession,
    product_id: int,
    now: datetime,
    *,
    available: int = 0,
    reserved: int = 0,
    need_available: int = 0,
) -> RowChange | None:
    stmt = (
        update(INVENTORY)
        .where(INVENTORY.c.product_id == product_id)
        .values(
            available=INVENTORY.c.available + available,
            reserved=INVENTORY.c.reserved + reserved,
            version=INVENTORY.c.version + 1,
            updated_at=now,
        )
        .returning(*INVENTORY.c)
    )
    if need_available:
        stmt = stmt.where(INVENTORY.c.available >= need_available)
    row = (await session.execute(stmt)).mappings().one_or_none()
    return None if row is None else _updated(Entity.INVENTORY, row)


async def reserve_stock(
    session: AsyncSession, product_id: int, qty: int, now: datetime
) -> RowChange | None:
    """Move ``qty`` from available to reserved; ``None`` if not enough is available."""
    return await _stock(session, product_id, now, available=-qty, reserved=qty, need_available=qty)


async def release_stock(
    session: AsyncSession, product_id: int, qty: int, now: datetime
) -> RowChange | None:
    """Give a cancelled order's reservation back."""
    return await _stock(session, product_id, now, available=qty, reserved=-qty)


async def consume_stock(
    session: AsyncSession, product_id: int, qty: int, now: datetime
) -> RowChange | None:
    """A shipped order's reservation leaves the warehouse."""
    return await _stock(session, product_id, now, reserved=-qty)


async def restock(
    session: AsyncSession, product_id: int, qty: int, now: datetime
) -> list[RowChange]:
    """Add ``qty`` to a product's available stock."""
    change = await _stock(session, product_id, now, available=qty)
    return [] if change is None else [change]


# --------------------------------------------------------------------------- orders
async def touch_order(
    session: AsyncSession, order_id: int, now: datetime, *, status: str | None = None
) -> RowChange:
    """Bump the order's version (optionally set its status) and its customer's history."""
    values: dict[str, Any] = {"version": ORDERS.c.version + 1, "updated_at": now}
    if status is not None:
        values["status"] = status
    stmt = update(ORDERS).where(ORDERS.c.id == order_id).values(**values).returning(*ORDERS.c)
    order = (await session.execute(stmt)).mappings().one()
    await session.execute(
        update(CUSTOMERS)
        .where(CUSTOMERS.c.id == order["customer_id"])
        .values(orders_version=CUSTOMERS.c.orders_version + 1, version=CUSTOMERS.c.version + 1)
    )
    return _updated(Entity.ORDER, order)


async def create_order(
    session: AsyncSession,
    customer_id: int,
    lines: Sequence[tuple[int, int]],
    now: datetime,
    *,
    currency: str = "EUR",
) -> list[RowChange]:
    """Reserve stock and create an order with the lines that could be reserved.

    ``lines`` are ``(product_id, quantity)``. Returns ``[]`` (nothing written) when
    no line could be reserved.
    """
    changes: list[RowChange] = []
    reserved: list[tuple[int, int]] = []
    for product_id, qty in sorted(dict(lines).items()):
        change = await reserve_stock(session, product_id, qty, now)
        if change is not None:
            changes.append(change)
            reserved.append((product_id, qty))
    if not reserved:
        return []
    query = select(PRODUCTS.c.id, PRODUCTS.c.price_cents).where(
        PRODUCTS.c.id.in_([p for p, _ in reserved])
    )
    prices: dict[int, int] = {int(p): int(c) for p, c in await session.execute(query)}
    total = sum(prices[p] * q for p, q in reserved)
    order = (
        (
            await session.execute(
                insert(ORDERS)
                .values(
                    customer_id=customer_id,
                    status="created",
                    total_cents=total,
                    currency=currency,
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
                .returning(*ORDERS.c)
            )
        )
        .mappings()
        .one()
    )
    changes.append(_created(Entity.ORDER, order))
    items = (
        await session.execute(
            insert(ORDER_ITEMS)
            .values(
                [
                    {
                        "order_id": order["id"],
                        "product_id": p,
                        "quantity": q,
                        "unit_price_cents": prices[p],
                        "version": 1,
                    }
                    for p, q in reserved
                ]
            )
            .returning(*ORDER_ITEMS.c)
        )
    ).mappings()
    changes += [_created(Entity.ORDER_ITEM, item) for item in items]
    await session.execute(
        update(CUSTOMERS)
        .where(CUSTOMERS.c.id == customer_id)
        .values(orders_version=CUSTOMERS.c.orders_version + 1, version=CUSTOMERS.c.version + 1)
    )
    return changes


async def _items(session: AsyncSession, order_id: int) -> list[tuple[int, int]]:
    rows = await session.execute(
        select(ORDER_ITEMS.c.product_id, ORDER_ITEMS.c.quantity)
        .where(ORDER_ITEMS.c.order_id == order_id)
        .order_by(ORDER_ITEMS.c.product_id)
    )
    return [(int(p), int(q)) for p, q in rows]


async def set_status(
    session: AsyncSession, order_id: int, status: str, now: datetime
) -> list[RowChange]:
    """Change an order's status (paid, picked, ...)."""
    return [await touch_order(session, order_id, now, status=status)]


async def cancel_order(session: AsyncSession, order_id: int, now: datetime) -> list[RowChange]:
    """Cancel an order that has not shipped: its reservations go back to stock."""
    changes: list[RowChange] = []
    for product_id, qty in await _items(session, order_id):
        change = await release_stock(session, product_id, qty, now)
        if change is not None:
            changes.append(change)
    changes.append(await touch_order(session, order_id, now, status="cancelled"))
    return changes


async def ship_order(
    session: AsyncSession, order_id: int, carrier: str, tracking_number: str, now: datetime
) -> tuple[list[RowChange], int]:
    """Hand an order to a carrier: stock leaves, a shipment row appears.

    Returns the changes and the new shipment's id.
    """
    changes: list[RowChange] = []
    for product_id, qty in await _items(session, order_id):
        change = await consume_stock(session, product_id, qty, now)
        if change is not None:
            changes.append(change)
    changes.append(await touch_order(session, order_id, now, status="shipped"))
    shipment = (
        (
            await session.execute(
                insert(SHIPMENTS)
                .values(
                    order_id=order_id,
                    carrier=carrier,
                    tracking_number=tracking_number,
                    status="label_created",
                    created_at=now,
                    updated_at=now,
                    version=1,
                )
                .returning(*SHIPMENTS.c)
            )
        )
        .mappings()
        .one()
    )
    changes.append(_created(Entity.SHIPMENT, shipment))
    return changes, int(shipment["id"])


async def set_shipment_status(
    session: AsyncSession, shipment_id: int, status: str, now: datetime
) -> list[RowChange]:
    """Change a shipment's status (it shows in no view: only its own version moves)."""
    row = (
        (
            await session.execute(
                update(SHIPMENTS)
                .where(SHIPMENTS.c.id == shipment_id)
                .values(status=status, updated_at=now, version=SHIPMENTS.c.version + 1)
                .returning(*SHIPMENTS.c)
            )
        )
        .mappings()
        .one()
    )
    return [_updated(Entity.SHIPMENT, row)]


async def add_tracking_event(
    session: AsyncSession,
    order_id: int,
    status: str,
    occurred_at: datetime,
    *,
    shipment_id: int | None = None,
    location: str | None = None,
    carrier: str | None = None,
    order_status: str | None = None,
    event_id: str | None = None,
) -> list[RowChange]:
    """Record a carrier scan; the order's details (latest tracking) change with it."""
    row = (
        (
            await session.execute(
                insert(TRACKING_EVENTS)
                .values(
                    event_id=event_id or uuid.uuid4().hex,
                    order_id=order_id,
                    shipment_id=shipment_id,
                    status=status,
                    location=location,
                    carrier=carrier,
                    occurred_at=occurred_at,
                    version=1,
                )
                .returning(*TRACKING_EVENTS.c)
            )
        )
        .mappings()
        .one()
    )
    order = await touch_order(session, order_id, occurred_at, status=order_status)
    return [_created(Entity.TRACKING_EVENT, row), order]


# --------------------------------------------------------------------------- deletes
def _deleted(entity: Entity, image: Mapping[Any, Any]) -> RowChange:
    return RowChange(entity, Op.DELETE, before=dict(image))


async def set_item_quantity(
    session: AsyncSession, item_id: int, quantity: int, now: datetime
) -> list[RowChange]:
    """Correct an order line's quantity (stock is not touched: a back-office fix)."""
    item = (
        (
            await session.execute(
                update(ORDER_ITEMS)
                .where(ORDER_ITEMS.c.id == item_id)
                .values(quantity=quantity, version=ORDER_ITEMS.c.version + 1)
                .returning(*ORDER_ITEMS.c)
            )
        )
        .mappings()
        .one()
    )
    return [_updated(Entity.ORDER_ITEM, item), await touch_order(session, item["order_id"], now)]


async def remove_item(session: AsyncSession, item_id: int, now: datetime) -> list[RowChange]:
    """Delete one order line; the order's details change with it."""
    stmt = delete(ORDER_ITEMS).where(ORDER_ITEMS.c.id == item_id).returning(*ORDER_ITEMS.c)
    item = (await session.execute(stmt)).mappings().one()
    return [_deleted(Entity.ORDER_ITEM, item), await touch_order(session, item["order_id"], now)]


async def delete_shipment(
    session: AsyncSession, shipment_id: int, now: datetime
) -> list[RowChange]:
    """Delete a shipment (its tracking events keep their rows, ``shipment_id`` set null)."""
    stmt = delete(SHIPMENTS).where(SHIPMENTS.c.id == shipment_id).returning(*SHIPMENTS.c)
    row = (await session.execute(stmt)).mappings().one()
    return [_deleted(Entity.SHIPMENT, row), await touch_order(session, row["order_id"], now)]


async def delete_tracking_event(
    session: AsyncSession, tracking_id: int, now: datetime
) -> list[RowChange]:
    """Delete a tracking scan (e.g. recorded against the wrong order)."""
    stmt = (
        delete(TRACKING_EVENTS)
        .where(TRACKING_EVENTS.c.id == tracking_id)
        .returning(*TRACKING_EVENTS.c)
    )
    row = (await session.execute(stmt)).mappings().one()
    return [
        _deleted(Entity.TRACKING_EVENT, row),
        await touch_order(session, row["order_id"], now),
    ]


async def delete_order(session: AsyncSession, order_id: int) -> list[RowChange]:
    """Delete an order; the database cascades to its items, shipments and tracking events.

    Only the order's own row image is returned: the cascaded rows are not known to
    the writer (CDC sees them; the order's delete covers every view they were in).
    """
    stmt = delete(ORDERS).where(ORDERS.c.id == order_id).returning(*ORDERS.c)
    order = (await session.execute(stmt)).mappings().one()
    await session.execute(
        update(CUSTOMERS)
        .where(CUSTOMERS.c.id == order["customer_id"])
        .values(orders_version=CUSTOMERS.c.orders_version + 1, version=CUSTOMERS.c.version + 1)
    )
    return [_deleted(Entity.ORDER, order)]


# --------------------------------------------------------------------------- outbox
#: Outbox aggregate type and id column per entity (the tables whose views an outbox
#: event refreshes; item and shipment changes always come with their order's change).
OUTBOX_AGGREGATES: dict[Entity, tuple[str, str, str]] = {
    Entity.ORDER: ("order", "Order", "id"),
    Entity.INVENTORY: ("inventory", "Inventory", "product_id"),
    Entity.TRACKING_EVENT: ("tracking_event", "TrackingEvent", "order_id"),
}
_OUTBOX_VERB = {Op.CREATE: "Created", Op.UPDATE: "Updated", Op.DELETE: "Deleted"}


def _json_image(image: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in image.items()}


def outbox_rows(changes: Sequence[RowChange], now: datetime) -> list[dict[str, Any]]:
    """The outbox rows (Debezium outbox event router shape) for a transaction's changes.

    One row per changed aggregate image: ``aggregatetype`` ``order`` / ``inventory`` /
    ``tracking_event``, ``aggregateid`` the id the message is keyed by (a tracking
    event is keyed by its order), ``type`` e.g. ``OrderDeleted``, ``payload`` the row
    image (the last one for a delete).
    """
    rows: list[dict[str, Any]] = []
    for change in changes:
        spec = OUTBOX_AGGREGATES.get(change.entity)
        image = change.after if change.after is not None else change.before
        if spec is None or image is None or change.op not in _OUTBOX_VERB:
            continue
        aggregate, name, key = spec
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "aggregatetype": aggregate,
                "aggregateid": int(image[key]),
                "type": f"{name}{_OUTBOX_VERB[change.op]}",
                "payload": _json_image(image),
                "created_at": now,
            }
        )
    return rows


async def record_outbox(session: AsyncSession, changes: Sequence[RowChange], now: datetime) -> int:
    """Insert the outbox rows of ``changes`` in the caller's transaction; returns how many.

    Committed with the change or not at all: a process that dies after the commit has
    still left its events in the outbox, for Debezium or the worker's relay to send.
    """
    rows = outbox_rows(changes, now)
    if rows:
        await session.execute(insert(OUTBOX), rows)
    return len(rows)
