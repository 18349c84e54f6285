"""The read API: cache-aside reads of the three views.

``GET /orders/{id}``, ``GET /customers/{id}/orders?limit=&offset=`` and
``GET /products/{id}/inventory``. Each handler validates the id, asks the cache
service (Redis, else one database load) and answers with the view as JSON and an
``X-Cache: hit|miss|bypass`` header. The cache service never lets a Redis error
through (it bypasses to the database), and nothing else here touches Redis, so a
Redis outage cannot turn into an error response.

History pages inside the cached window (the newest ``HISTORY_CACHED_ORDERS``
orders) are sliced from the cached view; a page reaching beyond it is read from the
database only (``X-Cache: bypass``).

:class:`ReadApi` holds the logic and returns a :class:`Reply`; the Faust views
around it only translate to HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust import web
from sqlalchemy.exc import SQLAlchemyError

from ordercache.cache.interface import Cache
from ordercache.cache.keys import validate_id
from ordercache.cache.views import HISTORY, INVENTORY, ORDER, View, ViewSpec
from ordercache.db.loaders import DbLoaders
from ordercache.errors import InvalidIdError, OrderCacheError
from ordercache.models.views import HISTORY_CACHED_ORDERS, CustomerOrderHistory
from ordercache.web.metrics import WebMetrics

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = HISTORY_CACHED_ORDERS
MAX_OFFSET = 1_000_000

JSON = "application/json"


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


@dataclass(frozen=True, slots=True)
class Reply:
    """What a read answers: HTTP status, JSON body and the X-Cache value (if any)."""

    status: int
    body: bytes
    cache: str | None = None


def _error(status: int, message: str, **extra: Any) -> Reply:
    return Reply(status, orjson.dumps({"error": message, **extra}))


def _history_json(history: CustomerOrderHistory, page: Page, *, sliced: bool) -> bytes:
    orders = history.orders[page.offset : page.offset + page.limit] if sliced else history.orders
    return orjson.dumps(
        {
            "customer_id": history.customer_id,
            "version": history.version,
            "total_orders": history.total_orders,
            "limit": page.limit,
            "offset": page.offset,
            "orders": [o.model_dump(mode="json") for o in orders],
        }
    )


#: Database failures turned into 503 at this boundary (no stack trace to the client).
DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


class ReadApi:
    """The three reads, independent of HTTP."""

    def __init__(self, cache: Cache, loaders: DbLoaders) -> None:
        self.cache = cache
        self.loaders = loaders

    async def order(self, raw_id: str) -> Reply:
        return await self._single(ORDER, self.loaders.order, raw_id, "order not found")

    async def inventory(self, raw_id: str) -> Reply:
        return await self._single(
            INVENTORY, self.loaders.inventory, raw_id, "product inventory not found"
        )

    async def _single(self, spec: ViewSpec[Any], loader: Any, raw_id: str, not_found: str) -> Reply:
        """One view by id: 400 for a bad id, 404 for an unknown one, 503 if the DB fails."""
        try:
            eid = validate_id(raw_id)
            # The stored JSON of these views is the response body: no decode/encode.
            result = await self.cache.get_or_load_body(spec, eid, loader)
        except InvalidIdError as exc:
            return _error(400, "invalid id", detail=str(exc))
        except DB_ERRORS as exc:
            return self._db_down(spec.view, exc)
        if result.body is None:
            return Reply(404, orjson.dumps({"error": not_found, "id": eid}), result.status)
        return Reply(200, result.body, result.status)

    async def history(self, raw_id: str, query: Mapping[str, str]) -> Reply:
        try:
            eid = validate_id(raw_id)
            page = parse_page(query)
        except InvalidIdError as exc:
            return _error(400, "invalid id", detail=str(exc))
        except InvalidParamError as exc:
            return _error(400, "invalid parameter", parameter=exc.name, detail=exc.detail)
        try:
            if page.within():
                result = await self.cache.get_or_load(HISTORY, eid, self.loaders.cached_history)
                value, status, sliced = result.value, result.status, True
            else:
                # Beyond the cached window: the database serves the page itself.
                value = await self.loaders.history(eid, limit=page.limit, offset=page.offset)
                status, sliced = "bypass", False
        except DB_ERRORS as exc:
            return self._db_down(View.HISTORY, exc)
        if value is None:
            return Reply(404, orjson.dumps({"error": "customer not found", "id": eid}), status)
        return Reply(200, _history_json(value, page, sliced=sliced), status)

    @staticmethod
    def _db_down(view: View, exc: BaseException) -> Reply:
        log.warning("database load of %s failed: %s", view.value, type(exc).__name__)
        return _error(503, "database unavailable", view=view.value)


def register(app: faust.App, api: ReadApi, metrics: WebMetrics) -> None:
    """Serve the read API on ``app``."""
    observe = {
        (view.value, cache): metrics.read_seconds.labels(view.value, cache).observe
        for view in View
        for cache in ("hit", "miss", "bypass")
    }

    def respond(view: web.View, name: str, reply: Reply, started: float) -> web.Response:
        headers = {"Cache-Control": "no-store"}
        if reply.cache is not None:
            headers["X-Cache"] = reply.cache
            observe[(name, reply.cache)](time.perf_counter() - started)
        return view.bytes(reply.body, content_type=JSON, status=reply.status, headers=headers)

    @app.page("/orders/{order_id}", name="ordercache_order")
    async def order(self: web.View, request: web.Request, order_id: str) -> web.Response:
        """Order details (order, items, latest tracking status)."""
        t0 = time.perf_counter()
        return respond(self, "order", await api.order(order_id), t0)

    @app.page("/customers/{customer_id}/orders", name="ordercache_customer_orders")
    async def customer_orders(
        self: web.View, request: web.Request, customer_id: str
    ) -> web.Response:
        """A page of the customer's orders, newest first (``limit``, ``offset``)."""
        t0 = time.perf_counter()
        query = request.query
        return respond(self, "history", await api.history(customer_id, query), t0)

    @app.page("/products/{product_id}/inventory", name="ordercache_product_inventory")
    async def product_inventory(
        self: web.View, request: web.Request, product_id: str
    ) -> web.Response:
        """Available and reserved stock of a product."""
        t0 = time.perf_counter()
        return respond(self, "inventory", await api.inventory(product_id), t0)
