"""Small Redis helpers shared by the mirror, the consumer and tail (internal)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ordercache.redisconn.client import AnyRedis

#: Errors after which the same call may succeed later (the server or link is away).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)


def is_nogroup(exc: BaseException) -> bool:
    """True for the error Redis gives when the stream or the group is missing."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def socket_timeout(client: AnyRedis) -> float | None:
    """The client's per-command socket timeout, when it can be found out."""
    kwargs: dict[str, Any]
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = getattr(pool, "connection_kwargs", {})
    else:
        manager = getattr(client, "nodes_manager", None)
        kwargs = getattr(manager, "connection_kwargs", {}) if manager is not None else {}
    value = kwargs.get("socket_timeout")
    return float(value) if isinstance(value, int | float) else None


def safe_block_ms(client: AnyRedis, wanted_ms: int) -> int:
    """A BLOCK time the client's socket timeout does not cut short.

    A blocking read that outlives the socket timeout raises TimeoutError and leaves
    the connection useless, so stay 20% (at least 50 ms) below it.
    """
    timeout = socket_timeout(client)
    if timeout is None:
        return wanted_ms
    ceiling = int(timeout * 1000 * 0.8)
    ceiling = min(ceiling, int(timeout * 1000) - 50)
    return max(10, min(wanted_ms, ceiling))
