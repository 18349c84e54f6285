"""``/openapi.json`` checked against a running worker's real answers; JSON log lines.

One worker (real Redis, PostgreSQL and broker) with ``ORDERCACHE_LOG_FORMAT=json``:
every route of the document is requested, each real body is validated with
``jsonschema`` against the schema the document gives for its status, and the
``X-Cache`` header against the declared values. Then every line the worker logged
must parse as a JSON object with the stable fields.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import jsonschema
import pytest

from tests.conftest import REDIS_URL, unique
from tests.web_harness import Reply, Seeded, Worker, get, seed, start_worker, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture(scope="module")
async def seeded(pg_schema: str) -> Seeded:
    return await seed(pg_schema, history_orders=105)


@pytest.fixture(scope="module")
def worker(
    pg_schema: str, kafka_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    topics = unique("oa")
    w = start_worker(
        {
            "redis_url": REDIS_URL,
            "redis_key_prefix": unique("oa"),
            "database_url": pg_schema,
            "kafka_broker": kafka_broker,
            "kafka_partitions": 1,
            "app_id": unique("oc-oa-"),
            "topic_orders": f"{topics}.orders",
            "topic_inventory": f"{topics}.inventory",
            "topic_tracking": f"{topics}.tracking",
            "topic_dlq": f"{topics}.dlq",
            "log_format": "json",
        },
        tmp_path_factory.mktemp("oa"),
    )
    yield w
    w.stop()


@pytest.fixture(scope="module")
async def http(worker: Worker) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        await wait_for(session, worker, "/health/ready", lambda r: r.status == 200, timeout=90)
        yield session


def _check(doc: dict[str, Any], path: str, reply: Reply) -> None:
    op = doc["paths"][path]["get"]
    spec = op["responses"].get(str(reply.status))
    assert spec is not None, f"{path}: status {reply.status} not described"
    ((ctype, media),) = spec["content"].items()
    assert reply.headers["Content-Type"].startswith(ctype), (path, reply.headers)
    if ctype == "application/json":
        schema = {**media["schema"], "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(reply.json())
    for name, header in spec.get("headers", {}).items():
        assert reply.headers.get(name) in header["schema"]["enum"], (path, reply.headers)


async def test_openapi_describes_real_responses(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded
) -> None:
    raw = await get(http, worker.base + "/openapi.json")
    assert raw.status == 200
    doc = raw.json()
    assert doc["openapi"].startswith("3.1")
    jsonschema.Draft202012Validator.check_schema({"components": doc["components"]})

    o, c, p = seeded.order_id, seeded.history_customer_id, seeded.product_id
    cases = [
        ("/orders/{order_id}", f"/orders/{o}", 200, "miss"),
        ("/orders/{order_id}", f"/orders/{o}", 200, "hit"),
        ("/orders/{order_id}", "/orders/999999999999", 404, "miss"),
        ("/orders/{order_id}", "/orders/abc", 400, None),
        ("/customers/{customer_id}/orders", f"/customers/{c}/orders?limit=5", 200, "miss"),
        ("/customers/{customer_id}/orders", f"/customers/{c}/orders?offset=100", 200, "bypass"),
        ("/customers/{customer_id}/orders", f"/customers/{c}/orders?limit=0", 400, None),
        ("/products/{product_id}/inventory", f"/products/{p}/inventory", 200, "miss"),
        ("/health/live", "/health/live", 200, None),
        ("/health/ready", "/health/ready", 200, None),
        ("/metrics", "/metrics", 200, None),
        ("/stats", "/stats", 200, None),
        ("/openapi.json", "/openapi.json", 200, None),
    ]
    for template, url, status, cache in cases:
        reply = await get(http, worker.base + url)
        assert (reply.status, reply.cache) == (status, cache), (url, reply.body[:300])
        _check(doc, template, reply)
    assert {t for t, *_ in cases} == set(doc["paths"])  # every route was exercised
    bypass = doc["paths"]["/customers/{customer_id}/orders"]["get"]["responses"]["200"]
    assert "history page past" in bypass["headers"]["X-Cache"]["description"]


async def test_every_log_line_is_a_json_object(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded
) -> None:
    # a database load, so our loggers write too; an id no other test reads (the OpenAPI
    # test needs its own first reads to be misses, whatever the test order)
    await get(http, worker.base + "/orders/888888888888")
    lines = worker.process.log().splitlines()
    assert len(lines) > 10
    loggers = set()
    for line in lines:
        record = json.loads(line)  # every line: not a banner, not a bare traceback
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        assert record["ts"].endswith("Z")
        loggers.add(record["logger"].split(".")[0])
    assert {"faust", "ordercache", "mode"} <= loggers, loggers
