"""The Redis connection factory against real servers.

The shared Redis (6379) is only used for a ping and a prefixed key. Everything that
pauses, kills, restarts or reconfigures a server runs on private ``redis-server``
processes (``private_redis`` fixture, :mod:`tests.redis_procs`).
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ordercache.config.settings import Settings
from ordercache.local.services import ManagedProcess, free_port, start_redis_server
from ordercache.redisconn.client import RedisHandle, create_redis
from tests.conftest import REDIS_URL, make_settings, unique
from tests.redis_procs import (
    LocalCluster,
    TlsFiles,
    client_list,
    make_tls_files,
    pause_clients,
    start_cluster,
    start_sentinel,
    start_tls_redis,
    wait_until,
)

APP_ID = "oc-conn-test"


def settings_for(port: int, **env: Any) -> Settings:
    """Discrete-form settings for a private server on ``port``."""
    env.setdefault("app_id", APP_ID)
    return make_settings(redis_host="127.0.0.1", redis_port=port, **env)


def our_connections(port: int) -> list[dict[str, str]]:
    """Connections the factory's client holds on a private server (by client name)."""
    return [c for c in client_list(port) if c["name"] == APP_ID]


@pytest.fixture
async def handles() -> AsyncIterator[list[RedisHandle]]:
    """Handles created by a test; closed afterwards even if the test failed."""
    made: list[RedisHandle] = []
    yield made
    for h in made:
        await h.close()


def make(handles: list[RedisHandle], settings: Settings, **kw: Any) -> RedisHandle:
    h = create_redis(settings, **kw)
    handles.append(h)
    return h


# --------------------------------------------------------------------------- basics
async def test_ping_and_prefixed_key_on_shared_redis(
    handles: list[RedisHandle], key_prefix: str, redis_raw: aioredis.Redis
) -> None:
    h = make(handles, make_settings(redis_url=REDIS_URL, redis_key_prefix=key_prefix))
    assert h.mode == "standalone"
    assert await h.client.ping() is True
    await h.client.set(f"{key_prefix}:k", b"v", ex=60)
    assert await redis_raw.get(f"{key_prefix}:k") == b"v"


async def test_discrete_form_selects_host_port_and_db(
    handles: list[RedisHandle], private_redis: ManagedProcess
) -> None:
    h = make(handles, settings_for(private_redis.port, redis_db=3))
    await h.client.set("k", b"db3")
    db3 = redis.Redis(port=private_redis.port, db=3)
    db0 = redis.Redis(port=private_redis.port, db=0)
    try:
        assert db3.get("k") == b"db3"
        assert db0.get("k") is None
    finally:
        db3.close()
        db0.close()


async def test_url_overrides_discrete_fields(
    handles: list[RedisHandle], private_redis: ManagedProcess
) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{private_redis.port}/2",
        redis_host="127.0.0.1",
        redis_port=free_port(),  # nothing listens there: the URL must win
        app_id=APP_ID,
    )
    h = make(handles, settings)
    await h.client.set("k", b"url")
    raw = redis.Redis(port=private_redis.port, db=2)
    try:
        assert raw.get("k") == b"url"
    finally:
        raw.close()


@pytest.fixture
def password_redis() -> Iterator[ManagedProcess]:
    proc = start_redis_server(extra_args=["--requirepass", "s3cret-pw"])
    yield proc
    proc.cleanup()


@pytest.mark.parametrize("form", ["url", "discrete"])
async def test_password_in_url_and_discrete_form(
    handles: list[RedisHandle], password_redis: ManagedProcess, form: str
) -> None:
    port = password_redis.port
    if form == "url":
        settings = make_settings(redis_url=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    else:
        settings = settings_for(port, redis_password="s3cret-pw")
    h = make(handles, settings)
    assert await h.client.ping() is True
    assert "s3cret-pw" not in repr(h) + repr(h.client) + repr(h.client.connection_pool)


async def test_wrong_password_is_an_authentication_error(
    handles: list[RedisHandle], password_redis: ManagedProcess
) -> None:
    h = make(handles, settings_for(password_redis.port, redis_password="wrong"))
    with pytest.raises(AuthenticationError):
        await h.client.ping()


# --------------------------------------------------------------------------- pool
async def test_sequential_commands_reuse_one_connection(
    handles: list[RedisHandle], private_redis: ManagedProcess
) -> None:
    h = make(handles, settings_for(private_redis.port, redis_max_connections=4))
    for i in range(200):
        await h.client.set(f"k{i}", i)
    conns = our_connections(private_redis.port)
    assert len(conns) == 1
    assert h.pool_stats() == {"in_use": 0, "idle": 1, "max": 4}


async def test_concurrent_commands_stay_within_max_connections_and_reuse_them(
    handles: list[RedisHandle], private_redis: ManagedProcess
) -> None:
    h = make(handles, settings_for(private_redis.port, redis_max_connections=4))

    async def burst() -> None:
        results = await asyncio.gather(*(h.client.incr("counter") for _ in range(300)))
        assert len(results) == 300

    await burst()
    first = {c["id"] for c in our_connections(private_redis.port)}
    assert 1 <= len(first) <= 4
    await burst()
    second = {c["id"] for c in our_connections(private_redis.port)}
    assert second == first  # the same sockets served the second burst
    assert int(await h.client.get("counter") or 0) == 600
    stats = h.pool_stats()
    assert stats["in_use"] == 0
    assert stats["idle"] == len(first)
    assert stats["max"] == 4


# --------------------------------------------------------------------------- failures
async def test_paused_server_times_out_instead_of_hanging(
    handles: list[RedisHandle], private_redis: ManagedProcess
) -> None:
    settings = settings_for(
        private_redis.port,
        redis_read_timeout=0.1,
        redis_write_timeout=0.1,
        redis_connect_timeout=0.1,
        redis_retry_attempts=2,
        redis_retry_backoff_base=0.01,
        redis_retry_backoff_cap=0.02,
    )
    h = make(handles, settings)
    await h.client.set("k", b"v")
    # Without a socket timeout the GET would wait out the pause and succeed.
    pause_clients(private_redis.port, 3000)
    with pytest.raises(RedisTimeoutError):
        await h.client.get("k")


async def test_refused_connection_is_retried_until_the_server_is_up(
    handles: list[RedisHandle],
) -> None:
    port = free_port()
    patient = make(
        handles,
        settings_for(
            port,
            redis_retry_attempts=20,
            redis_retry_backoff_base=0.05,
            redis_retry_backoff_cap=0.5,
        ),
    )
    impatient = make(handles, settings_for(port, redis_retry_attempts=0))
    with pytest.raises(RedisConnectionError):
        await impatient.client.ping()

    ping = asyncio.create_task(patient.client.ping())
    await asyncio.sleep(0.3)
    assert not ping.done(), "the ping should still be retrying"
    server = await asyncio.to_thread(start_redis_server, port=port)
    try:
        assert await ping is True
    finally:
        server.cleanup()


async def test_client_recovers_after_server_restart_on_same_port(
    handles: list[RedisHandle],
) -> None:
    server = start_redis_server()
    port = server.port
    try:
        h = make(handles, settings_for(port, redis_retry_attempts=1))
        await h.client.set("k", b"before")
        server.kill()
        with pytest.raises(RedisConnectionError):
            await h.client.get("k")
        with pytest.raises(RedisConnectionError):
            await h.client.set("k", b"while-down")
        server = await asyncio.to_thread(start_redis_server, port=port)
        # Same handle, no rebuild: the pool drops dead sockets and reconnects.
        assert await h.client.get("k") is None  # non-persistent server came back empty
        await h.client.set("k", b"after")
        assert await h.client.get("k") == b"after"
    finally:
        server.cleanup()


# --------------------------------------------------------------------------- close
def _resource_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message) for w in caught if issubclass(w.category, ResourceWarning | RuntimeWarning)
    ]


async def test_close_releases_every_connection_without_resource_warnings(
    private_redis: ManagedProcess,
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = create_redis(settings_for(private_redis.port, redis_max_connections=8))
        await asyncio.gather(*(h.client.incr("n") for _ in range(50)))
        assert our_connections(private_redis.port)
        await h.close()
        await h.close()  # idempotent
        assert our_connections(private_redis.port) == []
        assert h.pool_stats()["in_use"] == 0
        del h
        gc.collect()
    assert _resource_warnings(caught) == []


async def test_close_ends_in_flight_calls_and_does_not_reconnect(
    private_redis: ManagedProcess,
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = create_redis(settings_for(private_redis.port, redis_read_timeout=30))
        blocked = [asyncio.create_task(h.client.blpop([f"q{i}"], timeout=20)) for i in range(3)]
        while len(our_connections(private_redis.port)) < 3:
            await asyncio.sleep(0.02)
        await h.close()
        results = await asyncio.wait_for(
            asyncio.gather(*blocked, return_exceptions=True), timeout=10
        )
        for r in results:
            assert isinstance(r, RedisConnectionError | asyncio.CancelledError), r
        await asyncio.sleep(0.2)
        assert our_connections(private_redis.port) == []
        del h, blocked, results
        gc.collect()
    assert _resource_warnings(caught) == []


async def test_cancelled_call_then_close_leaves_nothing_behind(
    private_redis: ManagedProcess,
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = create_redis(settings_for(private_redis.port, redis_read_timeout=30))
        task = asyncio.create_task(h.client.blpop(["q"], timeout=20))
        while not our_connections(private_redis.port):
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await h.client.ping() is True  # the pool is still usable
        await h.close()
        assert our_connections(private_redis.port) == []
        del h, task
        gc.collect()
    assert _resource_warnings(caught) == []


# --------------------------------------------------------------------------- sentinel
@pytest.fixture
def sentinel(private_redis: ManagedProcess) -> Iterator[ManagedProcess]:
    proc = start_sentinel(private_redis, "mymaster")
    yield proc
    proc.cleanup()


async def test_sentinel_client_reaches_the_master(
    handles: list[RedisHandle], private_redis: ManagedProcess, sentinel: ManagedProcess
) -> None:
    settings = make_settings(
        redis_mode="sentinel",
        redis_sentinels=f"127.0.0.1:{free_port()},{sentinel.url}",  # first one is down
        redis_sentinel_master="mymaster",
        redis_max_connections=4,
        app_id=APP_ID,
    )
    h = make(handles, settings)
    assert h.mode == "sentinel"
    await h.client.set("via-sentinel", b"yes")
    raw = redis.Redis(port=private_redis.port)
    try:
        assert raw.get("via-sentinel") == b"yes"
    finally:
        raw.close()
    await asyncio.gather(*(h.client.incr("n") for _ in range(100)))
    assert 1 <= len(our_connections(private_redis.port)) <= 4
    stats = h.pool_stats()
    assert stats["in_use"] == 0
    assert 1 <= stats["idle"] <= 4
    assert stats["max"] == 4
    await h.close()
    assert our_connections(private_redis.port) == []


async def test_sentinel_with_unknown_master_fails_cleanly(
    handles: list[RedisHandle], sentinel: ManagedProcess
) -> None:
    from redis.asyncio.sentinel import MasterNotFoundError

    settings = make_settings(
        redis_mode="sentinel", redis_sentinels=sentinel.url, redis_sentinel_master="nosuch"
    )
    h = make(handles, settings)
    with pytest.raises(MasterNotFoundError):
        await h.client.ping()


async def test_sentinel_client_follows_a_failover_within_one_call(
    handles: list[RedisHandle],
) -> None:
    master = start_redis_server()
    replica = start_redis_server(extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    sentinel = start_sentinel(master, "mymaster")
    admin = redis.Redis(port=sentinel.port, decode_responses=True, socket_timeout=2)
    promoted = redis.Redis(port=replica.port, decode_responses=True, socket_timeout=2)
    try:
        h = make(
            handles,
            make_settings(
                redis_mode="sentinel", redis_sentinels=sentinel.url, redis_retry_attempts=3
            ),
        )
        await h.client.set("before", b"1")
        wait_until(lambda: promoted.get("before") == "1", "replica in sync")
        wait_until(lambda: admin.sentinel_slaves("mymaster"), "sentinel knows the replica")

        master.kill()
        wait_until(
            lambda: (
                admin.sentinel_get_master_addr_by_name("mymaster")[1] == replica.port
                and promoted.execute_command("ROLE")[0] == "master"
            ),
            "failover to the replica",
        )
        # The pooled connection still points at the dead master: the command's own
        # retries must ask Sentinel again instead of reconnecting to the old address.
        assert await h.client.set("after", b"2") is True
        assert promoted.get("after") == "2"
    finally:
        admin.close()
        promoted.close()
        sentinel.cleanup()
        replica.cleanup()
        master.cleanup()


# --------------------------------------------------------------------------- cluster
@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = start_cluster(3)
    yield c
    c.cleanup()


@pytest.mark.parametrize("form", ["nodes", "url"])
async def test_cluster_client_spans_slots(
    handles: list[RedisHandle], cluster: LocalCluster, form: str
) -> None:
    if form == "nodes":
        settings = make_settings(
            redis_mode="cluster", redis_cluster_nodes=cluster.addresses, redis_max_connections=4
        )
    else:
        settings = make_settings(
            redis_mode="cluster",
            redis_url=f"redis://{cluster.nodes[1].url}/0",
            redis_max_connections=4,
        )
    h = make(handles, settings)
    assert h.mode == "cluster"
    prefix = unique("c")
    keys = [f"{prefix}:{i}" for i in range(60)]
    await asyncio.gather(*(h.client.set(k, k.encode()) for k in keys))
    assert await asyncio.gather(*(h.client.get(k) for k in keys)) == [k.encode() for k in keys]
    # The keys really are spread over the three masters.
    holders = set()
    for node in cluster.nodes:
        raw = redis.Redis(port=node.port)
        try:
            if raw.dbsize() > 0:
                holders.add(node.port)
        finally:
            raw.close()
    assert len(holders) == 3
    stats = h.pool_stats()
    assert stats["in_use"] == 0
    assert 1 <= stats["idle"] <= stats["max"]
    assert stats["max"] == 4 * 3  # per node
    await h.close()
    for node in cluster.nodes:
        assert client_list(node.port) == []


async def test_cluster_pipelines_wait_for_connections_instead_of_failing(
    handles: list[RedisHandle], cluster: LocalCluster
) -> None:
    settings = make_settings(
        redis_mode="cluster", redis_cluster_nodes=cluster.addresses, redis_max_connections=2
    )
    h = make(handles, settings)
    prefix = unique("p")

    async def batch(n: int) -> list[Any]:
        pipe = h.client.pipeline()
        for i in range(10):
            pipe.set(f"{prefix}:{n}:{i}", n)
        return await pipe.execute()

    results = await asyncio.gather(*(batch(n) for n in range(40)))
    assert all(r == [True] * 10 for r in results)
    values = await asyncio.gather(*(h.client.get(f"{prefix}:{n}:9") for n in range(40)))
    assert values == [str(n).encode() for n in range(40)]
    assert h.pool_stats()["idle"] <= 2 * 3


async def test_cluster_pipeline_follows_a_moved_slot_with_one_connection(
    handles: list[RedisHandle],
) -> None:
    own = start_cluster(3)  # its slot map gets changed: not the shared module cluster
    try:
        settings = make_settings(
            redis_mode="cluster",
            redis_cluster_nodes=own.addresses,
            redis_max_connections=1,
            redis_retry_attempts=0,  # a stalled re-send must fail, not be retried whole
        )
        h = make(handles, settings)
        key = unique("moved")
        await h.client.set(key, b"1")  # the client now caches the slot map
        new_owner = own.move_slot(key_slot(key.encode()))
        # The pipeline goes to the old owner, gets MOVED and re-sends the command on
        # its own while it still holds the only admission.
        pipe = h.client.pipeline()
        pipe.set(key, b"2")
        assert await pipe.execute() == [True]
        raw = redis.Redis(port=new_owner)
        try:
            assert raw.get(key) == b"2"
        finally:
            raw.close()
    finally:
        own.cleanup()


# --------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(tls_files: TlsFiles) -> Iterator[ManagedProcess]:
    proc = start_tls_redis(tls_files)
    yield proc
    proc.cleanup()


@pytest.fixture
def mtls_redis(tls_files: TlsFiles) -> Iterator[ManagedProcess]:
    proc = start_tls_redis(tls_files, require_client_cert=True)
    yield proc
    proc.cleanup()


def tls_env(files: TlsFiles, *, client_cert: bool = False) -> dict[str, Any]:
    env: dict[str, Any] = {"redis_tls_ca_file": files.ca}
    if client_cert:
        env |= {"redis_tls_cert_file": files.client_cert, "redis_tls_key_file": files.client_key}
    return env


@pytest.mark.parametrize("form", ["discrete", "url"])
async def test_tls_with_ca_verification(
    handles: list[RedisHandle], tls_files: TlsFiles, tls_redis: ManagedProcess, form: str
) -> None:
    if form == "discrete":
        settings = settings_for(tls_redis.port, redis_tls=True, **tls_env(tls_files))
    else:
        settings = make_settings(
            redis_url=f"rediss://127.0.0.1:{tls_redis.port}/0", **tls_env(tls_files)
        )
    h = make(handles, settings)
    assert await h.client.ping() is True


async def test_tls_rejects_an_unknown_ca(
    handles: list[RedisHandle], tls_redis: ManagedProcess, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path)  # a different CA
    h = make(
        handles,
        settings_for(tls_redis.port, redis_tls=True, redis_retry_attempts=0, **tls_env(other)),
    )
    with pytest.raises(RedisConnectionError):
        await h.client.ping()


async def test_tls_without_verification_accepts_any_certificate(
    handles: list[RedisHandle], tls_redis: ManagedProcess
) -> None:
    h = make(handles, settings_for(tls_redis.port, redis_tls=True, redis_tls_verify=False))
    assert await h.client.ping() is True


async def test_plain_client_cannot_talk_to_a_tls_port(
    handles: list[RedisHandle], tls_redis: ManagedProcess
) -> None:
    h = make(
        handles,
        settings_for(tls_redis.port, redis_retry_attempts=0, redis_read_timeout=0.5),
    )
    with pytest.raises((RedisConnectionError, RedisTimeoutError)):
        await h.client.ping()


@pytest.mark.parametrize("with_cert", [True, False])
async def test_mutual_tls_needs_the_client_certificate(
    handles: list[RedisHandle], tls_files: TlsFiles, mtls_redis: ManagedProcess, with_cert: bool
) -> None:
    settings = settings_for(
        mtls_redis.port,
        redis_tls=True,
        redis_retry_attempts=0,
        **tls_env(tls_files, client_cert=with_cert),
    )
    h = make(handles, settings)
    if with_cert:
        assert await h.client.ping() is True
    else:
        with pytest.raises(RedisConnectionError):
            await h.client.ping()
