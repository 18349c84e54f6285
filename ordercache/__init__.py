"""ordercache: an event-driven Redis cache for order, inventory and tracking views.

The public API for other services:

* :class:`Reader` — read the three views through the cache (``async with
  ordercache.Reader.from_env() as r: await r.order(42)``), see docs/reader.md;
* :class:`EventPublisher` and the row models — publish changes upstream
  (:mod:`ordercache.publish`), see docs/events.md.

Names are imported on first use, so ``import ordercache.config`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ordercache.app.reader import Reader
    from ordercache.publish import (
        EventPublisher,
        InventoryRow,
        Op,
        OrderItemRow,
        OrderRow,
        Published,
        PublishError,
        ShipmentRow,
        Topics,
        TrackingEventRow,
    )
    from ordercache.read import HistoryPage, Read

_EXPORTS = {
    "HistoryPage": "ordercache.read",
    "Read": "ordercache.read",
    "Reader": "ordercache.app.reader",
    "EventPublisher": "ordercache.publish",
    "InventoryRow": "ordercache.publish",
    "Op": "ordercache.publish",
    "OrderItemRow": "ordercache.publish",
    "OrderRow": "ordercache.publish",
    "PublishError": "ordercache.publish",
    "Published": "ordercache.publish",
    "ShipmentRow": "ordercache.publish",
    "Topics": "ordercache.publish",
    "TrackingEventRow": "ordercache.publish",
}

__all__ = [
    "EventPublisher",
    "HistoryPage",
    "InventoryRow",
    "Op",
    "OrderItemRow",
    "OrderRow",
    "PublishError",
    "Published",
    "Read",
    "Reader",
    "ShipmentRow",
    "Topics",
    "TrackingEventRow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ordercache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
