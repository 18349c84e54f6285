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
* ``customers``    -> the customer's history, at ``orders_version`` (the history's
  version; every writer that changes an order bumps it in the same transaction, so
  this event names the history even when an order's delete cannot).
* ``shipments``    -> nothing: no view shows shipment rows; the order status change
  that goes with a shipment has its own ``orders`` event.
* truncate (op ``t``) -> nothing: dropping every entry of a view would need a key
  scan; the version guards plus TTLs bound the damage (see docs/events.md).
* tombstones, heartbeats -> nothing: the delete event before it did the work.

A delete whose before image is only the replica identity (``event.before is None``,
``event.identity`` holds its ids) invalidates everything those ids identify, without
a version. What it cannot name — the customer whose history showed a deleted order,
the order of a deleted child row whose identity lacks ``order_id`` — is reported by
:func:`unresolved`; the pipeline counts and logs it (never a silent stale entry).
"""

from __future__ import annotations

from collections.abc import Callable

from ordercache.cache.ops import CacheOp, Invalidate, Refresh
from ordercache.cache.views import View
from ordercache.models.events import (
    ChangeEvent,
    CustomerRow,
    Entity,
    Heartbeat,
    InventoryRow,
    Op,
    OrderItemRow,
    OrderRow,
    Tombstone,
    TrackingEventRow,
    TrackingUpdate,
)
from ordercache.models.views import ProductInventory


def plan(event: ChangeEvent | Tombstone | Heartbeat) -> list[CacheOp]:
    """The cache operations one event calls for, in the order they must be applied."""
    if not isinstance(event, ChangeEvent) or event.op is Op.TRUNCATE:
        return []
    return _PLANNERS[event.entity](event)


#: Reasons :func:`unresolved` returns.
UNRESOLVED_REASONS = frozenset({"truncate", "history_unknown", "parent_unknown"})


def unresolved(event: object) -> str | None:
    """Why ``plan(event)`` cannot invalidate everything the change affected, or ``None``.

    * ``truncate``: every entry of the table's views is affected; dropping them would
      need a key scan. They expire with their TTL.
    * ``history_unknown``: an order deleted with an identity-only before image (its
      table is not ``REPLICA IDENTITY FULL``) names no customer; that customer's
      history entry stays until its TTL.
    * ``parent_unknown``: an order item or tracking event deleted with an identity
      that lacks ``order_id``; the order is invalidated only if the same transaction
      also changed the order row (the project's writers do; a cascaded delete does,
      through the order's own delete event).
    """
    if not isinstance(event, ChangeEvent):
        return None
    if event.op is Op.TRUNCATE:
        return "truncate"
    if event.op is not Op.DELETE or event.before is not None:
        return None
    ids = event.identity or {}
    if event.entity is Entity.ORDER and "customer_id" not in ids:
        return "history_unknown"
    if event.entity in (Entity.ORDER_ITEM, Entity.TRACKING_EVENT) and "order_id" not in ids:
        return "parent_unknown"
    return None


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
        old_customer = _old(event, "customer_id")
        if old_customer is not None:
            ops.append(Invalidate(View.HISTORY, old_customer))
        return ops
    assert after is not None
    ops = [
        Invalidate(View.ORDER, after.id, after.version),
        Invalidate(View.HISTORY, after.customer_id),
    ]
    old_customer = _old(event, "customer_id")
    if old_customer is not None and old_customer != after.customer_id:
        ops.append(Invalidate(View.HISTORY, old_customer))
    return ops


def _old(event: ChangeEvent, column: str) -> int | None:
    """A reference of the before image: from the row, else from an identity image."""
    if event.before is not None:
        value: int = getattr(event.before, column)
        return value
    return None if event.identity is None else event.identity.get(column)


def _order_children(event: ChangeEvent) -> list[CacheOp]:
    """order_items and tracking_events: both belong to one order's details."""
    after, before = event.after, event.before
    assert after is None or isinstance(after, OrderItemRow | TrackingEventRow)
    assert before is None or isinstance(before, OrderItemRow | TrackingEventRow)
    ops: list[CacheOp] = []
    if after is not None:
        ops.append(Invalidate(View.ORDER, after.order_id))
    old_order = _old(event, "order_id")
    if old_order is not None and (after is None or old_order != after.order_id):
        ops.append(Invalidate(View.ORDER, old_order))
    # A delete whose identity lacks order_id names no order: see unresolved().
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


def _customers(event: ChangeEvent) -> list[CacheOp]:
    after, before = event.after, event.before
    assert after is None or isinstance(after, CustomerRow)
    assert before is None or isinstance(before, CustomerRow)
    if event.op is Op.DELETE:
        assert event.entity_id is not None
        version = deleted_version(before.orders_version if before else None)
        return [Invalidate(View.HISTORY, event.entity_id, version)]
    assert after is not None
    return [Invalidate(View.HISTORY, after.id, after.orders_version)]


def _nothing(event: ChangeEvent) -> list[CacheOp]:
    return []


_PLANNERS: dict[Entity, Callable[[ChangeEvent], list[CacheOp]]] = {
    Entity.ORDER: _orders,
    Entity.ORDER_ITEM: _order_children,
    Entity.INVENTORY: _inventory,
    Entity.TRACKING_EVENT: _order_children,
    Entity.SHIPMENT: _nothing,
    Entity.CUSTOMER: _customers,
}


def tracking_update(event: ChangeEvent | Tombstone | Heartbeat) -> TrackingUpdate | None:
    """The stream-mirror record of a tracking scan, or ``None`` for other events.

    Inserts, snapshot reads and updates all yield the record; the mirror keeps one
    entry per ``event_id``, so a replay or a corrected row is a duplicate there.
    """
    if not isinstance(event, ChangeEvent) or event.entity is not Entity.TRACKING_EVENT:
        return None
    after = event.after
    if not isinstance(after, TrackingEventRow):
        return None
    return TrackingUpdate.from_row(after)
