"""The cache service's batched scripts on a real Redis Cluster.

redis-py's cluster pipeline refuses its ``evalsha()`` method; the backend queues raw
``EVALSHA`` commands, which the pipeline routes by their first key's slot, groups per
node and sends to the nodes concurrently. These tests pin what that must give:

* one ``apply`` whose operations span every primary, with exact per-operation results
  in call order;
* a primary that forgot the scripts (restart, failover) answers NOSCRIPT: the scripts
  are loaded on every primary and the batch is replayed (idempotent);
* a slot that moved since the client read the slot map (resharding) is followed
  (MOVED: the command is re-sent to the new owner);
* the failover re-apply's identity covers every primary.

A private 3-primary cluster of this module (its slot map gets changed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from ordercache.cache.backend import ALL_SCRIPTS
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.ops import CacheOp, Invalidate, Refresh
from ordercache.cache.service import CacheService, build_cache_service
from ordercache.cache.views import INVENTORY, View
from ordercache.models.views import ProductInventory
from ordercache.redisconn.client import RedisHandle, create_redis
from tests.conftest import make_settings, unique
from tests.redis_procs import LocalCluster, start_cluster

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = start_cluster(3)
    yield c
    c.cleanup()


@pytest.fixture
async def handle(cluster: LocalCluster) -> AsyncIterator[RedisHandle]:
    h = create_redis(
        make_settings(
            redis_mode="cluster", redis_cluster_nodes=cluster.addresses, kafka_broker="127.0.0.1:9"
        )
    )
    yield h
    await h.close()


@pytest.fixture
def cache(handle: RedisHandle) -> CacheService:
    return build_cache_service(
        handle.client, KeySpace(unique("cc")), TtlPolicy(jitter=0.0),
        CacheMetrics.create(CollectorRegistry()), timeout=2.0,
    )  # fmt: skip


def inv(pid: int, version: int, available: int = 1) -> ProductInventory:
    return ProductInventory(
        product_id=pid, sku="S", available=available, reserved=0, version=version, updated_at=NOW
    )


def primaries(cluster: LocalCluster) -> list[redis.Redis]:
    out = []
    for node in cluster.nodes:
        client = redis.Redis(port=node.port, socket_timeout=5)
        if client.execute_command("ROLE")[0] == b"master":
            out.append(client)
        else:
            client.close()
    return out


async def test_one_apply_spans_every_primary_with_exact_results_in_order(
    cache: CacheService, handle: RedisHandle
) -> None:
    ids = range(1, 301)
    assert await cache.set_many(INVENTORY, [inv(i, 5) for i in ids]) == 300
    client = handle.client
    assert isinstance(client, RedisCluster)
    owners = {client.get_node_from_key(cache.keys.entry(View.INVENTORY, i)).name for i in ids}
    assert len(owners) == 3

    ops: list[CacheOp] = []
    expected: list[int] = []
    for i in ids:
        kind = i % 4
        if kind == 0:
            ops.append(Invalidate(View.INVENTORY, i, 4))  # older than cached: kept
            expected.append(0)
        elif kind == 1:
            ops.append(Invalidate(View.INVENTORY, i, 6))  # newer: removed, tombstoned
            expected.append(1)
        elif kind == 2:
            ops.append(Refresh(View.INVENTORY, i, 7, inv(i, 7, available=70)))  # replaced
            expected.append(1)
        else:
            ops.append(Refresh(View.INVENTORY, i, 3, inv(i, 3)))  # older: rejected
            expected.append(0)
    assert await cache.apply(ops) == expected

    cached = await cache.get_many(INVENTORY, ids)  # MGET per slot across the nodes
    for i in ids:
        kind = i % 4
        if kind == 1:
            assert i not in cached
            assert await client.exists(cache.keys.guard(View.INVENTORY, i)) == 1
        else:
            assert cached[i].version == (7 if kind == 2 else 5)


async def test_a_primary_that_forgot_the_scripts_gets_them_and_the_batch_replays(
    cache: CacheService, cluster: LocalCluster
) -> None:
    ids = range(1, 61)
    await cache.set_many(INVENTORY, [inv(i, 1) for i in ids])
    nodes = primaries(cluster)
    try:
        nodes[1].script_flush()  # as a restarted or promoted primary would be
        results = await cache.apply([Invalidate(View.INVENTORY, i, 2) for i in ids])
        assert results == [1] * len(ids)
        assert await cache.get_many(INVENTORY, ids) == {}
        for node in nodes:
            assert all(node.script_exists(*(s.sha for s in ALL_SCRIPTS)))
    finally:
        for node in nodes:
            node.close()


async def test_apply_follows_a_slot_that_moved_since_the_slot_map_was_read(
    cache: CacheService, handle: RedisHandle, cluster: LocalCluster
) -> None:
    pid = 424_242
    await cache.set(INVENTORY, inv(pid, 1))  # the client caches the slot map
    client = handle.client
    assert isinstance(client, RedisCluster)
    entry = cache.keys.entry(View.INVENTORY, pid)
    new_owner = cluster.move_slot(client.keyslot(entry))
    # the batch goes to the old owner, meets MOVED, and is re-sent to the new one
    others = [Invalidate(View.INVENTORY, i, 1) for i in range(1, 20)]
    assert await cache.apply([*others, Invalidate(View.INVENTORY, pid, 2)]) == [0] * 19 + [1]
    raw = redis.Redis(port=new_owner)
    try:
        assert raw.exists(entry) == 0
        assert raw.exists(cache.keys.guard(View.INVENTORY, pid)) == 1
    finally:
        raw.close()


async def test_the_failover_identity_covers_every_primary(
    cache: CacheService, cluster: LocalCluster
) -> None:
    identity = await cache.server_identity()
    assert identity is not None
    nodes = primaries(cluster)
    try:
        run_ids = sorted(n.info("server")["run_id"] for n in nodes)
    finally:
        for node in nodes:
            node.close()
    assert identity.decode().split(",") == run_ids
    assert len(run_ids) == 3
