"""INFO figures behind the Redis capacity, replication and persistence alerts.

Pure table tests of the parsing, then real servers: a primary with a replica (the
link seen from both sides, the replica's link breaking when the primary dies), a
failing RDB save, maxclients and refused connections, and the collector's series.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError

from ordercache.health.redis_info import RedisMonitor, fetch_info, parse_info
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.redisconn.client import RedisHandle
from ordercache.web.metrics import RedisCollector


def _client(proc: ManagedProcess) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        f"redis://{proc.url}/0", socket_timeout=1, socket_connect_timeout=1, retry=None
    )


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        # a primary with one online replica 3 s behind and one still syncing
        (
            {
                "role": "master",
                "connected_slaves": 2,
                "slave0": {"ip": "a", "port": 1, "state": "online", "offset": 5, "lag": 3},
                "slave1": {"ip": "b", "port": 2, "state": "wait_bgsave", "offset": 0, "lag": 0},
            },
            {"connected_replicas": 2, "replication_link_up": False, "replication_lag_seconds": 3},
        ),
        ({"role": "master", "connected_slaves": 0}, {"replication_link_up": True}),
        # a replica whose link is down, last I/O 42 s ago
        (
            {"role": "slave", "master_link_status": "down", "master_last_io_seconds_ago": 42},
            {"replication_link_up": False, "replication_lag_seconds": 42},
        ),
        (
            {
                "rdb_last_bgsave_status": "err",
                "aof_last_write_status": "ok",
                "maxclients": 10000,
                "rejected_connections": 7,
            },
            {"rdb_ok": False, "aof_ok": True, "maxclients": 10000, "rejected_connections": 7},
        ),
        # a cluster: one node's failure shows; counters add up
        (
            {
                "n1:1": {
                    "maxclients": 100,
                    "rejected_connections": 1,
                    "aof_last_write_status": "ok",
                },
                "n2:2": {
                    "maxclients": 100,
                    "rejected_connections": 2,
                    "aof_last_write_status": "err",
                },
            },
            {"maxclients": 200, "rejected_connections": 3, "aof_ok": False},
        ),
    ],
)
def test_parse_info_capacity_replication_persistence(
    raw: dict[str, Any], expect: dict[str, Any]
) -> None:
    info = parse_info(raw)
    assert {k: getattr(info, k) for k in expect} == expect


@pytest.fixture
def pair() -> Iterator[tuple[ManagedProcess, ManagedProcess]]:
    primary = start_redis_server()
    replica = start_redis_server(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    yield primary, replica
    replica.cleanup()
    primary.cleanup()


async def test_replication_link_seen_from_both_sides(
    pair: tuple[ManagedProcess, ManagedProcess],
) -> None:
    primary, replica = pair
    p, r = _client(primary), _client(replica)
    try:

        async def linked() -> bool:
            info = await fetch_info(p, timeout=1)
            return info.connected_replicas == 1 and info.replication_link_up

        await _until(linked)
        assert (await fetch_info(r, timeout=1)).replication_link_up
        primary.kill()

        async def broken() -> bool:
            return not (await fetch_info(r, timeout=1)).replication_link_up

        await _until(broken)
    finally:
        await p.aclose()
        await r.aclose()


async def test_a_stopped_replica_is_no_broken_link_only_a_lower_count(
    pair: tuple[ManagedProcess, ManagedProcess],
) -> None:
    # Why OrdercacheRedisReplicaLost exists: the primary forgets a replica that is
    # gone, so its link is never reported broken; only connected_replicas drops.
    primary, replica = pair
    p = _client(primary)
    try:

        async def linked() -> bool:
            info = await fetch_info(p, timeout=1)
            return info.connected_replicas == 1 and info.replication_link_up

        await _until(linked)
        replica.kill()

        async def forgotten() -> bool:
            return (await fetch_info(p, timeout=1)).connected_replicas == 0

        await _until(forgotten)
        assert (await fetch_info(p, timeout=1)).replication_link_up
    finally:
        await p.aclose()


async def test_failed_rdb_save_and_refused_connections() -> None:
    gone = Path(tempfile.mkdtemp(prefix="oc-rdb-"))
    proc = start_redis_server(extra_args=["--maxclients", "3", "--enable-protected-configs", "yes"])
    c = _client(proc)
    extra: list[aioredis.Redis] = []
    try:
        info = await fetch_info(c, timeout=1)
        assert (info.maxclients, info.rdb_ok, info.rejected_connections) == (3, True, 0)
        await c.config_set("dir", str(gone))
        shutil.rmtree(gone)  # the save cannot create its file now
        await c.bgsave()

        async def failed() -> bool:
            return not (await fetch_info(c, timeout=1)).rdb_ok

        await _until(failed)
        for _ in range(4):  # past maxclients: the server refuses (after accepting)
            extra_client = _client(proc)
            extra.append(extra_client)
            with contextlib.suppress(RedisConnectionError):
                await extra_client.ping()
        assert (await fetch_info(c, timeout=1)).rejected_connections >= 1

        monitor = RedisMonitor(c)
        assert await monitor.refresh()
        registry = CollectorRegistry()
        registry.register(
            RedisCollector(RedisHandle(client=c, mode="standalone", max_connections=1), monitor)
        )
        text = generate_latest(registry).decode()
        assert "ordercache_redis_maxclients 3.0" in text
        assert 'ordercache_redis_persistence_ok{kind="rdb"} 0.0' in text
        assert 'ordercache_redis_persistence_ok{kind="aof"} 1.0' in text
        assert "ordercache_redis_replication_link_up 1.0" in text
        assert "ordercache_redis_rejected_connections_total" in text
    finally:
        for x in extra:
            await x.aclose()
        await c.aclose()
        proc.cleanup()
        shutil.rmtree(gone, ignore_errors=True)
