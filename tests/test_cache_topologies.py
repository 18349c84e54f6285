"""The cache service's cross-process guarantees on each topology (standalone, Sentinel,
Cluster): the fill lease (stampede across processes) and the version guard.

Two services with clients of their own stand for two worker processes (separate
single-flight, separate connection pools), built from the settings an operator sets
for the topology (tests/topologies.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.service import CacheConfig, CacheService, build_cache_service
from ordercache.cache.views import INVENTORY, View
from ordercache.models.views import ProductInventory
from ordercache.redisconn.client import RedisHandle, create_redis
from tests.conftest import make_settings, unique
from tests.topologies import Topology, unlink_prefix

NOW = datetime(2026, 3, 1, tzinfo=UTC)

Make = Callable[..., CacheService]


def inv(pid: int, version: int) -> ProductInventory:
    return ProductInventory(
        product_id=pid, sku="S", available=version, reserved=0, version=version, updated_at=NOW
    )


@pytest.fixture
async def services(topology: Topology) -> AsyncIterator[Make]:
    """Builds services on ``topology``, each on a client of its own, one key prefix."""
    prefix = unique("ct")
    handles: list[RedisHandle] = []

    def make(name: str = "oc-test", **config: object) -> CacheService:
        settings = make_settings(
            **topology.env, redis_key_prefix=prefix, kafka_broker="127.0.0.1:9", app_id=name
        )
        handle = create_redis(settings)
        handles.append(handle)
        return build_cache_service(
            handle.client, KeySpace(prefix), TtlPolicy(jitter=0.0),
            CacheMetrics.create(CollectorRegistry()), timeout=2.0,
            config=CacheConfig(**config),  # type: ignore[arg-type]
        )  # fmt: skip

    yield make
    for handle in handles:
        await handle.close()
    inspector = topology.inspector()
    await unlink_prefix(inspector, prefix)
    await inspector.aclose()


async def last_commands(topology: Topology, key: str, client_name: str) -> set[str]:
    """CLIENT LIST's last command of each connection named ``client_name`` on ``key``'s
    node (a cluster client may hold one more there: the one it read the slot map with)."""
    inspector = topology.inspector()
    try:
        if isinstance(inspector, RedisCluster):
            await inspector.initialize()
            node = inspector.get_node_from_key(key)
            host, port = node.host, node.port
        else:
            host, port = topology.data_nodes[0].split(":")
        direct = aioredis.Redis(host=host, port=int(port))
        try:
            clients = await direct.client_list()
        finally:
            await direct.aclose()
    finally:
        await inspector.aclose()
    return {c["cmd"] for c in clients if c.get("name") == client_name}


async def test_the_fill_lease_makes_the_second_process_wait(
    services: Make, topology: Topology
) -> None:
    b_name = unique("oc-b-")
    # b polls for the leader's fill once a second: its last command stays visible
    a, b = services(lease_wait=5.0), services(b_name, lease_wait=5.0, lease_poll=1.0)
    loads = 0
    leader_loading, release = asyncio.Event(), asyncio.Event()

    async def loader(pid: int) -> ProductInventory:
        nonlocal loads
        loads += 1
        leader_loading.set()
        await release.wait()
        return inv(pid, 1)

    first = asyncio.create_task(a.get_or_load(INVENTORY, 88, loader))
    await leader_loading.wait()  # a holds the lease: b must wait for its fill
    second = asyncio.create_task(b.get_or_load(INVENTORY, 88, loader))
    entry = b.keys.entry(View.INVENTORY, 88)
    deadline = asyncio.get_running_loop().time() + 10
    # b ran the acquire script (and did not get the lease: a holds it) before a fills
    while "evalsha" not in await last_commands(topology, entry, b_name):
        assert asyncio.get_running_loop().time() < deadline, "b never tried to take the lease"
        assert not second.done(), await second
        await asyncio.sleep(0.01)
    release.set()
    assert (await first).status == "miss"
    waited = await second
    assert (waited.status, waited.value) == ("hit", inv(88, 1))
    assert loads == 1
    assert b.metrics.stampede_waits.labels("inventory", "lease")._value.get() == 1


async def test_a_fill_that_lost_the_race_with_an_invalidation_is_rejected(
    services: Make,
) -> None:
    reader, pipeline = services(), services()
    loaded, resume = asyncio.Event(), asyncio.Event()

    async def slow_loader(pid: int) -> ProductInventory:
        loaded.set()
        await resume.wait()
        return inv(pid, 1)  # what the database held when the reader looked

    read = asyncio.create_task(reader.get_or_load(INVENTORY, 99, slow_loader))
    await loaded.wait()
    await pipeline.invalidate(View.INVENTORY, 99, version=2)  # v2 committed meanwhile
    resume.set()
    assert (await read).value == inv(99, 1)
    assert await reader.get(INVENTORY, 99) is None  # its fill lost
    assert await pipeline.apply([]) == []
    assert await pipeline.set(INVENTORY, inv(99, 2))  # the new version is accepted
    assert await reader.get(INVENTORY, 99) == inv(99, 2)
