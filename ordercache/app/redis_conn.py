"""Redis connection management: one factory for standalone, Sentinel and Cluster.

Every client gets a bounded connection pool, the hiredis parser (redis-py picks it
when ``hiredis`` is installed, which our dependency pins), socket timeouts, retries
with exponential backoff and full jitter on connection errors and timeouts, and a
health-check interval. :class:`RedisHandle` owns the client and closes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from ordercache.app.errors import ConfigError
from ordercache.app.settings import Settings, parse_hostports

log = logging.getLogger(__name__)

#: The client type the rest of the code sees (a cluster client speaks the same commands).
AnyRedis = aioredis.Redis | RedisCluster

Mode = Literal["standalone", "sentinel", "cluster"]


def _retry(settings: Settings) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(
            cap=settings.redis_retry_backoff_cap, base=settings.redis_retry_backoff_base
        ),
        settings.redis_retry_attempts,
        supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionResetError),
    )


def _common_kwargs(settings: Settings) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": max(settings.redis_read_timeout, settings.redis_write_timeout),
        "retry": _retry(settings),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": settings.redis_health_check_interval,
        "decode_responses": False,
        "client_name": settings.app_id,
    }
    if settings.redis_username:
        kw["username"] = settings.redis_username
    if settings.redis_password is not None:
        kw["password"] = settings.redis_password.get_secret_value()
    if settings.redis_tls:
        kw["ssl"] = True
        kw["ssl_cert_reqs"] = "required" if settings.redis_tls_verify else "none"
        if not settings.redis_tls_verify:
            kw["ssl_check_hostname"] = False
        if settings.redis_tls_ca_file:
            kw["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
        if settings.redis_tls_cert_file:
            kw["ssl_certfile"] = str(settings.redis_tls_cert_file)
        if settings.redis_tls_key_file:
            kw["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return kw


@dataclass
class RedisHandle:
    """An asyncio Redis client plus what it takes to observe and close it."""

    client: AnyRedis
    mode: Mode
    max_connections: int
    sentinel: Sentinel | None = None
    _closed: bool = field(default=False, repr=False)

    def pool_stats(self) -> dict[str, int]:
        """Connections in use, idle and the configured maximum (standalone/sentinel)."""
        if isinstance(self.client, RedisCluster):
            in_use = idle = 0
            for node in self.client.get_nodes():
                free = len(getattr(node, "_free", ()))
                idle += free
                in_use += len(getattr(node, "_connections", ())) - free
            return {"in_use": in_use, "idle": idle, "max": self.max_connections}
        pool = self.client.connection_pool
        in_use = len(list(pool._get_in_use_connections()))
        idle = len(getattr(pool, "_available_connections", ()))
        return {"in_use": in_use, "idle": idle, "max": self.max_connections}

    async def close(self) -> None:
        """Close the client and its pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()
        if isinstance(self.client, aioredis.Redis):
            await self.client.connection_pool.disconnect(inuse_connections=True)
        if self.sentinel is not None:
            for s in self.sentinel.sentinels:
                await s.aclose()


def create_redis(settings: Settings, *, url: str | None = None) -> RedisHandle:
    """Build the asyncio client the settings describe. No I/O happens here.

    ``url`` overrides the configured address (the local default passes the private
    redis-server it started).
    """
    if not HIREDIS_AVAILABLE:  # pragma: no cover - hiredis is a hard dependency
        log.warning("hiredis is not installed; using the pure-Python parser")
    kw = _common_kwargs(settings)
    mode: Mode = settings.redis_mode
    if mode == "cluster":
        return _create_cluster(settings, kw, url)
    if mode == "sentinel":
        return _create_sentinel(settings, kw)
    pool_kw = dict(kw)
    pool_kw.pop("retry_on_error", None)
    raw_url = url or (settings.redis_url.get_secret_value() if settings.redis_url else None)
    pool: aioredis.BlockingConnectionPool
    if raw_url is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            raw_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_connect_timeout,
            **pool_kw,
        )
    else:
        if settings.redis_host is None:
            raise ConfigError(
                "ORDERCACHE_REDIS_URL or ORDERCACHE_REDIS_HOST: required outside the local default"
            )
        if settings.redis_tls:
            conn_cls: type[aioredis.Connection] = aioredis.SSLConnection
            pool_kw.pop("ssl")
        else:
            conn_cls = aioredis.Connection
            for key in [k for k in pool_kw if k.startswith("ssl")]:
                pool_kw.pop(key)
        pool = aioredis.BlockingConnectionPool(
            connection_class=conn_cls,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_connect_timeout,
            host=settings.redis_host,
            port=settings.redis_port,
            db=settings.redis_db,
            **pool_kw,
        )
    client = aioredis.Redis(connection_pool=pool)
    return RedisHandle(client=client, mode="standalone", max_connections=pool.max_connections)


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
    conn_kw.pop("retry_on_error", None)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addrs, sentinel_kwargs=sentinel_kwargs, db=settings.redis_db, **conn_kw
    )
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        max_connections=settings.redis_max_connections,
    )
    return RedisHandle(
        client=client,
        mode="sentinel",
        max_connections=settings.redis_max_connections,
        sentinel=sentinel,
    )


def _create_cluster(settings: Settings, kw: dict[str, Any], url: str | None) -> RedisHandle:
    ckw = dict(kw)
    ckw.pop("health_check_interval", None)
    ckw.pop("client_name", None)
    raw_url = url or (settings.redis_url.get_secret_value() if settings.redis_url else None)
    client: RedisCluster
    if settings.redis_cluster_nodes:
        nodes = [
            ClusterNode(h, p)
            for h, p in parse_hostports(
                settings.redis_cluster_nodes, "ORDERCACHE_REDIS_CLUSTER_NODES"
            )
        ]
        client = RedisCluster(
            startup_nodes=nodes, max_connections=settings.redis_max_connections, **ckw
        )
    else:
        assert raw_url is not None  # checked by Settings
        client = RedisCluster.from_url(
            raw_url, max_connections=settings.redis_max_connections, **ckw
        )
    return RedisHandle(
        client=client, mode="cluster", max_connections=settings.redis_max_connections
    )
