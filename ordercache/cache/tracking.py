"""Redis server-assisted invalidation for the near-cache (``CLIENT TRACKING``, BCAST).

One dedicated connection per process asks Redis to broadcast every change of a key
under the cache's prefix (``CLIENT TRACKING ON REDIRECT <self> BCAST PREFIX p:``)
and subscribes to ``__redis__:invalidate``, where those broadcasts arrive (RESP2
redirect mode, so it works with every redis-py parser and through Sentinel). Redis
sends one for every write, delete, expiry and eviction of a matching key, whoever
made it, and ``null`` on FLUSHDB/FLUSHALL.

Coherence is only as good as the connection, so :class:`NearCache` serves entries
only while this listener is subscribed: it goes live after the subscription is
confirmed, and goes dark (flushing everything) when the connection fails, when a
health-check PING is not answered in time, when the primary the client writes to is
no longer the server this connection listens to (a failover that left the old
primary running as a replica), or on stop. Then it reconnects with
backoff. redis-py's own client-side cache is for the synchronous client only
(``cache_config``); the asyncio client has none, hence this listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ordercache.cache.near import NearCache
from ordercache.redisconn.client import AnyRedis
from ordercache.retry import Backoff
from ordercache.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = b"__redis__:invalidate"


class TrackingListener:
    """Keeps a :class:`NearCache` coherent with Redis; ``start()`` / ``stop()``."""

    def __init__(
        self,
        client: AnyRedis,
        near: NearCache,
        prefix: str,
        *,
        ping_interval: float = 1.0,
        ping_timeout: float = 1.0,
        backoff: Backoff | None = None,
    ) -> None:
        if isinstance(client, RedisCluster):
            raise TypeError("the near-cache needs a standalone or Sentinel Redis client")
        self.client = client
        self.near = near
        self.prefix = prefix if prefix.endswith(":") else prefix + ":"
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff = backoff or Backoff(0.05, 2.0)
        self.subscriptions = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._conn: Any = None
        self._last_reply = 0.0
        self._run_id = ""
        #: CLIENT ID of the current listening connection (tests kill it to fake a fault).
        self.client_id: int | None = None

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="near-cache-tracking")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._task)
        self._task = None
        self.near.go_dark("stopped")

    async def wait_live(self, timeout: float) -> bool:
        """Poll until the near-cache is live (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while not self.near.live:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, ConnectionError) as exc:
                log.warning("near-cache invalidation stream lost: %s", type(exc).__name__)
            finally:
                self.near.go_dark("disconnected")
                await self._close()
            await self.backoff.sleep(self._stop)

    async def _session(self) -> None:
        # A connection of its own (same address, auth, TLS), never handed to the pool,
        # and RESP2 whatever the client speaks: in RESP2 the broadcasts arrive as
        # ordinary pub/sub messages, which every redis-py parser returns as replies.
        pool = self.client.connection_pool
        conn: Any = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        self._conn = conn
        await conn.connect()
        await conn.send_command("CLIENT", "ID")
        cid = await conn.read_response()
        self.client_id = int(cid)
        await conn.send_command("INFO", "server")
        self._run_id = _run_id(await conn.read_response())
        await conn.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST", "PREFIX", self.prefix
        )
        if await conn.read_response() not in (b"OK", "OK"):
            raise ConnectionError("CLIENT TRACKING refused")
        await conn.send_command("SUBSCRIBE", CHANNEL)
        await self._read(conn)  # the subscription confirmation
        self._last_reply = time.monotonic()
        self.subscriptions += 1
        self.backoff.reset()
        self.near.go_live()
        reader = asyncio.create_task(self._listen(conn))
        watchdog = asyncio.create_task(self._watchdog(conn))
        try:
            await asyncio.wait((reader, watchdog), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # dark before anything else: a reply may be lost with the reader
            self.near.go_dark("disconnected")
            for task in (reader, watchdog):
                await cancel_and_wait(task)
            for task in (reader, watchdog):
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error  # the reader's error, if it failed

    async def _listen(self, conn: Any) -> None:
        while True:
            self._handle(await self._read(conn))

    async def _read(self, conn: Any) -> Any:
        reply = await conn.read_response(timeout=math.inf, push_request=True)
        self._last_reply = time.monotonic()
        return reply

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (b"message", "message"):
            return  # pong and subscription replies only refresh the health clock
        keys = msg[2]
        if keys is None:
            self.near.flush("flushdb")  # FLUSHDB / FLUSHALL
            return
        self.near.invalidate(k.decode() if isinstance(k, bytes) else k for k in keys)

    async def _watchdog(self, conn: Any) -> None:
        """PING on the subscribed connection; no reply in time means invalidations may
        be missed: return, which ends the session (dark, then reconnect)."""
        ping = conn.pack_command("PING")
        while True:
            await asyncio.sleep(self.ping_interval)
            if await self._primary_moved():
                log.warning("Redis primary changed; near-cache resubscribing there")
                return
            sent = time.monotonic()
            # no health check of its own: that would read, and the reader is reading
            await conn.send_packed_command(ping, check_health=False)
            await asyncio.sleep(self.ping_timeout)
            if self._last_reply < sent:
                log.warning("near-cache invalidation stream silent; reconnecting")
                return

    async def _primary_moved(self) -> bool:
        """After a failover the old primary may live on as a replica, keeping this
        connection open but hearing none of the new primary's writes: compare the
        server the client now writes to with the one this connection listens to."""
        try:
            info = await self.client.info("server")
        except Exception:  # noqa: BLE001 - unreachable now: the PING check covers that
            return False
        run_id = info.get("run_id")
        return isinstance(run_id, str | bytes) and _text(run_id) != self._run_id

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _run_id(info: Any) -> str:
    """``run_id`` from a raw ``INFO server`` reply."""
    for line in _text(info).splitlines():
        if line.startswith("run_id:"):
            return line.removeprefix("run_id:").strip()
    return ""
