"""The Redis boundary of the cache: commands, Lua scripts, and error translation.

Everything that talks to Redis for the cache lives here; redis-py exceptions are
turned into :class:`CacheError` / :class:`CacheTimeoutError` with ``raise … from``
and never leak to callers. Scripts are loaded once and called by SHA; a pipeline that
meets ``NOSCRIPT`` (a restarted or failed-over server) reloads them and is replayed —
every script is idempotent under replay (version guards), so that is safe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ordercache.errors import CacheError, CacheTimeoutError
from ordercache.redisconn.client import AnyRedis
from ordercache.redisconn.scripts import LuaScript, load_scripts, raise_noscript, run_loading

log = logging.getLogger(__name__)


_PACKAGE = "ordercache.cache"
ACQUIRE = LuaScript.from_package(_PACKAGE, "acquire")
FILL = LuaScript.from_package(_PACKAGE, "fill")
INVALIDATE = LuaScript.from_package(_PACKAGE, "invalidate")
REFRESH = LuaScript.from_package(_PACKAGE, "refresh")
INVALIDATE_MANY = LuaScript.from_package(_PACKAGE, "invalidate_many")
ALL_SCRIPTS = (ACQUIRE, FILL, INVALIDATE, REFRESH, INVALIDATE_MANY)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script invocation, for batching in a pipeline. ``ops`` is how many cache
    operations it carries (its reply is a list of that length when ``ops > 1``)."""

    script: LuaScript
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    ops: int = 1


class RedisCacheBackend:
    """Cache commands over one client (standalone, Sentinel master, or Cluster)."""

    def __init__(self, client: AnyRedis, *, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        #: Multi-entry scripts need all their keys on one server (not in a cluster).
        self.multi_key = not isinstance(client, RedisCluster)

    # ------------------------------------------------------------------ reads
    async def get(self, key: str) -> bytes | None:
        """GET on the hit path. Bounded by the client's socket timeout (and its retries)
        rather than an extra ``asyncio.timeout``, which costs a timer per call."""
        try:
            raw = await self.client.get(key)
            return raw  # type: ignore[return-value]
        except (RedisError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(self.client, RedisCluster):
                    raws = await self.client.mget_nonatomic(keys)
                else:
                    raws = await self.client.mget(keys)
                return list(raws)
        except (RedisError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def delete(self, *keys: str) -> int:
        try:
            async with asyncio.timeout(self.timeout):
                return int(await self.client.delete(*keys))
        except (RedisError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def server_identity(self) -> bytes | None:
        """The server's ``run_id`` (every primary's, in a cluster): it changes on a
        restart or a failover. ``None`` when it cannot be read now."""
        client = self.client
        try:
            if isinstance(client, RedisCluster):
                # every primary: a failover of any one of them must be noticed
                replies = await client.info("server", target_nodes=RedisCluster.PRIMARIES)
                infos = list(replies.values()) if _per_node(replies) else [replies]
            else:
                infos = [await client.info("server")]
        except Exception as exc:  # noqa: BLE001 - any failure here means "try later"
            log.debug("Redis identity not read: %s", exc)
            return None
        return ",".join(sorted(str(i.get("run_id", "")) for i in infos)).encode()

    # ---------------------------------------------------------------- scripts
    async def call(self, call: ScriptCall) -> Any:
        """Run one script (EVALSHA, loading it on NOSCRIPT)."""
        sha, keys, args = call.script.sha, call.keys, call.args
        try:
            async with asyncio.timeout(self.timeout):
                return await run_loading(
                    self.client, [call.script], lambda: self.client.evalsha(sha, 3, *keys, *args)
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def call_many(
        self, calls: Sequence[ScriptCall], *, timeout: float | None = None
    ) -> list[Any]:
        """Run script calls in one pipeline, in order; raise CacheError if any failed."""
        if not calls:
            return []
        try:
            async with asyncio.timeout(timeout or self.timeout * 4):
                results = await run_loading(
                    self.client, ALL_SCRIPTS, functools.partial(self._pipeline, calls)
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc
        for r in results:
            if isinstance(r, Exception):
                raise _translate(r) from r
        return results

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for c in calls:
            pipe.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        raise_noscript(results)
        return results

    async def load_scripts(self) -> None:
        """Load every script (on all primaries in a cluster)."""
        try:
            async with asyncio.timeout(self.timeout * 4):
                await load_scripts(self.client, ALL_SCRIPTS)
        except (RedisError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc


def _per_node(replies: Any) -> bool:
    return isinstance(replies, dict) and all(isinstance(v, dict) for v in replies.values())


def _translate(exc: BaseException) -> CacheError:
    if isinstance(exc, CacheError):
        return exc
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return CacheTimeoutError(f"Redis call timed out: {type(exc).__name__}")
    return CacheError(f"Redis call failed: {type(exc).__name__}: {exc}")
