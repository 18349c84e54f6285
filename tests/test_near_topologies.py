"""The near-cache on each Redis topology, and on a cluster whose primaries change.

On standalone and Sentinel one listening connection hears every change; on a
cluster a node broadcasts only the changes of the keys it holds, so the listener
holds one connection per primary (ordercache/cache/tracking.py). What must hold:

* on every topology (tests/topologies.py): entries on every primary are served
  from the near-cache, and another process's invalidations remove them;
* a cluster failover (the old primary lives on as a replica, so no connection
  breaks): the near-cache goes dark, listens to the promoted primary, and hears its
  writes;
* a primary added to the cluster and given a slot by resharding: the listener
  subscribes to it, and writes to the moved keys on it reach the near-cache;
* a read that followed ``MOVED`` to a primary not (yet) listened to is not kept.

The cluster tests change their cluster's membership: each starts its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.near import NearCache, NearConfig
from ordercache.cache.service import CacheService, build_cache_service
from ordercache.cache.tracking import TrackingListener
from ordercache.cache.views import INVENTORY, View
from ordercache.models.views import ProductInventory
from ordercache.redisconn.client import RedisHandle, create_redis
from tests.conftest import make_settings, unique
from tests.redis_procs import LocalCluster, start_cluster, wait_until
from tests.topologies import Topology, unlink_prefix

NOW = datetime(2026, 3, 1, tzinfo=UTC)
#: Generous: a slow PING answer (both cores busy) would flush the near-cache, and the
#: tests below assert that entries went by invalidation, not by a flush.
PING_TIMEOUT = 5.0


def inv(pid: int, version: int) -> ProductInventory:
    return ProductInventory(
        product_id=pid, sku="S", available=version, reserved=0, version=version, updated_at=NOW
    )


@dataclass
class Side:
    """One process's view of the cache: its client, its service, its near-cache."""

    handle: RedisHandle
    cache: CacheService
    near: NearCache | None


def side(env: dict[str, str], prefix: str, *, near: bool) -> Side:
    settings = make_settings(
        **env, redis_key_prefix=prefix, kafka_broker="127.0.0.1:9", app_id=prefix
    )
    handle = create_redis(settings)
    l1 = NearCache(NearConfig(ttl=60.0)) if near else None
    cache = build_cache_service(
        handle.client, KeySpace(prefix), TtlPolicy(jitter=0.0),
        CacheMetrics.create(CollectorRegistry()), timeout=2.0, near=l1,
    )  # fmt: skip
    return Side(handle, cache, l1)


async def until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout}s"
        await asyncio.sleep(0.01)


async def fill(reader: Side, pid: int, version: int) -> str:
    """Read until the entry is in the reader's near-cache (its own fill's writes are
    broadcast too and remove the first copy); return the key."""

    async def load(_: int) -> ProductInventory:
        return inv(pid, version)

    key = reader.cache.keys.entry(View.INVENTORY, pid)
    assert reader.near is not None
    deadline = time.monotonic() + 20
    while key not in reader.near:
        assert time.monotonic() < deadline, f"{key} never kept in the near-cache"
        assert (await reader.cache.get_or_load(INVENTORY, pid, load)).value == inv(pid, version)
        await asyncio.sleep(0.01)
    return key


async def read(reader: Side, pid: int, version_in_db: int) -> ProductInventory | None:
    async def load(_: int) -> ProductInventory:
        return inv(pid, version_in_db)

    return (await reader.cache.get_or_load(INVENTORY, pid, load)).value


# ------------------------------------------------------------------ every topology
@pytest.fixture
async def sides(topology: Topology) -> AsyncIterator[tuple[Side, Side, TrackingListener]]:
    prefix = unique("nt")
    reader, writer = side(topology.env, prefix, near=True), side(topology.env, prefix, near=False)
    assert reader.near is not None
    listener = TrackingListener(
        reader.handle.client, reader.near, prefix, ping_interval=0.2, ping_timeout=PING_TIMEOUT
    )
    await listener.start()
    try:
        assert await listener.wait_live(20), "near-cache never went live"
        yield reader, writer, listener
    finally:
        await listener.stop()
        for s in (reader, writer):
            await s.handle.close()
        inspector = topology.inspector()
        await unlink_prefix(inspector, prefix)
        await inspector.aclose()


async def test_near_cache_serves_and_hears_every_primary_on_each_topology(
    sides: tuple[Side, Side, TrackingListener], topology: Topology
) -> None:
    reader, writer, listener = sides
    near = reader.near
    assert near is not None
    pids = list(range(1, 31))
    keys = [await fill(reader, pid, 1) for pid in pids]
    client = reader.handle.client
    if isinstance(client, RedisCluster):
        owners = {client.get_node_from_key(k).name for k in keys}  # type: ignore[union-attr]
        assert len(owners) == 3 and owners == set(listener.client_ids)
    else:
        assert len(listener.client_ids) == 1
    # served from the near-cache: no Redis read (every entry is in it and it is live)
    assert all(k in near for k in keys) and near.live
    hits = reader.cache.metrics.near_hits
    before = hits.total("inventory")
    assert [await read(reader, pid, 1) for pid in pids] == [inv(pid, 1) for pid in pids]
    assert hits.total("inventory") - before == len(pids)
    # another process invalidates each one, wherever it lives
    flushes = near.flushes
    for pid in pids:
        await writer.cache.invalidate(View.INVENTORY, pid, version=2)
    await until(lambda: not any(k in near for k in keys), "every invalidation heard")
    assert near.flushes == flushes  # each went by its own invalidation
    assert [await read(reader, pid, 2) for pid in pids] == [inv(pid, 2) for pid in pids]


# ------------------------------------------------------------------ a changing cluster
@dataclass
class ClusterSides:
    cluster: LocalCluster
    reader: Side
    writer: Side
    listener: TrackingListener


async def cluster_sides(
    cluster: LocalCluster, *, ping_interval: float
) -> AsyncIterator[ClusterSides]:
    env = {"redis_mode": "cluster", "redis_cluster_nodes": cluster.addresses}
    prefix = unique("nc")
    reader, writer = side(env, prefix, near=True), side(env, prefix, near=False)
    assert reader.near is not None
    listener = TrackingListener(
        reader.handle.client,
        reader.near,
        prefix,
        ping_interval=ping_interval,
        ping_timeout=PING_TIMEOUT,
    )
    await listener.start()
    try:
        assert await listener.wait_live(20), "near-cache never went live"
        yield ClusterSides(cluster, reader, writer, listener)
    finally:
        await listener.stop()
        for s in (reader, writer):
            await s.handle.close()
        cluster.cleanup()


@pytest.fixture
async def with_replicas() -> AsyncIterator[ClusterSides]:
    async for sides in cluster_sides(start_cluster(6, replicas=1), ping_interval=0.2):
        yield sides


@pytest.fixture
async def three_primaries() -> AsyncIterator[ClusterSides]:
    async for sides in cluster_sides(start_cluster(3), ping_interval=0.2):
        yield sides


@pytest.fixture
async def never_rechecked() -> AsyncIterator[ClusterSides]:
    """The listener never re-reads the primaries during the test."""
    async for sides in cluster_sides(start_cluster(3), ping_interval=3600):
        yield sides


async def writer_invalidation_heard(c: ClusterSides, key: str, pid: int) -> None:
    """The writer invalidates ``pid`` (kept in the reader's near-cache as ``key``) at
    version 2: the copy leaves by that invalidation, not a flush, and the next read
    answers version 2."""
    near = c.reader.near
    assert near is not None and key in near
    flushes = near.flushes
    await c.writer.cache.invalidate(View.INVENTORY, pid, version=2)
    await until(lambda: key not in near, f"the invalidation of {key} heard")
    assert near.flushes == flushes  # by the invalidation, not a flush
    assert await read(c.reader, pid, 2) == inv(pid, 2)


async def test_a_cluster_failover_moves_the_listener_to_the_promoted_primary(
    with_replicas: ClusterSides,
) -> None:
    c = with_replicas
    near = c.reader.near
    assert near is not None
    key = await fill(c.reader, 7, 1)
    old = c.cluster.primary_of(key)
    replica = next(
        n for n in c.cluster.nodes if n.port != old.port and _replica_of(n.port) == old.port
    )
    flushes = near.flushes
    # a manual failover: the old primary stays up as a replica; no connection breaks
    promote = redis.Redis(port=replica.port, socket_timeout=5)
    try:
        promote.execute_command("CLUSTER FAILOVER")
    finally:
        promote.close()
    wait_until(lambda: c.cluster.role(old) == "slave", f"{old.url} demoted", timeout=30)
    await until(lambda: near.flushes > flushes, "near-cache went dark")
    # (nodes may briefly disagree on the primaries: wait for the settled set)
    await until(
        lambda: (
            near.live
            and replica.url in c.listener.client_ids
            and old.url not in c.listener.client_ids
        ),
        "listening to the promoted primary and no longer to the demoted one",
    )
    assert len(c.listener.client_ids) == 3
    # the promoted primary's writes now reach the near-cache
    key = await fill(c.reader, 7, 1)
    await writer_invalidation_heard(c, key, 7)


async def test_a_primary_added_by_resharding_is_listened_to(
    three_primaries: ClusterSides,
) -> None:
    c = three_primaries
    near = c.reader.near
    client = c.reader.handle.client
    assert near is not None and isinstance(client, RedisCluster)
    key = await fill(c.reader, 8, 1)
    added = await asyncio.to_thread(c.cluster.add_primary)
    await until(
        lambda: near.live and added.url in c.listener.client_ids, "listening to the new primary"
    )
    assert len(c.listener.client_ids) == 4
    await asyncio.to_thread(c.cluster.move_slot, client.keyslot(key), added.port)
    # the read follows MOVED to the new primary, and the copy is kept: it is heard
    key = await fill(c.reader, 8, 1)
    assert client.get_node_from_key(key).name == added.url  # type: ignore[union-attr]
    await writer_invalidation_heard(c, key, 8)


async def test_a_read_served_by_a_primary_not_listened_to_is_not_kept(
    never_rechecked: ClusterSides,
) -> None:
    c = never_rechecked
    near = c.reader.near
    client = c.reader.handle.client
    assert near is not None and isinstance(client, RedisCluster)
    key = await fill(c.reader, 9, 1)
    flushes = near.flushes
    added = await asyncio.to_thread(c.cluster.add_primary)
    await asyncio.to_thread(c.cluster.move_slot, client.keyslot(key), added.port)
    # the migration deleted it on the old owner, which is listened to
    await until(lambda: key not in near, "the migration's delete heard")
    assert near.flushes == flushes
    assert near.live and added.url not in c.listener.client_ids
    for _ in range(5):
        assert await read(c.reader, 9, 1) == inv(9, 1)
    assert client.get_node_from_key(key).name == added.url  # type: ignore[union-attr]
    assert key not in near  # served by Redis each time, never kept
    # a key on a listened primary is still kept
    other = next(p for p in range(10, 200) if _owner(c, p) != added.url)
    await fill(c.reader, other, 1)


def _owner(c: ClusterSides, pid: int) -> str:
    client = c.reader.handle.client
    assert isinstance(client, RedisCluster)
    node = client.get_node_from_key(c.reader.cache.keys.entry(View.INVENTORY, pid))
    assert node is not None
    return str(node.name)


def _replica_of(port: int) -> int | None:
    """The port of the primary ``port`` replicates, None for a primary."""
    client = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
    try:
        info = client.info("replication")
    finally:
        client.close()
    return int(info["master_port"]) if info.get("role") == "slave" else None
