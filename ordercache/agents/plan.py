"""Change event -> cache operations: pure functions, no I/O.

What each table's changes do to the cached views (docs/events.md has the table):

* ``orders``       -> the order's details (versioned) and its customer's history
  (old and new customer when the order moved); a delete leaves a guard at
  ``before.version + 1`` so that no fill of the deleted row's last version lands.
* ``order_items``  -> the parent order's details (unversioned: an item's version is
  not the order's; the same transaction bumps ``orders.version`` and its own
  event carries the comparable version).
* ``inventory``    -> the product's inventory: written through (:class:`Refresh`)
  when the image carries the product's ``sku``, else invalidated at the row version.
* ``tracking_events`` -> the order's details (latest tracking status).
* ``shipments``    -> nothing: no view shows shipment rows; the order status change
  that goes with a shipment has its own ``orders`` event.
* truncate (op ``t``) -> nothing: dropping every entry of a view would need a key
  scan; the version guards plus TTLs bound the damage (see docs/events.md).
* tombstones -> nothing: the delete event before it did the work.
"""

from __future__ import annotations

from collections.abc import Callable

from ordercache.cache.ops import CacheOp, Invalidate, Refresh
from ordercache.cache.views import View
from ordercache.models.events import (
    ChangeEvent,
    Entity,
    InventoryRow,
    Op,
    OrderItemRow,
    OrderRow,
    Tombstone,
    TrackingEventRow,
    TrackingUpdate,
)
from ordercache.models.views import ProductInventory


def plan(event: ChangeEvent | Tombstone) -> list[CacheOp]:
    """The cache operations one event calls for, in the order they must be applied."""
    if isinstance(event, Tombstone) or event.op is Op.TRUNCATE:
        return []
    return _PLANNERS[event.entity](event)


def deleted_version(version: int | None) -> int | None:
    """Guard version after a delete of a row last seen at ``version``.

    The deleted row's own last version must be rejected too, so the delete counts
    as one version newer than its before image.
    """
    return None if version is None else version + 1


def _orders(event: ChangeEvent) -> list[CacheOp]:
    after, before = event.after, event.before
    assert after is None or isinstance(after, OrderRow)
    assert before is None or isinstance(before, OrderRow)
    if event.op is Op.DELETE:
        assert event.entity_id is not None
        ops: list[CacheOp] = [
            Invalidate(
                View.ORDER,
                event.entity_id,
                deleted_version(before.version if before else None),
            )
        ]
        if before is not None:
            ops.append(Invalidate(View.HISTORY, before.customer_id))
        return ops
    assert after is not None
    ops = [
        Invalidate(View.ORDER, after.id, after.version),
        Invalidate(View.HISTORY, after.customer_id),
    ]
    if before is not None and before.customer_id != after.customer_id:
        ops.append(Invalidate(View.HISTORY, before.customer_id))
    return ops


def _order_children(event: ChangeEvent) -> list[CacheOp]:
    """order_items and tracking_events: both belong to one order's details."""
    after, before = event.after, event.before
    assert after is None or isinstance(after, OrderItemRow | TrackingEventRow)
    assert before is None or isinstance(before, OrderItemRow | TrackingEventRow)
    ops: list[CacheOp] = []
    if after is not None:
        ops.append(Invalidate(View.ORDER, after.order_id))
    if before is not None and (after is None or before.order_id != after.order_id):
        ops.append(Invalidate(View.ORDER, before.order_id))
    # A delete whose before image holds only the key (REPLICA IDENTITY DEFAULT)
    # names no order: the same transaction's orders event covers it.
    return ops


def _inventory(event: ChangeEvent) -> list[CacheOp]:
    after, before = event.after, event.before
    assert after is None or isinstance(after, InventoryRow)
    assert before is None or isinstance(before, InventoryRow)
    if event.op is Op.DELETE:
        assert event.entity_id is not None
        version = deleted_version(before.version if before else None)
        return [Invalidate(View.INVENTORY, event.entity_id, version)]
    assert after is not None
    if after.sku is None:
        # The row lacks the product's sku, which the view shows: invalidate at the
        # row version rather than write a view the cache would have to complete.
        return [Invalidate(View.INVENTORY, after.product_id, after.version)]
    view = ProductInventory(
        product_id=after.product_id,
        sku=after.sku,
        available=after.available,
        reserved=after.reserved,
        version=after.version,
        updated_at=after.updated_at,
    )
    return [Refresh(View.INVENTORY, after.product_id, after.version, view)]


def _nothing(event: ChangeEvent) -> list[CacheOp]:
    return []


_PLANNERS: dict[Entity, Callable[[ChangeEvent], list[CacheOp]]] = {
    Entity.ORDER: _orders,
    Entity.ORDER_ITEM: _order_children,
    Entity.INVENTORY: _inventory,
    Entity.TRACKING_EVENT: _order_children,
    Entity.SHIPMENT: _nothing,
}


def tracking_update(event: ChangeEvent | Tombstone) -> TrackingUpdate | None:
    """The stream-mirror record of a tracking scan, or ``None`` for other events.

    Inserts, snapshot reads and updates all yield the record; the mirror keeps one
    entry per ``event_id``, so a replay or a corrected row is a duplicate there.
    """
    if isinstance(event, Tombstone) or event.entity is not Entity.TRACKING_EVENT:
        return None
    after = event.after
    if not isinstance(after, TrackingEventRow):
        return None
    return TrackingUpdate.from_row(after)
