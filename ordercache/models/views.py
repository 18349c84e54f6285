"""The cached views: what readers get, from Redis or from the database.

Each view carries ``version``: the system of record's row version of the entity the
view is keyed by. Any write that changes a view bumps that row's version in the same
transaction, so versions order the cache writes (invariant 1 and 2).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OrderItemView(_View):
    product_id: int
    sku: str
    quantity: int
    unit_price_cents: int


class TrackingStatusView(_View):
    status: str
    location: str | None = None
    carrier: str | None = None
    occurred_at: datetime


class OrderDetails(_View):
    """Order + items + latest tracking status. Key: order id."""

    order_id: int
    customer_id: int
    status: str
    total_cents: int
    currency: str
    created_at: datetime
    updated_at: datetime
    version: int
    items: list[OrderItemView]
    latest_tracking: TrackingStatusView | None = None


class OrderSummary(_View):
    order_id: int
    status: str
    total_cents: int
    currency: str
    created_at: datetime
    version: int


class CustomerOrderHistory(_View):
    """A customer's newest orders, newest first. Key: customer id.

    The cache holds the first ``HISTORY_CACHED_ORDERS`` orders; pages beyond them
    are served from the database. ``version`` is the customer's ``orders_version``.
    """

    customer_id: int
    version: int
    total_orders: int
    orders: list[OrderSummary]


class ProductInventory(_View):
    """Available and reserved stock of one product. Key: product id."""

    product_id: int
    sku: str
    available: int
    reserved: int
    version: int
    updated_at: datetime


#: How many of a customer's newest orders the cached history holds.
HISTORY_CACHED_ORDERS = 100
