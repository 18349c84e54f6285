"""The upstream producer API: publish order, inventory and tracking changes to ordercache.

For services that own the data and want the cache kept correct without Debezium::

    from ordercache import EventPublisher, OrderRow

    async with EventPublisher(["kafka:9092"]) as pub:
        await pub.publish(OrderRow(id=42, customer_id=7, status="paid", total_cents=1999,
                                   currency="EUR", created_at=..., updated_at=...,
                                   version=5))

What it guarantees (see docs/events.md, "Publishing from a service"):

* **Typed events** — the row models of :mod:`ordercache.models.events` (pydantic):
  :class:`OrderRow`, :class:`OrderItemRow`, :class:`ShipmentRow`,
  :class:`TrackingEventRow`, :class:`InventoryRow`. ``version`` is the row's version
  *after* the write, bumped in the same transaction (invariant 1: the cache's guard
  compares it).
* **The wire form decode already accepts** — the Debezium outbox event router's:
  key = the aggregate id, header ``id`` = the event id, headers ``aggregatetype`` and
  ``eventType``, value = the payload as a JSON string.
* **One order stays in order** — the key of an order and of its items, shipments and
  tracking events is the order id (the product id for inventory), so they share a
  partition.
* **Idempotency** — every event carries an id (``event_id=``, default a fresh UUID);
  resending an event with its id is harmless (versions make cache operations
  idempotent; the tracking mirror keeps each event id once).
* **Batching** — aiokafka's ``linger_ms`` / ``max_batch_size``; :meth:`publish_many`
  sends a whole transaction's events before waiting for any.
* **Delivery errors raised** — every call awaits the broker's acknowledgement
  (``acks=all``) and raises :class:`PublishError` when it does not come.
"""

from __future__ import annotations

from ordercache.models.events import (
    Entity,
    InventoryRow,
    Op,
    OrderItemRow,
    OrderRow,
    ShipmentRow,
    TrackingEventRow,
)
from ordercache.publish.publisher import (
    EventPublisher,
    Published,
    PublishError,
    Topics,
    outbox_message,
    partition_key,
)

__all__ = [
    "Entity",
    "EventPublisher",
    "InventoryRow",
    "Op",
    "OrderItemRow",
    "OrderRow",
    "PublishError",
    "Published",
    "ShipmentRow",
    "Topics",
    "TrackingEventRow",
    "outbox_message",
    "partition_key",
]
