"""The whole worker, end to end, on each Redis topology: standalone, Sentinel, Cluster.

One ``ordercache worker`` subprocess per topology (the ``topology`` fixture is
parametrized, tests/topologies.py), configured only by the settings an operator
would set. Each test drives it the way production does — rows written to
PostgreSQL, their change events produced to the broker, reads over HTTP — and looks
at what landed in that topology's Redis:

* change events -> guarded invalidations and refreshes (the batch pipeline applies);
* tracking updates -> Redis Streams (the mirror runs after the batch applied);
* reads: miss then hit, concurrent misses served by one database load (stampede);
* the near-cache (on here): served, and kept coherent by every primary's broadcasts;
* health and /stats on the topology.

Failover under traffic needs a deployment of its own (a primary gets killed):
tests/test_failover.py does it for Sentinel and Cluster; a standalone server's outage
and restart are tests/test_pipeline.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from redis.asyncio.cluster import RedisCluster

from ordercache.cache.keys import KeySpace
from ordercache.cache.views import View
from ordercache.db.engine import create_engine, session_factory
from ordercache.models.orm import Inventory, Product
from ordercache.sample import writes
from ordercache.sample.producer import ChangeEventProducer, Topics
from ordercache.streams.layout import StreamLayout
from tests.conftest import unique
from tests.topologies import Inspector, Topology, unlink_prefix
from tests.web_harness import Seeded, Worker, get, metrics_of, sample, seed, start_worker, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

NOW = datetime(2026, 3, 1, tzinfo=UTC)
STREAM_SHARDS = 4


@dataclass
class Suite:
    """The worker on one topology and what a test needs to drive and observe it."""

    topology: Topology
    worker: Worker
    http: aiohttp.ClientSession
    redis: Inspector
    keys: KeySpace
    producer: ChangeEventProducer
    database_url: str

    async def write(
        self, change: Callable[..., Awaitable[list[writes.RowChange]]], *args: object
    ) -> None:
        """Commit a write with the sample workload's helpers and produce its events."""
        engine = create_engine(self.database_url)
        try:
            async with session_factory(engine)() as s, s.begin():
                changes = await change(s, *args)
        finally:
            await engine.dispose()
        await self.producer.emit_transaction(changes)

    async def read(self, path: str) -> tuple[int, str | None, dict[str, object]]:
        reply = await get(self.http, self.worker.base + path)
        return reply.status, reply.cache, reply.json() if reply.status == 200 else {}


@pytest.fixture(scope="module")
def worker_env(topology: Topology, pg_schema: str, kafka_broker: str) -> dict[str, str]:
    tag = unique("e")
    return {
        **topology.env,
        "redis_key_prefix": tag,
        "database_url": pg_schema,
        "kafka_broker": kafka_broker,
        "kafka_partitions": "2",
        "app_id": f"oc-{tag}",
        "topic_orders": f"{tag}.orders",
        "topic_inventory": f"{tag}.inventory",
        "topic_tracking": f"{tag}.tracking",
        "topic_dlq": f"{tag}.dlq",
        "stream_shards": str(STREAM_SHARDS),
        # the near-cache on, its copies kept long: a change event must reach them too
        # (a missed invalidation would outlive every wait in these tests)
        "near_cache": "true",
        "near_cache_ttl": "120",
    }


@pytest.fixture(scope="module")
async def suite(
    topology: Topology,
    worker_env: dict[str, str],
    pg_schema: str,
    kafka_broker: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Suite]:
    worker = start_worker(worker_env, tmp_path_factory.mktemp(f"w-{topology.name}"))
    redis = topology.inspector()
    topics = Topics(
        worker_env["topic_orders"], worker_env["topic_inventory"], worker_env["topic_tracking"]
    )
    producer = ChangeEventProducer([kafka_broker], topics)
    await producer.start()
    prefix = worker_env["redis_key_prefix"]
    try:
        async with aiohttp.ClientSession() as http:
            # ready = Redis, database and the consumer group all up
            await wait_for(http, worker, "/health/ready", lambda r: r.status == 200, timeout=90)
            yield Suite(topology, worker, http, redis, KeySpace(prefix), producer, pg_schema)
    finally:
        await producer.stop()
        worker.stop()
        await unlink_prefix(redis, prefix)
        await redis.aclose()


@pytest.fixture
async def seeded(suite: Suite) -> Seeded:
    """Rows of the test's own: no test sees another's cached entries, in any order."""
    return await seed(suite.database_url, history_orders=5)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s")
        await asyncio.sleep(0.1)


async def new_product(database_url: str, available: int = 10) -> int:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as s, s.begin():
            product = Product(sku=unique("SKU-"), name="gadget", price_cents=99)
            s.add(product)
            await s.flush()
            s.add(Inventory(product_id=product.id, available=available, reserved=0, updated_at=NOW))
            return int(product.id)
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- reads
async def test_reads_miss_then_hit_with_entries_in_this_topology(
    suite: Suite, seeded: Seeded
) -> None:
    paths = {
        View.ORDER: (f"/orders/{seeded.order_id}", seeded.order_id),
        View.INVENTORY: (f"/products/{seeded.product_id}/inventory", seeded.product_id),
        View.HISTORY: (f"/customers/{seeded.history_customer_id}/orders", seeded.history_customer_id),
    }  # fmt: skip
    for view, (path, eid) in paths.items():
        status, cache, first = await suite.read(path)
        assert (status, cache) == (200, "miss"), (view, status, cache)
        status, cache, again = await suite.read(path)
        assert (status, cache) == (200, "hit"), (view, status, cache)
        assert again == first
        # the fill went through the version-guarded script into this topology's Redis
        assert await suite.redis.exists(suite.keys.entry(view, eid)) == 1


# --------------------------------------------------------------------------- pipeline
async def test_change_events_invalidate_and_refresh_the_cache(suite: Suite, seeded: Seeded) -> None:
    inv_path = f"/products/{seeded.product_id}/inventory"
    order_path = f"/orders/{seeded.order_id}"
    _, _, inv0 = await suite.read(inv_path)
    _, _, order0 = await suite.read(order_path)
    assert (await suite.read(inv_path))[1] == "hit"
    assert (await suite.read(order_path))[1] == "hit"

    async def near_hits() -> float:
        text = (await get(suite.http, suite.worker.base + "/metrics")).body.decode()
        return sample(metrics_of(text), "ordercache_cache_near_hits_total", view="inventory")

    before = await near_hits()

    async def served_from_the_near_cache() -> bool:
        await suite.read(inv_path)
        return await near_hits() > before

    # the inventory is now held in the near-cache (whose copies live 120 s here)
    await eventually(served_from_the_near_cache, "an inventory read served by the near-cache")
    await suite.write(writes.restock, seeded.product_id, 7, NOW)
    await suite.write(writes.set_status, seeded.order_id, "delivered", NOW)

    async def inventory_new() -> bool:
        status, _, body = await suite.read(inv_path)
        return status == 200 and body.get("available") == int(str(inv0["available"])) + 7

    async def order_new() -> bool:
        status, _, body = await suite.read(order_path)
        return status == 200 and body.get("status") == "delivered"

    await eventually(inventory_new, "restock reached the cached inventory")
    await eventually(order_new, "status change reached the cached order")
    # the invalidation left its version tombstone (the guard) next to the entry
    guard = suite.keys.guard(View.ORDER, seeded.order_id)
    assert await suite.redis.exists(guard) == 1
    assert order0["status"] != "delivered"


async def test_tracking_updates_are_mirrored_to_streams(suite: Suite, seeded: Seeded) -> None:
    layout = StreamLayout(suite.keys, STREAM_SHARDS)
    stream = layout.order_stream(seeded.order_id)
    before = await suite.redis.xlen(stream)
    event_id = unique("ev-")
    await suite.write(
        writes.add_tracking_event, seeded.order_id, "out_for_delivery", NOW,
    )  # fmt: skip
    await suite.write(
        lambda s: writes.add_tracking_event(
            s, seeded.order_id, "delivered", NOW, event_id=event_id, location="Bonn"
        )
    )

    async def mirrored() -> bool:
        return int(await suite.redis.xlen(stream)) >= before + 2

    await eventually(mirrored, "tracking updates mirrored")
    entries = await suite.redis.xrange(stream)
    last = entries[-1][1]
    assert last[b"event_id"] == event_id.encode()
    assert last[b"status"] == b"delivered"
    # the per-order stream lives in its shard's slot; the shard stream got it too
    shard = layout.shard_stream(layout.shard_of(seeded.order_id))
    assert int(await suite.redis.xlen(shard)) >= 2


# --------------------------------------------------------------------------- stampede
async def test_concurrent_misses_are_served_by_one_load(suite: Suite) -> None:
    pid = await new_product(suite.database_url, available=42)
    path = f"/products/{pid}/inventory"
    url = suite.worker.base + "/metrics"

    def loads(text: str) -> float:
        return sample(
            metrics_of(text), "ordercache_cache_loader_duration_seconds_count", view="inventory"
        )

    before = loads((await get(suite.http, url)).body.decode())
    replies = await asyncio.gather(*(suite.read(path) for _ in range(20)))
    after = loads((await get(suite.http, url)).body.decode())
    assert {status for status, _, _ in replies} == {200}
    assert {body["available"] for _, _, body in replies} == {42}
    assert {cache for _, cache, _ in replies} <= {"miss", "hit"}
    assert after - before == 1, replies


# --------------------------------------------------------------------------- health
async def test_health_and_stats_on_this_topology(suite: Suite, seeded: Seeded) -> None:
    ready = await get(suite.http, suite.worker.base + "/health/ready")
    assert ready.status == 200, ready.body
    body = ready.json()
    assert body["status"] == "ok", body
    await suite.read(f"/orders/{seeded.order_id}")  # at least one key exists

    async def stats_see_redis() -> bool:
        stats = (await get(suite.http, suite.worker.base + "/stats")).json()
        return bool(stats["redis"]["up"]) and int(stats["redis"]["keys"] or 0) > 0

    await eventually(stats_see_redis, "/stats reports Redis up with keys")
    if isinstance(suite.redis, RedisCluster):
        # keys are spread over the primaries (the id is the hash tag)
        await suite.redis.initialize()
        owners = {
            suite.redis.get_node_from_key(suite.keys.entry(View.ORDER, i)).name
            for i in range(1, 40)
        }
        assert len(owners) == 3
