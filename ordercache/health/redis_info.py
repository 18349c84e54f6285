"""Redis health: a write/read probe and the server's INFO figures.

* :func:`probe_redis` — PING, then SET (with a TTL) / GET / DEL of the node's own
  health key in one pipeline: proves the server answers *and* accepts writes (a
  read-only replica after a failover, a full ``maxmemory`` with ``noeviction`` or a
  ``MISCONF`` fail it), all inside one time budget.
* :func:`parse_info` — the INFO fields we export (pure; sums over cluster nodes).
* :class:`RedisMonitor` — the last INFO snapshot, refreshed by a background task so
  that metric collectors and ``/stats`` never do network I/O themselves.

Nothing here raises on a Redis failure: results say ``ok=False`` / ``up=False`` and
carry a short reason (an exception class name, never a URL or a password).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ordercache.redisconn.client import AnyRedis

log = logging.getLogger(__name__)

#: INFO sections we read (Redis >= 7 accepts several in one call).
INFO_SECTIONS = (
    "server", "memory", "clients", "stats", "keyspace", "replication", "persistence",
)  # fmt: skip

_INT_FIELDS = (
    "used_memory",
    "maxmemory",
    "connected_clients",
    "evicted_keys",
    "keyspace_hits",
    "keyspace_misses",
)


@dataclass(frozen=True, slots=True)
class RedisInfo:
    """The INFO figures ordercache exports (summed over the nodes of a cluster)."""

    used_memory: int = 0
    maxmemory: int = 0
    connected_clients: int = 0
    evicted_keys: int = 0
    keyspace_hits: int = 0
    keyspace_misses: int = 0
    keys: int = 0
    run_id: str = ""
    #: ``maxclients`` (INFO clients since Redis 7, else CONFIG GET); 0: unknown.
    maxclients: int = 0
    #: ``rejected_connections`` (INFO stats): refused at ``maxclients``.
    rejected_connections: int = 0
    #: ``connected_slaves`` (INFO replication) of the server(s) we talk to.
    connected_replicas: int = 0
    #: False when a replication link is broken: on a replica ``master_link_status``
    #: is not ``up``; on a primary a listed replica is not ``online``.
    replication_link_up: bool = True
    #: Seconds: the largest ``lag`` of a primary's replicas, or a replica's
    #: ``master_last_io_seconds_ago``.
    replication_lag_seconds: int = 0
    #: ``rdb_last_bgsave_status`` and ``aof_last_write_status`` are ``ok``.
    rdb_ok: bool = True
    aof_ok: bool = True

    @property
    def memory_ratio(self) -> float | None:
        """used / max memory, or ``None`` when no ``maxmemory`` is configured."""
        if self.maxmemory <= 0:
            return None
        return self.used_memory / self.maxmemory


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, bytes | str):
        try:
            return int(float(value))
        except ValueError:
            return 0
    return 0


def _keys_of(info: Mapping[str, Any]) -> int:
    """Sum ``keys=`` over the ``db<N>`` lines of the keyspace section."""
    total = 0
    for name, value in info.items():
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, Mapping):
            total += _as_int(value.get("keys", 0))
    return total


def _is_node_map(raw: Mapping[str, Any]) -> bool:
    """A cluster client answers INFO with ``{node_name: info}``."""
    return (
        bool(raw)
        and all(isinstance(v, Mapping) for v in raw.values())
        and not any(k in raw for k in _INT_FIELDS)
    )


def _replication(node: Mapping[str, Any]) -> tuple[bool, int]:
    """(link up, lag seconds) of one node's INFO replication."""
    if str(node.get("role", "master")) in ("slave", "replica"):
        up = str(node.get("master_link_status", "down")) == "up"
        return up, max(0, _as_int(node.get("master_last_io_seconds_ago", 0)))
    up, lag = True, 0
    for name, value in node.items():
        # redis-py parses "slave0:ip=..,state=online,offset=..,lag=0" into a dict
        if name.startswith("slave") and name[5:].isdigit() and isinstance(value, Mapping):
            up = up and str(value.get("state", "")) == "online"
            lag = max(lag, _as_int(value.get("lag", 0)))
    return up, lag


def parse_info(raw: Mapping[str, Any]) -> RedisInfo:
    """Turn redis-py's parsed INFO (one node, or ``{node: info}``) into :class:`RedisInfo`.

    Counters and sizes are summed over a cluster's nodes; a broken link or a failed
    persistence on any node is reported; the lag is the largest.
    """
    nodes: list[Mapping[str, Any]] = list(raw.values()) if _is_node_map(raw) else [raw]
    sums = dict.fromkeys(_INT_FIELDS, 0)
    keys = maxclients = rejected = replicas = lag = 0
    link_up = rdb_ok = aof_ok = True
    run_ids: list[str] = []
    for node in nodes:
        for name in _INT_FIELDS:
            sums[name] += _as_int(node.get(name, 0))
        keys += _keys_of(node)
        run_id = node.get("run_id")
        if run_id:
            run_ids.append(str(run_id))
        maxclients += _as_int(node.get("maxclients", 0))
        rejected += _as_int(node.get("rejected_connections", 0))
        replicas += _as_int(node.get("connected_slaves", 0))
        node_up, node_lag = _replication(node)
        link_up, lag = link_up and node_up, max(lag, node_lag)
        rdb_ok = rdb_ok and str(node.get("rdb_last_bgsave_status", "ok")) == "ok"
        aof_ok = aof_ok and str(node.get("aof_last_write_status", "ok")) == "ok"
    return RedisInfo(
        keys=keys,
        run_id=",".join(sorted(run_ids)),
        maxclients=maxclients,
        rejected_connections=rejected,
        connected_replicas=replicas,
        replication_link_up=link_up,
        replication_lag_seconds=lag,
        rdb_ok=rdb_ok,
        aof_ok=aof_ok,
        **sums,
    )


async def fetch_info(client: AnyRedis, *, timeout: float) -> RedisInfo:
    """INFO of the server(s), bounded by ``timeout``. Raises on failure (see callers)."""
    async with asyncio.timeout(timeout):
        if isinstance(client, RedisCluster):
            # redis-py 8 sends a bare INFO to one node: ask every primary and sum
            raw = await client.info(*INFO_SECTIONS, target_nodes=RedisCluster.PRIMARIES)
        else:
            raw = await client.info(*INFO_SECTIONS)
        info = parse_info(raw)
        if info.maxclients == 0 and not _is_node_map(raw):
            info = replace(info, maxclients=await _config_maxclients(client))
    return info


async def _config_maxclients(client: AnyRedis) -> int:
    """``CONFIG GET maxclients`` for servers before Redis 7 (0 when CONFIG is refused)."""
    try:
        found = await client.config_get("maxclients")
    except RedisError:  # CONFIG renamed away or denied by an ACL: unknown
        return 0
    return _as_int(found.get("maxclients", 0)) if isinstance(found, Mapping) else 0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of one readiness probe."""

    ok: bool
    latency_seconds: float
    error: str | None = None


def describe_error(exc: BaseException) -> str:
    """A short, secret-free reason: the exception class, or ``timeout``."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def probe_redis(
    client: AnyRedis, key: str, *, timeout: float = 1.0, ttl_ms: int = 10_000
) -> ProbeResult:
    """PING + SET/GET/DEL round trip on ``key`` within ``timeout`` seconds.

    The key carries a TTL so that a probe cut short by the timeout leaves nothing
    behind for long.
    """
    token = secrets.token_hex(8).encode()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
            pipe = client.pipeline(transaction=False)
            pipe.set(key, token, px=ttl_ms)
            pipe.get(key)
            pipe.delete(key)
            _, echoed, _ = await pipe.execute()
    except (RedisError, OSError, TimeoutError) as exc:
        return ProbeResult(False, time.perf_counter() - t0, describe_error(exc))
    elapsed = time.perf_counter() - t0
    if echoed != token:
        return ProbeResult(False, elapsed, "read-back mismatch")
    return ProbeResult(True, elapsed)


class RedisMonitor:
    """Holds the last INFO snapshot; :meth:`refresh` is called by a background task."""

    def __init__(self, client: AnyRedis, *, timeout: float = 1.0) -> None:
        self.client = client
        self.timeout = timeout
        self.info = RedisInfo()
        self.up = False
        #: ``time.monotonic()`` of the last refresh attempt (0: never).
        self.refreshed_at = 0.0
        self.last_error: str | None = None

    async def refresh(self) -> bool:
        """Fetch INFO; on failure keep the last figures and mark Redis down."""
        self.refreshed_at = time.monotonic()
        try:
            self.info = await fetch_info(self.client, timeout=self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            if self.up:
                log.warning("Redis INFO failed: %s", describe_error(exc))
            self.up = False
            self.last_error = describe_error(exc)
            return False
        self.up = True
        self.last_error = None
        return True
