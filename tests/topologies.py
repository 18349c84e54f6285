"""One integration suite over three Redis topologies: standalone, Sentinel, Cluster.

A test (or a module-scoped fixture) that takes the ``topology`` fixture of
``tests/conftest.py`` runs once per topology, as well-kept Redis client libraries run
one suite over several backends. A :class:`Topology` gives the settings that point
ordercache at it (what an operator would set) and a plain client to look at what the
worker wrote. The private servers start once per test session and only when a test
asks for that topology; tests that kill a node start their own (see
:func:`tests.redis_procs.start_cluster`).

Which tests run on all three, and why only those: the behaviour that depends on the
topology is how commands travel (pipelines, scripts, slot routing, Sentinel master
discovery), so the tests that send every kind of Redis traffic through the real
worker run on all three — tests/test_topologies.py (change events, tracking mirror,
reads, stampede, health) and tests/test_cache_topologies.py (fill lease and version
guard across processes). Everything else (the guard's rules, decoding, planning, the
DLQ, settings) does not depend on the topology and runs on standalone only; failover
needs a deployment of its own per kind (tests/test_failover.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from ordercache.local.services import ManagedProcess, start_redis_server
from tests.redis_procs import LocalCluster, start_cluster, start_sentinel

Name = Literal["standalone", "sentinel", "cluster"]
NAMES: tuple[Name, ...] = ("standalone", "sentinel", "cluster")

Inspector = aioredis.Redis | RedisCluster


@dataclass
class Topology:
    """A running Redis deployment of one kind, and how to reach it."""

    name: Name
    #: Settings (names without the ``ORDERCACHE_`` prefix) that point ordercache at it.
    env: dict[str, str]
    #: ``host:port`` of every data node (primaries first), for an inspecting client.
    data_nodes: list[str]
    cluster: LocalCluster | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    def inspector(self) -> Inspector:
        """A plain client on the data (the Sentinel topology's master, every cluster node)."""
        if self.name == "cluster":
            nodes = [ClusterNode(*_hostport(a)) for a in self.data_nodes]
            return RedisCluster(startup_nodes=nodes, socket_timeout=5.0)
        host, port = _hostport(self.data_nodes[0])
        return aioredis.Redis(host=host, port=port, socket_timeout=5.0)

    def cleanup(self) -> None:
        if self.cluster is not None:
            self.cluster.cleanup()
        for proc in reversed(self.processes):
            proc.cleanup()


def _hostport(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


async def scan_keys(client: Inspector, match: str) -> AsyncIterator[bytes]:
    """SCAN (never KEYS) every primary for ``match``."""
    if isinstance(client, RedisCluster):
        for node in client.get_primaries():
            async for key in client.scan_iter(match=match, count=500, target_nodes=node):
                yield key
        return
    async for key in client.scan_iter(match=match, count=500):
        yield key


async def unlink_prefix(client: Inspector, prefix: str) -> None:
    """Remove every key under ``prefix:`` (one UNLINK per key: keys span slots)."""
    keys = [k async for k in scan_keys(client, f"{prefix}:*")]
    for start in range(0, len(keys), 500):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 500]:
            pipe.execute_command("UNLINK", key)
        await pipe.execute()


def standalone(url: str) -> Topology:
    """The machine's shared Redis (never stopped or reconfigured by tests)."""
    hostport = url.removeprefix("redis://").split("/", 1)[0]
    return Topology("standalone", {"redis_url": url}, [hostport])


def start_sentinel_topology() -> Topology:
    """A master, one replica and one Sentinel, all private."""
    master = start_redis_server()
    procs = [master]
    try:
        procs.append(start_redis_server(extra_args=["--replicaof", "127.0.0.1", str(master.port)]))
        sentinel = start_sentinel(master, "mymaster")
        procs.append(sentinel)
    except BaseException:
        for p in reversed(procs):
            p.cleanup()
        raise
    env = {
        "redis_mode": "sentinel",
        "redis_sentinels": sentinel.url,
        "redis_sentinel_master": "mymaster",
    }
    return Topology("sentinel", env, [master.url], processes=procs)


def start_cluster_topology(*, replicas: int = 1) -> Topology:
    """Three primaries (and ``replicas`` replicas each), all private."""
    cluster = start_cluster(3 * (1 + replicas), replicas=replicas)
    env = {"redis_mode": "cluster", "redis_cluster_nodes": cluster.addresses}
    return Topology("cluster", env, [n.url for n in cluster.nodes], cluster=cluster)


def session_topology(name: Name, shared_url: str) -> Iterator[Topology]:
    """Start the topology ``name`` (a generator for a session-scoped fixture)."""
    if name == "standalone":
        yield standalone(shared_url)
        return
    topo = start_sentinel_topology() if name == "sentinel" else start_cluster_topology()
    try:
        yield topo
    finally:
        topo.cleanup()
