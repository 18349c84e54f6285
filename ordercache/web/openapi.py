"""``GET /openapi.json``: the HTTP API described in OpenAPI 3.1, generated from the models.

Every body schema comes from a pydantic model's JSON schema (the cached views of
:mod:`ordercache.models.views`, :class:`~ordercache.read.HistoryPage`, and the small
models below for errors, health and stats), so the description cannot drift from
what the handlers serialise. ``tests/test_web_openapi.py`` validates real responses
of a running worker against it.
"""

from __future__ import annotations

from typing import Any, Literal

import faust
import orjson
from faust import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from ordercache.models.views import OrderDetails, ProductInventory
from ordercache.read import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, HistoryPage

REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    """An error answer: 400 (bad id or parameter), 404 (unknown id), 503 (database down)."""

    model_config = ConfigDict(extra="forbid")

    error: str
    detail: str | None = None
    id: int | None = None
    parameter: str | None = None
    view: str | None = None


class Liveness(BaseModel):
    status: Literal["ok"]


class ComponentHealth(BaseModel):
    """One checked dependency (extra fields: figures of that component)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "down", "skipped"]
    latency_ms: float | None = None
    error: str | None = Field(None, description="A short reason, e.g. an exception class name.")


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "degraded", "down"]
    failed: list[str]
    components: dict[str, ComponentHealth]


class StatsSummary(BaseModel):
    """The top of ``/stats`` (more sections follow; see docs/metrics.md)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded"]
    reasons: list[str]
    window: dict[str, float]
    views: dict[str, dict[str, Any]]


_MODELS: tuple[type[BaseModel], ...] = (
    OrderDetails,
    HistoryPage,
    ProductInventory,
    ErrorBody,
    Liveness,
    Readiness,
    StatsSummary,
)

_X_CACHE = {
    "X-Cache": {
        "description": "Where the answer came from: hit (Redis), miss (database, then "
        "filled), bypass (database only: Redis degraded, or a history page past the "
        "cached newest 100 orders).",
        "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
    }
}


def _json(schema: dict[str, Any], description: str, *, x_cache: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if x_cache:
        out["headers"] = _X_CACHE
    return out


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def _id_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": "A positive decimal id (1-19 digits, no leading zero).",
        "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"},
    }


def _read(
    summary: str, model: type[BaseModel], param: str, *, query: list[Any] | None = None
) -> dict[str, Any]:
    err = _ref(ErrorBody)
    return {
        "get": {
            "summary": summary,
            "parameters": [_id_param(param), *(query or [])],
            "responses": {
                "200": _json(_ref(model), summary, x_cache=True),
                "400": _json(err, "Malformed id or parameter."),
                "404": _json(err, "Unknown id (cached briefly).", x_cache=True),
                "503": _json(err, "The database is unavailable."),
            },
        }
    }


def build_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the worker's routes."""
    _, defs = models_json_schema([(m, "serialization") for m in _MODELS], ref_template=REF)
    page_params = [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
        },
        {
            "name": "offset",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "ordercache", "version": version},
        "paths": {
            "/orders/{order_id}": _read(
                "Order details: the order, its items, the latest tracking status.",
                OrderDetails,
                "order_id",
            ),
            "/customers/{customer_id}/orders": _read(
                "A page of the customer's orders, newest first.",
                HistoryPage,
                "customer_id",
                query=page_params,
            ),
            "/products/{product_id}/inventory": _read(
                "Available and reserved stock of a product.", ProductInventory, "product_id"
            ),
            "/health/live": {
                "get": {
                    "summary": "200 while the process and its event loop run.",
                    "responses": {"200": _json(_ref(Liveness), "Alive.")},
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Redis, database and broker checks.",
                    "responses": {
                        "200": _json(_ref(Readiness), "ok, or degraded (Redis down)."),
                        "503": _json(_ref(Readiness), "down: the database or the broker."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition (docs/metrics.md).",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "Hit ratios, latencies, Redis, pipeline and DLQ figures, a status.",
                    "responses": {"200": _json(_ref(StatsSummary), "The figures.")},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1.")},
                }
            },
        },
        "components": {"schemas": defs["$defs"]},
    }


def register(app: faust.App, version: str) -> None:
    """Serve ``GET /openapi.json`` (built once)."""
    body = orjson.dumps(build_document(version))

    @app.page("/openapi.json", name="ordercache_openapi")
    async def openapi(self: web.View, request: web.Request) -> web.Response:
        """The OpenAPI description of this worker's HTTP API."""
        return self.bytes(body, content_type="application/json")
