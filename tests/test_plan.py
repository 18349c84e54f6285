"""plan(): what each change event does to the cache (pure, no services)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ordercache.agents.plan import (
    UNRESOLVED_REASONS,
    deleted_version,
    plan,
    tracking_update,
    unresolved,
)
from ordercache.cache.ops import CacheOp, Invalidate, Refresh
from ordercache.cache.views import View
from ordercache.models.events import (
    ROW_MODELS,
    ChangeEvent,
    Entity,
    Op,
    OrderRow,
    Row,
    SourceInfo,
    Tombstone,
    TrackingUpdate,
)
from ordercache.models.views import ProductInventory

T = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

BASE: dict[Entity, dict[str, Any]] = {
    Entity.ORDER: {
        "id": 11,
        "customer_id": 7,
        "status": "paid",
        "total_cents": 100,
        "currency": "EUR",
        "created_at": T,
        "updated_at": T,
        "version": 3,
    },
    Entity.ORDER_ITEM: {
        "id": 21,
        "order_id": 11,
        "product_id": 5,
        "quantity": 1,
        "unit_price_cents": 100,
        "version": 4,
    },
    Entity.INVENTORY: {
        "product_id": 5,
        "available": 10,
        "reserved": 2,
        "version": 9,
        "updated_at": T,
    },
    Entity.SHIPMENT: {
        "id": 31,
        "order_id": 11,
        "carrier": "UPS",
        "tracking_number": "1Z",
        "status": "label_created",
        "created_at": T,
        "updated_at": T,
        "version": 2,
    },
    Entity.TRACKING_EVENT: {
        "id": 41,
        "event_id": "e-41",
        "order_id": 11,
        "shipment_id": 31,
        "status": "in_transit",
        "location": "Hub",
        "carrier": "UPS",
        "occurred_at": T,
        "version": 1,
    },
    Entity.CUSTOMER: {"id": 7, "version": 12, "orders_version": 10},
}
PK = {Entity.INVENTORY: "product_id"}


def row(entity: Entity, **changes: Any) -> Row:
    return ROW_MODELS[entity].model_validate({**BASE[entity], **changes})


def event(
    entity: Entity,
    op: Op,
    before: Row | None = None,
    after: Row | None = None,
    entity_id: int | None = None,
    identity: dict[str, int] | None = None,
) -> ChangeEvent:
    image = after if after is not None else before
    if entity_id is None and image is not None:
        entity_id = getattr(image, PK.get(entity, "id"))
    if identity is None and op is Op.DELETE and before is None and entity_id is not None:
        identity = {PK.get(entity, "id"): entity_id}
    return ChangeEvent(
        "topic", entity, op, entity_id, before, after, SourceInfo(entity.value, 1, 1, 1),
        identity=identity,
    )  # fmt: skip


VO, VH, VI = View.ORDER, View.HISTORY, View.INVENTORY
CUST = Entity.CUSTOMER
ORD, ITEM, INV, SHIP, TRK = (
    Entity.ORDER,
    Entity.ORDER_ITEM,
    Entity.INVENTORY,
    Entity.SHIPMENT,
    Entity.TRACKING_EVENT,
)
SKU_VIEW = ProductInventory(
    product_id=5, sku="SKU-5", available=10, reserved=2, version=9, updated_at=T
)

CASES: list[tuple[str, ChangeEvent | Tombstone, list[CacheOp]]] = [
    # ---- orders
    ("order created", event(ORD, Op.CREATE, after=row(ORD, version=1)),
     [Invalidate(VO, 11, 1), Invalidate(VH, 7)]),
    ("order snapshot read", event(ORD, Op.READ, after=row(ORD)),
     [Invalidate(VO, 11, 3), Invalidate(VH, 7)]),
    ("order updated, no before (REPLICA IDENTITY DEFAULT)", event(ORD, Op.UPDATE, after=row(ORD)),
     [Invalidate(VO, 11, 3), Invalidate(VH, 7)]),
    ("order updated, same customer", event(ORD, Op.UPDATE, row(ORD, version=2), row(ORD)),
     [Invalidate(VO, 11, 3), Invalidate(VH, 7)]),
    ("order moved to another customer",
     event(ORD, Op.UPDATE, row(ORD, customer_id=6, version=2), row(ORD)),
     [Invalidate(VO, 11, 3), Invalidate(VH, 7), Invalidate(VH, 6)]),
    ("order deleted, full before", event(ORD, Op.DELETE, before=row(ORD)),
     [Invalidate(VO, 11, 4), Invalidate(VH, 7)]),
    ("order deleted, key-only before", event(ORD, Op.DELETE, entity_id=11),
     [Invalidate(VO, 11, None)]),
    ("order deleted, identity with customer (index identity)",
     event(ORD, Op.DELETE, entity_id=11, identity={"id": 11, "customer_id": 7}),
     [Invalidate(VO, 11, None), Invalidate(VH, 7)]),
    ("order moved, identity image names the old customer",
     event(ORD, Op.UPDATE, after=row(ORD), identity={"id": 11, "customer_id": 6}),
     [Invalidate(VO, 11, 3), Invalidate(VH, 7), Invalidate(VH, 6)]),
    ("orders truncated", event(ORD, Op.TRUNCATE), []),
    # ---- order items
    ("item created", event(ITEM, Op.CREATE, after=row(ITEM)), [Invalidate(VO, 11)]),
    ("item updated", event(ITEM, Op.UPDATE, row(ITEM, version=3), row(ITEM)), [Invalidate(VO, 11)]),
    ("item moved to another order",
     event(ITEM, Op.UPDATE, row(ITEM, order_id=12), row(ITEM)),
     [Invalidate(VO, 11), Invalidate(VO, 12)]),
    ("item deleted, full before", event(ITEM, Op.DELETE, before=row(ITEM)), [Invalidate(VO, 11)]),
    ("item deleted, key-only before", event(ITEM, Op.DELETE, entity_id=21), []),
    ("item deleted, identity (order_id, id)",
     event(ITEM, Op.DELETE, entity_id=21, identity={"id": 21, "order_id": 11}),
     [Invalidate(VO, 11)]),
    ("item snapshot read", event(ITEM, Op.READ, after=row(ITEM)), [Invalidate(VO, 11)]),
    # ---- inventory
    ("inventory updated, no sku", event(INV, Op.UPDATE, after=row(INV)), [Invalidate(VI, 5, 9)]),
    ("inventory created, no sku", event(INV, Op.CREATE, after=row(INV, version=1)),
     [Invalidate(VI, 5, 1)]),
    ("inventory read, no sku", event(INV, Op.READ, after=row(INV)), [Invalidate(VI, 5, 9)]),
    ("inventory updated with sku (outbox join)",
     event(INV, Op.UPDATE, after=row(INV, sku="SKU-5")), [Refresh(VI, 5, 9, SKU_VIEW)]),
    ("inventory created with sku", event(INV, Op.CREATE, after=row(INV, sku="SKU-5")),
     [Refresh(VI, 5, 9, SKU_VIEW)]),
    ("inventory deleted, full before", event(INV, Op.DELETE, before=row(INV)),
     [Invalidate(VI, 5, 10)]),
    ("inventory deleted, key-only before", event(INV, Op.DELETE, entity_id=5),
     [Invalidate(VI, 5, None)]),
    ("inventory truncated", event(INV, Op.TRUNCATE), []),
    # ---- tracking events
    ("tracking scan", event(TRK, Op.CREATE, after=row(TRK)), [Invalidate(VO, 11)]),
    ("tracking corrected", event(TRK, Op.UPDATE, after=row(TRK, location="Depot")),
     [Invalidate(VO, 11)]),
    ("tracking deleted", event(TRK, Op.DELETE, before=row(TRK)), [Invalidate(VO, 11)]),
    ("tracking deleted, key-only", event(TRK, Op.DELETE, entity_id=41), []),
    ("tracking moved to another order", event(TRK, Op.UPDATE, row(TRK, order_id=99), row(TRK)),
     [Invalidate(VO, 11), Invalidate(VO, 99)]),
    # ---- shipments: no view shows them
    ("shipment created", event(SHIP, Op.CREATE, after=row(SHIP)), []),
    ("shipment updated", event(SHIP, Op.UPDATE, after=row(SHIP, status="delivered")), []),
    ("shipment deleted", event(SHIP, Op.DELETE, before=row(SHIP)), []),
    # ---- customers: the history's version
    ("customer created", event(CUST, Op.CREATE, after=row(CUST)), [Invalidate(VH, 7, 10)]),
    ("customer's orders changed", event(CUST, Op.UPDATE, after=row(CUST)),
     [Invalidate(VH, 7, 10)]),
    ("customer snapshot read", event(CUST, Op.READ, after=row(CUST)), [Invalidate(VH, 7, 10)]),
    ("customer deleted, full before", event(CUST, Op.DELETE, before=row(CUST)),
     [Invalidate(VH, 7, 11)]),
    ("customer deleted, key-only", event(CUST, Op.DELETE, entity_id=7),
     [Invalidate(VH, 7, None)]),
    # ---- tombstones
    ("tombstone", Tombstone("orders.changes", b"11"), []),
]  # fmt: skip


@pytest.mark.parametrize(("label", "ev", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan(label: str, ev: ChangeEvent | Tombstone, expected: list[CacheOp]) -> None:
    assert plan(ev) == expected


def test_every_entity_and_op_is_covered() -> None:
    seen = {(c[1].entity, c[1].op) for c in CASES if isinstance(c[1], ChangeEvent)}
    for entity in Entity:
        assert (entity, Op.CREATE) in seen
        assert (entity, Op.UPDATE) in seen
        assert (entity, Op.DELETE) in seen


@pytest.mark.parametrize(("before", "guard"), [(1, 2), (41, 42), (None, None)])
def test_deleted_version_rejects_the_last_version(before: int | None, guard: int | None) -> None:
    assert deleted_version(before) == guard


def test_plan_is_pure_and_repeatable() -> None:
    before, after = row(ORD, customer_id=6), row(ORD)
    ev = event(ORD, Op.UPDATE, before, after)
    assert isinstance(after, OrderRow)
    expected = [
        Invalidate(View.ORDER, after.id, after.version),
        Invalidate(View.HISTORY, after.customer_id),
        Invalidate(View.HISTORY, 6),
    ]
    first = plan(ev)
    assert first == expected
    # a second call gives the same answer and the event is left as it was
    assert plan(ev) == expected
    assert ev == event(ORD, Op.UPDATE, row(ORD, customer_id=6), row(ORD))


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        (
            event(TRK, Op.CREATE, after=row(TRK)),
            TrackingUpdate(
                event_id="e-41",
                order_id=11,
                status="in_transit",
                location="Hub",
                carrier="UPS",
                occurred_at=T,
                shipment_id=31,
            ),
        ),
        (
            event(TRK, Op.READ, after=row(TRK, location=None, carrier=None, shipment_id=None)),
            TrackingUpdate(event_id="e-41", order_id=11, status="in_transit", occurred_at=T),
        ),
        (event(TRK, Op.DELETE, before=row(TRK)), None),
        (event(ORD, Op.CREATE, after=row(ORD)), None),
        (Tombstone("tracking.updates", b"11"), None),
    ],
)
def test_tracking_update(ev: ChangeEvent | Tombstone, expected: TrackingUpdate | None) -> None:
    assert tracking_update(ev) == expected


@pytest.mark.parametrize(
    ("ev", "reason"),
    [
        (event(ORD, Op.DELETE, entity_id=11), "history_unknown"),
        (event(ORD, Op.DELETE, entity_id=11, identity={"id": 11, "customer_id": 7}), None),
        (event(ORD, Op.DELETE, before=row(ORD)), None),
        (event(ITEM, Op.DELETE, entity_id=21), "parent_unknown"),
        (event(ITEM, Op.DELETE, entity_id=21, identity={"id": 21, "order_id": 11}), None),
        (event(TRK, Op.DELETE, entity_id=41), "parent_unknown"),
        (event(SHIP, Op.DELETE, entity_id=31), None),
        (event(INV, Op.DELETE, entity_id=5), None),
        (event(INV, Op.TRUNCATE), "truncate"),
        (event(ORD, Op.UPDATE, after=row(ORD)), None),
        (Tombstone("t", b"1"), None),
    ],
)
def test_unresolved_names_what_a_plan_cannot_reach(ev: Any, reason: str | None) -> None:
    assert unresolved(ev) == reason
    assert reason is None or reason in UNRESOLVED_REASONS
