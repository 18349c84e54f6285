"""The read API, /metrics and /stats over HTTP, against one real worker.

One worker subprocess for the module (start-up includes a Kafka group join): shared
Redis under a private key prefix, the session's PostgreSQL database, the session's
Tansu broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from ordercache.cache.keys import KeySpace
from ordercache.cache.views import View
from ordercache.models.views import HISTORY_CACHED_ORDERS
from tests.conftest import REDIS_URL, unique
from tests.web_harness import Seeded, Worker, get, metrics_of, sample, seed, start_worker, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture(scope="module")
def prefix() -> str:
    return unique("w")


@pytest.fixture(scope="module")
async def seeded(pg_schema: str) -> Seeded:
    return await seed(pg_schema)


@pytest.fixture(scope="module")
def worker(
    pg_schema: str, kafka_broker: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    topics = unique("tp")
    w = start_worker(
        {
            "redis_url": REDIS_URL,
            "redis_key_prefix": prefix,
            "database_url": pg_schema,
            "kafka_broker": kafka_broker,
            "kafka_partitions": 1,
            "app_id": unique("oc-web-"),
            "topic_orders": f"{topics}.orders",
            "topic_inventory": f"{topics}.inventory",
            "topic_tracking": f"{topics}.tracking",
            "topic_dlq": f"{topics}.dlq",
        },
        tmp_path_factory.mktemp("worker"),
    )
    yield w
    w.stop()


@pytest.fixture(scope="module")
async def http(worker: Worker, prefix: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        await wait_for(session, worker, "/health/ready", lambda r: r.status == 200, timeout=90)
        yield session
    client = aioredis.Redis.from_url(REDIS_URL)
    batch = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
    if batch:
        await client.unlink(*batch)
    await client.aclose()


async def uncache(prefix: str, view: View, entity_id: int) -> None:
    """Drop one entry, so a test that expects a miss holds in any order (the module's
    tests read the same seeded rows)."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.delete(KeySpace(prefix).entry(view, entity_id))
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- reads
async def test_order_miss_then_hit(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded, prefix: str
) -> None:
    await uncache(prefix, View.ORDER, seeded.order_id)
    url = f"{worker.base}/orders/{seeded.order_id}"
    first = await get(http, url)
    assert first.status == 200, first.body
    assert first.cache == "miss"
    assert first.headers["Content-Type"].startswith("application/json")
    body = first.json()
    assert body["order_id"] == seeded.order_id
    assert body["customer_id"] == seeded.customer_id
    assert len(body["items"]) == seeded.order_items
    assert body["latest_tracking"]["status"] == "in_transit"
    assert body["created_at"].startswith("2026-01-01T00:00:00")

    second = await get(http, url)
    assert second.status == 200
    assert second.cache == "hit"
    assert second.json() == body


async def test_inventory_miss_then_hit(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded, prefix: str
) -> None:
    await uncache(prefix, View.INVENTORY, seeded.product_id)
    url = f"{worker.base}/products/{seeded.product_id}/inventory"
    first = await get(http, url)
    assert (first.status, first.cache) == (200, "miss")
    assert first.json()["product_id"] == seeded.product_id
    assert first.json()["available"] == 10
    second = await get(http, url)
    assert (second.status, second.cache) == (200, "hit")
    assert second.json() == first.json()


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/orders/{missing}", "order not found"),
        ("/products/{missing}/inventory", "product inventory not found"),
        ("/customers/{missing}/orders", "customer not found"),
    ],
)
async def test_unknown_id_is_404_and_negative_cached(
    http: aiohttp.ClientSession, worker: Worker, path: str, what: str
) -> None:
    missing = 9_000_000_000 + abs(hash(path)) % 1_000_000
    url = worker.base + path.format(missing=missing)
    first = await get(http, url)
    assert first.status == 404
    assert first.json() == {"error": what, "id": missing}
    assert first.cache == "miss"
    second = await get(http, url)
    assert (second.status, second.cache) == (404, "hit")


@pytest.mark.parametrize(
    "path",
    [
        "/orders/abc",
        "/orders/0",
        "/orders/-1",
        "/orders/007",
        "/orders/1.5",
        "/orders/99999999999999999999",
        "/orders/9223372036854775808",
        "/orders/%201",
        "/orders/1%0A",
        "/products/x/inventory",
        "/customers/1e3/orders",
    ],
)
async def test_invalid_id_is_400(http: aiohttp.ClientSession, worker: Worker, path: str) -> None:
    reply = await get(http, worker.base + path)
    assert reply.status == 400
    body = reply.json()
    assert body["error"] == "invalid id"
    assert "detail" in body
    assert "X-Cache" not in reply.headers


MARK = b"REQ-BYTES-5e1f"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"GET /" + MARK * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "LineTooLong"),
        (b"BREW /" + MARK + b" HTTP/1.1\r\nHost: x\r\n\r\n", "BadHttpMethod"),
        # the second request on a connection: aiohttp logged this one with a traceback
        (
            b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nBREW /" + MARK + b" HTTP/1.1\r\n\r\n",
            "BadHttpMethod",
        ),
        (b"\x16\x03\x01\x02\x00" + MARK + b"\r\n\r\n", "BadHttpMethod"),
    ],
)
async def test_malformed_request_gets_a_fixed_400_and_one_log_line(
    http: aiohttp.ClientSession, worker: Worker, raw: bytes, error: str
) -> None:
    from ordercache.web.server import BAD_REQUEST_BODY

    start = len(worker.process.log())
    reader, writer = await asyncio.open_connection("127.0.0.1", worker.port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 15)  # the server closes
    finally:
        writer.close()
    last = answer[answer.rfind(b"HTTP/1.") :]
    head, _, body = last.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert body == BAD_REQUEST_BODY.encode()
    assert MARK not in answer
    needle = f": {error} (answered 400)"
    deadline = asyncio.get_running_loop().time() + 15
    while needle not in worker.process.log()[start:]:
        assert asyncio.get_running_loop().time() < deadline, worker.log_tail()
        await asyncio.sleep(0.05)
    logged = worker.process.log()[start:]
    assert [ln for ln in logged.splitlines() if "malformed HTTP request" in ln] == [
        ln for ln in logged.splitlines() if needle in ln
    ]
    assert sum(needle in ln for ln in logged.splitlines()) == 1
    assert "Traceback" not in logged
    assert MARK.decode() not in logged


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        (f"limit={HISTORY_CACHED_ORDERS + 1}", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("limit=", "limit"),
    ],
)
async def test_bad_paging_is_400(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded, query: str, parameter: str
) -> None:
    reply = await get(http, f"{worker.base}/customers/{seeded.history_customer_id}/orders?{query}")
    assert reply.status == 400
    assert reply.json()["error"] == "invalid parameter"
    assert reply.json()["parameter"] == parameter


async def test_history_pages_from_cache_and_database(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded, prefix: str
) -> None:
    await uncache(prefix, View.HISTORY, seeded.history_customer_id)
    base = f"{worker.base}/customers/{seeded.history_customer_id}/orders"
    n = seeded.history_orders
    assert n > HISTORY_CACHED_ORDERS

    first = await get(http, base + "?limit=30")
    assert (first.status, first.cache) == (200, "miss")
    page = first.json()
    assert page["total_orders"] == n
    assert (page["limit"], page["offset"]) == (30, 0)
    assert len(page["orders"]) == 30
    # newest first: the seed gave order i the creation time base + i minutes, total i
    assert [o["total_cents"] for o in page["orders"]] == list(range(n - 1, n - 31, -1))

    # every page inside the cached window is a slice of the cached view
    seen: list[int] = []
    for offset in range(0, HISTORY_CACHED_ORDERS, 25):
        r = await get(http, f"{base}?limit=25&offset={offset}")
        assert (r.status, r.cache) == (200, "hit"), (offset, r.body[:200])
        seen += [o["order_id"] for o in r.json()["orders"]]
    assert len(seen) == HISTORY_CACHED_ORDERS == len(set(seen))

    # pages reaching past it come from the database
    beyond: list[int] = []
    for offset in range(HISTORY_CACHED_ORDERS, n + 20, 20):
        r = await get(http, f"{base}?limit=20&offset={offset}")
        assert (r.status, r.cache) == (200, "bypass")
        assert r.json()["total_orders"] == n
        beyond += [o["order_id"] for o in r.json()["orders"]]
    assert len(beyond) == n - HISTORY_CACHED_ORDERS
    assert not set(beyond) & set(seen)

    straddling = await get(http, f"{base}?limit=20&offset={HISTORY_CACHED_ORDERS - 10}")
    assert straddling.cache == "bypass"
    assert [o["order_id"] for o in straddling.json()["orders"]] == seen[-10:] + beyond[:10]

    past_end = await get(http, f"{base}?limit=10&offset={n + 500}")
    assert (past_end.status, past_end.json()["orders"]) == (200, [])

    default = await get(http, base)
    assert (default.json()["limit"], default.json()["offset"]) == (20, 0)
    assert [o["order_id"] for o in default.json()["orders"]] == seen[:20]


# --------------------------------------------------------------------------- metrics
async def _scrape(
    http: aiohttp.ClientSession, worker: Worker
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    reply = await get(http, worker.base + "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    return metrics_of(reply.body.decode())


CONTRACT = [
    "ordercache_cache_requests_total",
    # (ordercache_cache_errors_total appears with the first error: no pre-created series)
    "ordercache_cache_fills_rejected_total",
    "ordercache_cache_stampede_waits_total",
    "ordercache_cache_operation_duration_seconds_bucket",
    "ordercache_cache_loader_duration_seconds_bucket",
    "ordercache_cache_breaker_state",
    "ordercache_redis_up",
    "ordercache_redis_memory_used_bytes",
    "ordercache_redis_maxmemory_bytes",
    "ordercache_redis_connected_clients",
    "ordercache_redis_evicted_keys_total",
    "ordercache_redis_keyspace_hits_total",
    "ordercache_redis_keyspace_misses_total",
    "ordercache_redis_pool_connections",
    "ordercache_health_status",
    "ordercache_read_duration_seconds_bucket",
    # Faust's own sensors, on the same registry
    "ordercache_faust_http_status_codes_total",
    "ordercache_faust_messages_received_total",
    "ordercache_faust_assign_latency_bucket",
]


async def test_metrics_exposition_holds_the_contract(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded
) -> None:
    parsed = await _scrape(http, worker)
    missing = [name for name in CONTRACT if name not in parsed]
    assert not missing, missing
    assert set(dict(k)["state"] for k in parsed["ordercache_redis_pool_connections"]) == {
        "in_use",
        "idle",
        "max",
    }
    assert sample(parsed, "ordercache_redis_pool_connections", state="max") == 64
    assert sample(parsed, "ordercache_health_status") == 0
    assert sample(parsed, "ordercache_cache_breaker_state") == 0


async def test_metrics_move_with_traffic(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded
) -> None:
    url = f"{worker.base}/orders/{seeded.order_id}"
    # Cached first (alone, this test makes the first read of the order: a miss).
    await wait_for(http, worker, f"/orders/{seeded.order_id}", lambda r: r.cache == "hit")
    before = await _scrape(http, worker)
    for _ in range(5):
        reply = await get(http, url)
        assert (reply.status, reply.cache) == (200, "hit")
    after = await _scrape(http, worker)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("ordercache_cache_requests_total", view="order", result="hit") == 5
    assert moved("ordercache_read_duration_seconds_count", view="order", cache="hit") == 5
    assert moved("ordercache_cache_operation_duration_seconds_count", view="order", op="get") == 5
    # faust's sensor counts our HTTP responses too (the scrape itself included)
    assert moved("ordercache_faust_http_status_codes_total", status_code="200") >= 5

    # Redis INFO gauges come from a background refresh: wait for the next one
    def refreshed(r: object) -> bool:
        parsed = metrics_of(r.body.decode())  # type: ignore[attr-defined]
        return sample(parsed, "ordercache_redis_keyspace_hits_total") > sample(
            before, "ordercache_redis_keyspace_hits_total"
        )

    latest = metrics_of(
        (await wait_for(http, worker, "/metrics", refreshed, timeout=30)).body.decode()
    )
    assert sample(latest, "ordercache_redis_up") == 1
    assert sample(latest, "ordercache_redis_memory_used_bytes") > 0
    assert sample(latest, "ordercache_redis_connected_clients") >= 1


# --------------------------------------------------------------------------- stats
async def test_stats_shape(http: aiohttp.ClientSession, worker: Worker, seeded: Seeded) -> None:
    # cached first: alone, this test makes the order's first read (a miss)
    await wait_for(http, worker, f"/orders/{seeded.order_id}", lambda r: r.cache == "hit")
    for _ in range(3):
        await get(http, f"{worker.base}/orders/{seeded.order_id}")
    reply = await get(http, worker.base + "/stats")
    assert reply.status == 200
    stats = reply.json()
    assert stats["status"] == "ok", stats["reasons"]
    assert stats["reasons"] == []
    assert set(stats["views"]) == {"order", "history", "inventory"}
    order = stats["views"]["order"]
    assert order["requests"] >= 3
    assert 0 < order["hit_ratio"] <= 1
    assert order["results"]["hit"] >= 3
    assert order["latency_ms"]["p50"] > 0
    assert order["latency_ms"]["p99"] >= order["latency_ms"]["p50"]
    assert order["redis_get_ms"]["p50"] > 0
    assert stats["redis"]["up"] is True
    assert stats["redis"]["used_memory_bytes"] > 0
    assert stats["redis"]["pool"]["max"] == 64
    assert stats["cache"]["breaker"] == "closed"
    assert stats["pipeline"]["events_applied"] == 0
    assert stats["pipeline"]["dlq_messages"] == 0
    assert stats["pipeline"]["assigned_partitions"] == 3  # ready waited for them
    assert stats["thresholds"]["min_hit_ratio"] == 0.5
    assert stats["window"]["span_seconds"] == 300
    text = reply.body.decode()
    for secret_ish in ("postgresql", "redis://", "password"):
        assert secret_ish not in text


async def test_stats_turns_degraded_on_a_low_hit_ratio(
    http: aiohttp.ClientSession, worker: Worker, seeded: Seeded
) -> None:
    """Fills the inventory view's window with misses, then hits until the worker is
    "ok" again: the module's other tests run before or after it, in any order."""
    try:
        for i in range(25):
            assert (
                await get(http, f"{worker.base}/products/{8_000_000_000 + i}/inventory")
            ).status == 404
        stats = (await get(http, worker.base + "/stats")).json()
        assert stats["status"] == "degraded"
        assert any(r.startswith("inventory: hit ratio") for r in stats["reasons"]), stats["reasons"]
        assert stats["views"]["inventory"]["hit_ratio"] < 0.5
    finally:
        inventory = f"{worker.base}/products/{seeded.product_id}/inventory"
        for _ in range(200):
            if (await get(http, worker.base + "/stats")).json()["status"] == "ok":
                break
            for _ in range(10):
                await get(http, inventory)
        assert (await get(http, worker.base + "/stats")).json()["status"] == "ok"
