"""Redis health probe and INFO figures against real redis-servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from ordercache.cache.keys import KeySpace
from ordercache.health.redis_info import (
    RedisInfo,
    RedisMonitor,
    fetch_info,
    parse_info,
    probe_redis,
)
from ordercache.local.services import ManagedProcess, start_redis_server


def client_for(proc: ManagedProcess) -> aioredis.Redis:
    # No retries: a dead server must fail at once.
    return aioredis.Redis.from_url(
        f"redis://{proc.url}/0", socket_timeout=0.5, socket_connect_timeout=0.5, retry=None
    )


@pytest.fixture
def small_redis() -> Iterator[ManagedProcess]:
    """A private redis-server with a 4 MB maxmemory and LRU eviction."""
    proc = start_redis_server(
        extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]
    )
    yield proc
    proc.cleanup()


@pytest.fixture
async def private_client(private_redis: ManagedProcess) -> AsyncIterator[aioredis.Redis]:
    client = client_for(private_redis)
    yield client
    await client.aclose()


# --------------------------------------------------------------------------- parse_info (pure)
def test_parse_info_one_node() -> None:
    raw = {
        "run_id": "abc",
        "used_memory": 1_000_000,
        "maxmemory": 4_000_000,
        "connected_clients": 3,
        "evicted_keys": 7,
        "keyspace_hits": 10,
        "keyspace_misses": "5",
        "db0": {"keys": 4, "expires": 1},
        "db3": {"keys": 6, "expires": 0},
        "dbx": {"keys": 100},
    }
    info = parse_info(raw)
    assert info == RedisInfo(1_000_000, 4_000_000, 3, 7, 10, 5, 10, "abc")
    assert info.memory_ratio == 0.25


def test_parse_info_sums_cluster_nodes() -> None:
    node = {"used_memory": 100, "maxmemory": 1000, "connected_clients": 2, "run_id": "n"}
    info = parse_info({"127.0.0.1:7000": node, "127.0.0.1:7001": {**node, "run_id": "m"}})
    assert (info.used_memory, info.maxmemory, info.connected_clients) == (200, 2000, 4)
    assert info.run_id == "m,n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [({}, RedisInfo()), ({"used_memory": "n/a", "maxmemory": None}, RedisInfo())],
)
def test_parse_info_tolerates_missing_and_junk(raw: dict[str, object], expected: RedisInfo) -> None:
    assert parse_info(raw) == expected
    assert expected.memory_ratio is None


# --------------------------------------------------------------------------- probe
async def test_probe_ok_and_leaves_no_key(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    key = KeySpace(key_prefix).health("node-a")
    result = await probe_redis(redis_raw, key, timeout=1.0)
    assert result.ok, result.error
    assert result.error is None
    assert result.latency_seconds > 0
    assert await redis_raw.exists(key) == 0


async def test_probe_of_a_dead_server_is_down_not_an_exception(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    assert (await probe_redis(private_client, "oc:health:x")).ok
    private_redis.kill()
    result = await probe_redis(private_client, "oc:health:x", timeout=1.0)
    assert not result.ok
    assert result.error in {"ConnectionError", "TimeoutError", "timeout"}


async def test_probe_fails_on_a_read_only_replica(private_redis: ManagedProcess) -> None:
    """PING alone would pass; the write round trip catches a server that cannot write."""
    replica = start_redis_server(extra_args=["--replicaof", "127.0.0.1", str(private_redis.port)])
    client = client_for(replica)
    try:
        assert await client.ping()
        result = await probe_redis(client, "oc:health:replica", timeout=1.0)
        assert not result.ok
        assert result.error == "ReadOnlyError"
    finally:
        await client.aclose()
        replica.cleanup()


async def test_probe_respects_its_timeout(private_redis: ManagedProcess) -> None:
    """A hung server (SIGSTOP) is bounded by the probe's budget, not the socket's."""
    import os
    import signal

    client = aioredis.Redis.from_url(f"redis://{private_redis.url}/0", retry=None)
    try:
        assert await client.ping()
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            result = await probe_redis(client, "oc:health:hung", timeout=0.3)
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        assert not result.ok
        assert result.error == "timeout"
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- INFO
async def test_fetch_info_reads_the_server(small_redis: ManagedProcess) -> None:
    client = client_for(small_redis)
    try:
        info = await fetch_info(client, timeout=1.0)
        assert info.maxmemory == 4 * 1024 * 1024
        assert 0 < info.used_memory < info.maxmemory
        assert info.memory_ratio is not None and 0 < info.memory_ratio < 1
        assert info.connected_clients >= 1
        assert info.run_id

        await client.set("k", "v")
        await client.get("k")
        await client.get("absent")
        after = await fetch_info(client, timeout=1.0)
        assert after.keyspace_hits == info.keyspace_hits + 1
        assert after.keyspace_misses == info.keyspace_misses + 1
        assert after.keys == info.keys + 1

        # Overfill the 4 MB: LRU eviction shows in evicted_keys.
        blob = b"x" * 20_000
        for start in range(0, 400, 50):
            pipe = client.pipeline(transaction=False)
            for i in range(start, start + 50):
                pipe.set(f"fill:{i}", blob)
            await pipe.execute()
        full = await fetch_info(client, timeout=1.0)
        assert full.evicted_keys > 0
        assert full.used_memory <= full.maxmemory * 1.1
    finally:
        await client.aclose()


async def test_monitor_marks_down_and_keeps_last_figures(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    mon = RedisMonitor(private_client, timeout=0.5)
    assert not mon.up and mon.refreshed_at == 0.0
    assert await mon.refresh()
    assert mon.up and mon.last_error is None
    seen = mon.info
    assert seen.used_memory > 0
    private_redis.kill()
    assert not await mon.refresh()
    assert not mon.up
    assert mon.last_error in {"ConnectionError", "TimeoutError", "timeout"}
    assert mon.info == seen
