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

The reading itself is :class:`~ordercache.read.ViewReader`'s, the same object
``ordercache.Reader`` gives other services (one way to read); :class:`ReadApi` turns
its answers into a :class:`Reply` and the Faust views around it into HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust import web
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from ordercache.cache.keys import validate_id
from ordercache.cache.views import View
from ordercache.errors import InvalidIdError
from ordercache.read import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    InvalidParamError,
    Page,
    Read,
    ViewReader,
    parse_page,
)
from ordercache.web.metrics import WebMetrics

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "InvalidParamError",
    "Page",
    "ReadApi",
    "Reply",
    "parse_page",
    "register",
]

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a read answers: HTTP status, JSON body and the X-Cache value (if any)."""

    status: int
    body: bytes
    cache: str | None = None


def _error(status: int, message: str, **extra: Any) -> Reply:
    return Reply(status, orjson.dumps({"error": message, **extra}))


def _model_json(value: BaseModel) -> bytes:
    return value.__pydantic_serializer__.to_json(value)


#: Database failures turned into 503 at this boundary (no stack trace to the client).
DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


class ReadApi:
    """The three reads as HTTP replies, over the shared :class:`ViewReader`."""

    def __init__(self, reader: ViewReader) -> None:
        self.reader = reader

    async def order(self, raw_id: str) -> Reply:
        return await self._reply(
            View.ORDER, lambda: self.reader.order_json(raw_id), "order not found", raw_id
        )

    async def inventory(self, raw_id: str) -> Reply:
        return await self._reply(
            View.INVENTORY,
            lambda: self.reader.inventory_json(raw_id),
            "product inventory not found",
            raw_id,
        )

    async def history(self, raw_id: str, query: Mapping[str, str]) -> Reply:
        try:
            page = parse_page(query)
        except InvalidParamError as exc:
            return _error(400, "invalid parameter", parameter=exc.name, detail=exc.detail)
        return await self._reply(
            View.HISTORY,
            lambda: self.reader.history_page(raw_id, page),
            "customer not found",
            raw_id,
        )

    async def _reply(
        self,
        view: View,
        read: Callable[[], Awaitable[Read[Any]]],
        not_found: str,
        raw_id: str,
    ) -> Reply:
        """400 for a bad id, 404 for an unknown one, 503 if the database fails."""
        try:
            result = await read()
        except InvalidIdError as exc:
            return _error(400, "invalid id", detail=str(exc))
        except DB_ERRORS as exc:
            log.warning("database load of %s failed: %s", view.value, type(exc).__name__)
            return _error(503, "database unavailable", view=view.value)
        if result.value is None:
            eid = validate_id(raw_id)
            return Reply(404, orjson.dumps({"error": not_found, "id": eid}), result.cache)
        value = result.value
        # order and inventory come as their stored JSON (the response body as is)
        body = value if isinstance(value, bytes) else _model_json(value)
        return Reply(200, body, result.cache)


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
