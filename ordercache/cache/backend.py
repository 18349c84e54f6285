"""The Redis boundary of the cache: commands, Lua scripts, and error translation.

Everything that talks to Redis for the cache lives here. Any exception the client
raises — not only ``RedisError``: during a cluster failover redis-py has raised
``AttributeError`` from a connection another task closed underneath — is turned into
:class:`CacheError` / :class:`CacheTimeoutError` with ``raise … from`` and never
leaks to callers (``asyncio.CancelledError`` is not an ``Exception`` and passes).

Scripts are loaded once and called by SHA; the calls a server answers ``NOSCRIPT``
(a restarted or failed-over server) are sent again after loading the scripts on every
primary — every script is idempotent under replay (version guards), so that is safe,
and only those calls are replayed, so every call's result stays exact.

Cluster: every script's keys share one hash tag (the entity id), so each call maps
to one slot. Pipelined calls go in as raw ``EVALSHA`` commands (redis-py's cluster
pipeline blocks its ``evalsha()`` method, not the command); the cluster pipeline
then groups them per node, sends one pipeline to each node concurrently, re-sends a
command answered with MOVED/ASK/TRYAGAIN on its own through the redirect-following
client, and on a connection error or CLUSTERDOWN re-reads the slot map and sends
what did not complete again. Replies come back in call order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ordercache.errors import CacheError, CacheTimeoutError
from ordercache.redisconn.client import AnyRedis
from ordercache.redisconn.scripts import LuaScript, load_scripts, run_loading

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
        try:  # not the context manager: this is the hit path, every microsecond shows
            raw = await self.client.get(key)
            return raw  # type: ignore[return-value]
        except Exception as exc:  # the client's failure modes are open-ended
            raise _client_error(exc) from exc

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with _client_errors():
            async with asyncio.timeout(self.timeout):
                if isinstance(self.client, RedisCluster):
                    # one MGET per slot, pipelined per node; replies in key order
                    raws = await self.client.mget_nonatomic(keys)
                else:
                    raws = await self.client.mget(keys)
                return list(raws)

    async def delete(self, *keys: str) -> int:
        with _client_errors():
            async with asyncio.timeout(self.timeout):
                return int(await self.client.delete(*keys))

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
        argv = call.script.evalsha(call.keys, call.args)
        with _client_errors():
            async with asyncio.timeout(self.timeout):
                return await run_loading(
                    self.client, [call.script], lambda: self.client.execute_command(*argv)
                )

    async def call_many(
        self, calls: Sequence[ScriptCall], *, timeout: float | None = None
    ) -> list[Any]:
        """Run script calls in one pipeline, in order; raise CacheError if any failed."""
        if not calls:
            return []
        with _client_errors():
            async with asyncio.timeout(timeout or self.timeout * 4):
                results = await self._pipeline(calls)
                # Only the calls a node answered NOSCRIPT are replayed (after loading on
                # every primary): in a cluster the other nodes' calls already applied,
                # and replaying them would change their results, not their effect.
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:
                    await load_scripts(self.client, ALL_SCRIPTS)
                    again = await self._pipeline([calls[i] for i in missing])
                    for i, r in zip(missing, again, strict=True):
                        results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise _translate(r) from r
        return results

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Replies in call order; a failed call's reply is its exception."""
        pipe = self.client.pipeline(transaction=False)
        for c in calls:
            # raw EVALSHA: the one form standalone and cluster pipelines both accept
            pipe.execute_command(*c.script.evalsha(c.keys, c.args))
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def load_scripts(self) -> None:
        """Load every script (on all primaries in a cluster)."""
        with _client_errors():
            async with asyncio.timeout(self.timeout * 4):
                await load_scripts(self.client, ALL_SCRIPTS)


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """Any exception from the client becomes a CacheError (CancelledError passes)."""
    try:
        yield
    except Exception as exc:  # the client's failure modes are open-ended
        raise _client_error(exc) from exc


def _client_error(exc: Exception) -> CacheError:
    if not isinstance(exc, CacheError | RedisError | OSError):
        # not a documented client error: keep the trace for whoever debugs it
        log.debug("unexpected error from the Redis client", exc_info=exc)
    return _translate(exc)


def _per_node(replies: Any) -> bool:
    return isinstance(replies, dict) and all(isinstance(v, dict) for v in replies.values())


def _translate(exc: BaseException) -> CacheError:
    if isinstance(exc, CacheError):
        return exc
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return CacheTimeoutError(f"Redis call timed out: {type(exc).__name__}")
    return CacheError(f"Redis call failed: {type(exc).__name__}: {exc}")
