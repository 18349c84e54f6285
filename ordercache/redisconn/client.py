"""Redis connection management: one factory for standalone, Sentinel and Cluster.

Every client gets a bounded connection pool that makes callers wait (up to the
connect timeout) for a free connection instead of failing, the hiredis parser
(redis-py picks it when ``hiredis`` is installed, which our dependency pins),
socket timeouts, retries with exponential backoff and jitter on connection errors
and timeouts, and a health-check interval. :class:`RedisHandle` owns the client
and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from ordercache.config.settings import Settings, parse_hostports
from ordercache.errors import ConfigError

log = logging.getLogger(__name__)

#: The client type the rest of the code sees (a cluster client speaks the same commands).
AnyRedis = aioredis.Redis | RedisCluster

Mode = Literal["standalone", "sentinel", "cluster"]


def _retry(settings: Settings) -> Retry:
    # The asyncio Retry: the synchronous one would hand back the coroutine unawaited,
    # so no failure would ever be retried.
    return Retry(
        ExponentialWithJitterBackoff(
            cap=settings.redis_retry_backoff_cap, base=settings.redis_retry_backoff_base
        ),
        settings.redis_retry_attempts,
        # Socket-level OSErrors reach us as redis ConnectionError / TimeoutError.
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    """Certificate options; apply to a rediss:// URL as well as to ``REDIS_TLS``."""
    if not settings.redis_tls_enabled:
        return {}
    kw: dict[str, Any] = {
        "ssl_cert_reqs": "required" if settings.redis_tls_verify else "none",
        "ssl_check_hostname": settings.redis_tls_verify,
    }
    if settings.redis_tls_ca_file:
        kw["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file:
        kw["ssl_certfile"] = str(settings.redis_tls_cert_file)
    if settings.redis_tls_key_file:
        kw["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return kw


def _no_client_setinfo() -> dict[str, Any]:
    """Connection kwargs that stop redis-py from sending ``CLIENT SETINFO`` on connect.

    The least-privilege ACL (deploy/redis/users.acl) does not grant it: the command
    exists only from Redis 7.2 (an ACL naming it does not load on older servers), and
    a refused SETINFO, though redis-py ignores the error, fills ``ACL LOG`` on every
    connect. ``CLIENT SETNAME`` (the app id) still names the connections.
    """
    try:
        import redis.driver_info  # noqa: F401 - redis-py 7.1+: driver_info replaces lib_name
    except ImportError:  # pragma: no cover - older redis-py
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


def _common_kwargs(settings: Settings) -> dict[str, Any]:
    kw: dict[str, Any] = {
        **_no_client_setinfo(),
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": max(settings.redis_read_timeout, settings.redis_write_timeout),
        "retry": _retry(settings),
        "health_check_interval": settings.redis_health_check_interval,
        "decode_responses": False,
        "client_name": settings.app_id,
        **_tls_kwargs(settings),
    }
    if settings.redis_username:
        kw["username"] = settings.redis_username
    if settings.redis_password is not None:
        kw["password"] = settings.redis_password.get_secret_value()
    return kw


class _FollowMaster(SentinelManagedConnection):
    """Re-resolves the master on every reconnect, including a command's retries.

    redis-py reconnects a dropped connection inside a command's retry loop without
    asking Sentinel again, so after a failover every retry went to the old master
    and the call failed.
    """

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class _FollowMasterSSL(_FollowMaster, SentinelManagedSSLConnection):
    pass


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel-managed pool that waits for a free connection like the standalone one.

    redis-py's own Sentinel pool raises ``MaxConnectionsError`` as soon as all
    connections are busy.
    """


#: Set while the current task holds a cluster admission (nested calls reuse it).
_ADMITTED: ContextVar[bool] = ContextVar("ordercache_cluster_admitted", default=False)


class _GatedCluster(RedisCluster):
    """A cluster client whose callers wait for a free connection instead of failing.

    redis-py's cluster nodes raise ``MaxConnectionsError`` when ``max_connections``
    are busy (and the client then rebuilds its slot map). Every command or pipeline
    holds at most one connection per node, so admitting ``max_connections`` of them
    at a time keeps each node within its limit.
    """

    def __init__(self, *, pool_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._gate = asyncio.Semaphore(max_connections)
        self._pool_timeout = pool_timeout

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold one admission; a pipeline re-sending redirected commands nests freely."""
        if _ADMITTED.get():
            yield
            return
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._gate.acquire()
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            _ADMITTED.reset(token)
            self._gate.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.admitted():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises, as redis-py does
        return _GatedPipeline(self, transaction)  # type: ignore[abstract]  # stub quirk


class _GatedPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, _GatedCluster)
        async with client.admitted():
            return await super().execute(raise_on_error, allow_redirections)


@dataclass
class RedisHandle:
    """An asyncio Redis client plus what it takes to observe and close it.

    After :meth:`close` the handle must not be used again.
    """

    client: AnyRedis
    mode: Mode
    max_connections: int
    sentinel: Sentinel | None = None
    _closed: bool = field(default=False, repr=False)

    def _connections(self) -> tuple[list[AbstractConnection], list[AbstractConnection]]:
        """(in use, idle) connections of every pool the client owns."""
        if isinstance(self.client, RedisCluster):
            in_use: list[AbstractConnection] = []
            idle: list[AbstractConnection] = []
            for node in self.client.get_nodes():
                free = list(node._free)
                idle += free
                in_use += [c for c in node._connections if c not in free]
            return in_use, idle
        pool = self.client.connection_pool
        return list(pool._in_use_connections), list(pool._available_connections)

    def pool_stats(self) -> dict[str, int]:
        """Connections in use, idle and the most the pool(s) may open.

        In cluster mode the limit applies per node, so ``max`` is the per-node limit
        times the number of known nodes.
        """
        in_use, idle = self._connections()
        limit = self.max_connections
        if isinstance(self.client, RedisCluster):
            limit *= max(1, len(self.client.get_nodes()))
        return {"in_use": len(in_use), "idle": len(idle), "max": limit}

    async def close(self) -> None:
        """Close the client and its pools; idempotent.

        Calls still in flight end with a ``ConnectionError`` instead of reconnecting:
        their retry budget is set to zero before their sockets are closed.
        """
        if self._closed:
            return
        self._closed = True
        in_use, idle = self._connections()
        retries = [c.retry for c in in_use + idle]
        if isinstance(self.client, RedisCluster):
            _no_more_retries(retries)
            await self.client.aclose()
        else:
            pool = self.client.connection_pool
            # Callers still waiting for a connection would copy the pool's policy.
            _no_more_retries([*retries, pool.connection_kwargs.get("retry")])
            await self.client.aclose()
            # A pool passed in explicitly is not closed by the client.
            await pool.disconnect(inuse_connections=True)
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                await s.aclose()


def _no_more_retries(policies: Iterable[object]) -> None:
    for policy in policies:
        if isinstance(policy, Retry):
            policy.update_retries(0)


def create_redis(settings: Settings) -> RedisHandle:
    """Build the asyncio client the settings describe. No I/O happens here."""
    if not HIREDIS_AVAILABLE:  # pragma: no cover - hiredis is a hard dependency
        log.warning("hiredis is not installed; using the pure-Python parser")
    kw = _common_kwargs(settings)
    mode: Mode = settings.redis_mode
    if mode == "cluster":
        return _create_cluster(settings, kw)
    if mode == "sentinel":
        return _create_sentinel(settings, kw)
    raw_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    pool: aioredis.BlockingConnectionPool
    if raw_url is not None:
        # The URL's scheme picks the connection class (rediss:// means TLS).
        pool = aioredis.BlockingConnectionPool.from_url(
            raw_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_connect_timeout,
            **kw,
        )
    else:
        if settings.redis_host is None:
            raise ConfigError(
                "ORDERCACHE_REDIS_URL or ORDERCACHE_REDIS_HOST: required outside the local default"
            )
        conn_cls: type[aioredis.Connection] = (
            aioredis.SSLConnection if settings.redis_tls else aioredis.Connection
        )
        pool = aioredis.BlockingConnectionPool(
            connection_class=conn_cls,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_connect_timeout,
            host=settings.redis_host,
            port=settings.redis_port,
            db=settings.redis_db,
            **kw,
        )
    client = aioredis.Redis(connection_pool=pool)
    return RedisHandle(client=client, mode="standalone", max_connections=pool.max_connections)


#: Connections of the health probe's own client: readiness must not queue behind
#: the read path's pool when it is exhausted (one probe at a time, plus a spare).
HEALTH_CONNECTIONS = 2


def create_health_redis(settings: Settings) -> RedisHandle:
    """A small client of its own for the readiness probe and INFO (no I/O here)."""
    return create_redis(settings.model_copy(update={"redis_max_connections": HEALTH_CONNECTIONS}))


def _create_sentinel(settings: Settings, kw: dict[str, Any]) -> RedisHandle:
    assert settings.redis_sentinels is not None  # checked by Settings
    addrs = parse_hostports(settings.redis_sentinels, "ORDERCACHE_REDIS_SENTINELS")
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_read_timeout,
    }
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    conn_kw = dict(kw)
    conn_kw["connection_class"] = _FollowMasterSSL if settings.redis_tls else _FollowMaster
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addrs, sentinel_kwargs=sentinel_kwargs, db=settings.redis_db, **conn_kw
    )
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_connect_timeout,
    )
    return RedisHandle(
        client=client,
        mode="sentinel",
        max_connections=settings.redis_max_connections,
        sentinel=sentinel,
    )


def _create_cluster(settings: Settings, kw: dict[str, Any]) -> RedisHandle:
    ckw = dict(kw)
    if settings.redis_tls:
        ckw["ssl"] = True
    raw_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    client: RedisCluster
    common = {
        "max_connections": settings.redis_max_connections,
        "pool_timeout": settings.redis_connect_timeout,
        **ckw,
    }
    if settings.redis_cluster_nodes:
        nodes = [
            ClusterNode(h, p)
            for h, p in parse_hostports(
                settings.redis_cluster_nodes, "ORDERCACHE_REDIS_CLUSTER_NODES"
            )
        ]
        client = _GatedCluster(startup_nodes=nodes, **common)
    else:
        assert raw_url is not None  # checked by Settings
        client = _GatedCluster.from_url(raw_url, **common)
    return RedisHandle(
        client=client, mode="cluster", max_connections=settings.redis_max_connections
    )
