"""The three reads, independent of HTTP: what the worker's read API and ``ordercache.Reader`` share.

:class:`ViewReader` validates ids and pages, asks the cache service (cache-aside,
version-guarded fills, stampede control, database bypass while Redis is down — all
of it in :class:`~ordercache.cache.service.CacheService`) and says where each answer
came from (``hit``, ``miss``, ``bypass``). History pages inside the cached window
(the newest ``HISTORY_CACHED_ORDERS`` orders) are sliced from the cached view; a
page reaching beyond it is read from the database only (``bypass``).

Errors: :class:`~ordercache.errors.InvalidIdError` for a malformed id,
:class:`InvalidParamError` for a bad page, the database's own errors
(SQLAlchemy, ``OSError``) when a load fails. Redis errors never surface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ordercache.cache.interface import Cache
from ordercache.cache.keys import validate_id
from ordercache.cache.views import HISTORY, INVENTORY, ORDER
from ordercache.db.loaders import DbLoaders
from ordercache.errors import OrderCacheError
from ordercache.models.views import (
    HISTORY_CACHED_ORDERS,
    CustomerOrderHistory,
    OrderDetails,
    OrderSummary,
    ProductInventory,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = HISTORY_CACHED_ORDERS
MAX_OFFSET = 1_000_000

T = TypeVar("T")
CacheStatus = Literal["hit", "miss", "bypass"]


class InvalidParamError(OrderCacheError, ValueError):
    """A query parameter is malformed or out of range."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a customer's history."""

    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidParamError("limit", f"expected an integer from 1 to {MAX_LIMIT}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidParamError("offset", f"expected an integer from 0 to {MAX_OFFSET}")

    def within(self, cached: int = HISTORY_CACHED_ORDERS) -> bool:
        """Does the page lie inside the cached first ``cached`` orders?"""
        return self.offset + self.limit <= cached


def _parse_int(name: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidParamError(name, f"expected an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise InvalidParamError(name, f"expected an integer from {lo} to {hi}")
    return value


def parse_page(query: Mapping[str, str]) -> Page:
    """``limit`` (1..MAX_LIMIT, default 20) and ``offset`` (0..MAX_OFFSET) from a query."""
    return Page(
        limit=_parse_int("limit", query.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_parse_int("offset", query.get("offset"), 0, 0, MAX_OFFSET),
    )


class HistoryPage(BaseModel):
    """A page of a customer's orders, newest first (``GET /customers/{id}/orders``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: int
    version: int = Field(description="The customer's orders_version.")
    total_orders: int
    limit: int
    offset: int
    orders: list[OrderSummary]


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """A read's value (``None``: not found) and where it came from (``X-Cache``)."""

    value: T | None
    cache: CacheStatus


def _page_of(history: CustomerOrderHistory, page: Page, *, sliced: bool) -> HistoryPage:
    orders = history.orders[page.offset : page.offset + page.limit] if sliced else history.orders
    return HistoryPage(
        customer_id=history.customer_id,
        version=history.version,
        total_orders=history.total_orders,
        limit=page.limit,
        offset=page.offset,
        orders=list(orders),
    )


class ViewReader:
    """Order details, a customer's order history and a product's inventory, via the cache."""

    def __init__(self, cache: Cache, loaders: DbLoaders) -> None:
        self.cache = cache
        self.loaders = loaders

    async def order(self, order_id: int | str) -> Read[OrderDetails]:
        """An order with its items and latest tracking status."""
        result = await self.cache.get_or_load(ORDER, validate_id(order_id), self.loaders.order)
        return Read(result.value, result.status)

    async def inventory(self, product_id: int | str) -> Read[ProductInventory]:
        """Available and reserved stock of a product."""
        eid = validate_id(product_id)
        result = await self.cache.get_or_load(INVENTORY, eid, self.loaders.inventory)
        return Read(result.value, result.status)

    async def order_json(self, order_id: int | str) -> Read[bytes]:
        """:meth:`order` as its JSON: a hit is served as stored (no decode, no encode)."""
        eid = validate_id(order_id)
        result = await self.cache.get_or_load_body(ORDER, eid, self.loaders.order)
        return Read(result.body, result.status)

    async def inventory_json(self, product_id: int | str) -> Read[bytes]:
        """:meth:`inventory` as its JSON: a hit is served as stored."""
        eid = validate_id(product_id)
        result = await self.cache.get_or_load_body(INVENTORY, eid, self.loaders.inventory)
        return Read(result.body, result.status)

    async def history(
        self, customer_id: int | str, *, limit: int = DEFAULT_LIMIT, offset: int = 0
    ) -> Read[HistoryPage]:
        """A page of the customer's orders, newest first."""
        return await self.history_page(customer_id, Page(limit, offset))

    async def history_page(self, customer_id: int | str, page: Page) -> Read[HistoryPage]:
        eid = validate_id(customer_id)
        if page.within():
            result = await self.cache.get_or_load(HISTORY, eid, self.loaders.cached_history)
            if result.value is None:
                return Read(None, result.status)
            return Read(_page_of(result.value, page, sliced=True), result.status)
        # Beyond the cached window: the database serves the page itself.
        value = await self.loaders.history(eid, limit=page.limit, offset=page.offset)
        return Read(None if value is None else _page_of(value, page, sliced=False), "bypass")
