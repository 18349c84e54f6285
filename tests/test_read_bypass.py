"""The read path never answers 500 for a Redis client failure: it bypasses to the database.

redis-py does not only raise ``RedisError``: a cluster client that finds slots
uncovered raises ``RedisClusterException`` (a plain ``Exception``), and during a
failover a connection closed by another task's slot-map refresh has raised
``AttributeError``. The cache backend turns *any* exception from the client into
``CacheError``; the service then serves the read from the database.

Provoked for real: a private 3-node cluster loses the slot of the entry being read
(``CLUSTER DELSLOTS`` on every node, as when a primary without a replica is lost),
so the client's GET raises ``RedisClusterException``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import orjson
import pytest
import redis

from ordercache.app.context import AppContext
from ordercache.app.wiring import view_reader
from ordercache.cache.backend import RedisCacheBackend
from ordercache.cache.views import View
from ordercache.local.services import ManagedProcess
from ordercache.models.orm import Inventory, Product
from ordercache.redisconn.client import create_redis
from ordercache.web.read_api import ReadApi
from tests.conftest import make_settings, unique
from tests.redis_procs import LocalCluster, pause_clients, start_cluster

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of the test's own: its slot table gets changed."""
    cluster = start_cluster(3)
    yield cluster
    cluster.cleanup()


@pytest.fixture
async def ctx(own_cluster: LocalCluster, pg_schema: str) -> AsyncIterator[AppContext]:
    settings = make_settings(
        redis_mode="cluster",
        redis_cluster_nodes=own_cluster.addresses,
        redis_key_prefix=unique("b"),
        redis_retry_attempts=1,
        database_url=pg_schema,
        kafka_broker="127.0.0.1:9",
        app_id=unique("oc-bypass-"),
    )
    context = AppContext.build(settings)
    yield context
    await context.aclose()


async def new_product(ctx: AppContext, available: int) -> int:
    async with ctx.sessions() as s, s.begin():
        product = Product(sku=unique("SKU-"), name="bolt", price_cents=5)
        s.add(product)
        await s.flush()
        s.add(Inventory(product_id=product.id, available=available, reserved=0, updated_at=NOW))
        return int(product.id)


async def test_a_client_exception_outside_redis_error_becomes_a_bypass(
    ctx: AppContext, own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    api = ReadApi(view_reader(ctx))
    pid = await new_product(ctx, available=31)
    assert (await api.inventory(str(pid))).cache == "miss"
    hit = await api.inventory(str(pid))
    assert (hit.status, hit.cache) == (200, "hit")

    key = ctx.keys.entry(View.INVENTORY, pid)
    owner = own_cluster.primary_of(key).port
    probe = redis.Redis(port=owner)
    slot = int(probe.execute_command("CLUSTER", "KEYSLOT", key))
    probe.close()
    own_cluster.set_slot(slot, owner=None)
    try:
        with caplog.at_level(logging.WARNING, logger="ordercache.cache.service"):
            reply = await api.inventory(str(pid))
        assert (reply.status, reply.cache) == (200, "bypass"), reply.body
        assert orjson.loads(reply.body)["available"] == 31
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("RedisClusterException" in m for m in warned), warned
    finally:
        own_cluster.set_slot(slot, owner=owner)
    own_cluster.wait_ok()

    # Redis serves again: reads leave the bypass once the breaker lets them through.
    async def cached_again() -> bool:
        return (await api.inventory(str(pid))).cache in ("hit", "miss")

    deadline = asyncio.get_running_loop().time() + 30
    while not await cached_again():
        assert asyncio.get_running_loop().time() < deadline, "reads never left the bypass"
        await asyncio.sleep(0.2)


async def test_a_cancelled_read_is_cancelled_not_turned_into_a_cache_error(
    private_redis: ManagedProcess,
) -> None:
    """The backend translates every ``Exception``; cancellation is not one and must pass."""
    handle = create_redis(
        make_settings(redis_url=f"redis://{private_redis.url}/0", kafka_broker="127.0.0.1:9")
    )
    backend = RedisCacheBackend(handle.client, timeout=10.0)
    try:
        assert await backend.get("k") is None  # connected
        pause_clients(private_redis.port, 3000)  # the next GET hangs in the server
        read = asyncio.create_task(backend.get("k"))
        deadline = asyncio.get_running_loop().time() + 5
        while handle.pool_stats()["in_use"] == 0:  # the GET is in flight
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
    finally:
        await handle.close()
