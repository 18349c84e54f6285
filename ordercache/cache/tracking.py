"""Redis server-assisted invalidation for the near-cache (``CLIENT TRACKING``, BCAST).

A dedicated connection per primary asks Redis to broadcast every change of a key
under the cache's prefix (``CLIENT TRACKING ON REDIRECT <self> BCAST PREFIX p:``)
and subscribes to ``__redis__:invalidate``, where those broadcasts arrive (RESP2
redirect mode, so it works with every redis-py parser and through Sentinel). Redis
sends one for every write, delete, expiry and eviction of a matching key, whoever
made it, and ``null`` on FLUSHDB/FLUSHALL. Standalone and Sentinel: one connection,
to the primary the client writes to. Cluster: tracking is per node (a node
broadcasts only the changes of the keys it holds), so one connection per primary,
every primary the cluster lists in ``CLUSTER NODES`` (slotless ones too: a
resharding moves keys onto them).

Coherence is only as good as the connections, so :class:`NearCache` serves entries
only while every one of them is subscribed: it goes live after all subscriptions
are confirmed, and goes dark (flushing everything) when a connection fails, when a
health-check PING is not answered in time, when the primaries are no longer the
servers these connections listen to (a failover that left the old primary running
as a replica; on a cluster, any change of the set of primaries: a failover, a node
added or removed), or on stop. Then it reconnects with backoff. On a cluster a fill
is also kept only if the key's slot is served by a primary being listened to
(:attr:`NearCache.accepts`): a read that followed a ``MOVED`` to a primary not yet
listened to is not kept. redis-py's own client-side cache is for the synchronous
client only (``cache_config``); the asyncio client has none, hence this listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from ordercache.cache.near import NearCache
from ordercache.redisconn.client import AnyRedis
from ordercache.retry import Backoff
from ordercache.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = b"__redis__:invalidate"


@dataclass(frozen=True, slots=True)
class _Target:
    """A primary to listen to: its ``host:port`` name and a new, unconnected,
    RESP2 connection to it (same auth and TLS as the client's own)."""

    name: str
    conn: Any


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
        self.client = client
        self.near = near
        self.prefix = prefix if prefix.endswith(":") else prefix + ":"
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff = backoff or Backoff(0.05, 2.0)
        #: Sessions that went live (every primary subscribed).
        self.subscriptions = 0
        #: CLIENT ID of each listening connection, by ``host:port`` of its primary
        #: (tests kill one to fake a fault).
        self.client_ids: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._conns: list[Any] = []
        self._last_reply: dict[int, float] = {}
        #: What the session listens to: the primary's run_id (standalone, Sentinel)
        #: or the cluster's primaries as (address, node id) pairs.
        self._listening: Hashable = None
        if isinstance(client, RedisCluster):
            near.accepts = self._served_by_a_listened_primary

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
            except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                log.warning("near-cache invalidation stream lost: %s", type(exc).__name__)
            except Exception:  # a defect: dark, logged, retried; never a silent end
                log.exception("near-cache invalidation listener failed")
            finally:
                self.near.go_dark("disconnected")
                await self._close()
            await self.backoff.sleep(self._stop)

    async def _session(self) -> None:
        targets, self._listening = await self._targets()
        if not targets:
            raise ConnectionError("no primary to listen to")
        self.client_ids = {}
        for target in targets:
            await self._subscribe(target)
        self.subscriptions += 1
        self.backoff.reset()
        self.near.go_live()
        tasks = [asyncio.create_task(self._listen(conn)) for conn in self._conns]
        tasks.append(asyncio.create_task(self._watchdog()))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # dark before anything else: a reply may be lost with a reader
            self.near.go_dark("disconnected")
            for task in tasks:
                await cancel_and_wait(task)
            for task in tasks:
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error  # a reader's error, if one failed

    # ------------------------------------------------------------ the primaries
    async def _targets(self) -> tuple[list[_Target], Hashable]:
        client = self.client
        if not isinstance(client, RedisCluster):
            # Standalone or Sentinel: the pool's connection class finds the primary.
            pool = client.connection_pool
            conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
            return [_Target("primary", conn)], None  # run_id: read on the connection
        primaries = await self._cluster_primaries()
        targets = []
        for address, _ in sorted(primaries):
            host, port = client.nodes_manager.remap_host_port(*_hostport(address))
            node = ClusterNode(host, port, **client.nodes_manager.connection_kwargs)
            conn = node.connection_class(**{**node.connection_kwargs, "protocol": 2})
            targets.append(_Target(node.name, conn))
        return targets, primaries

    async def _cluster_primaries(self) -> frozenset[tuple[str, str]]:
        """Every primary in ``CLUSTER NODES`` (address, node id), slotless ones too;
        a primary the cluster has confirmed failed is left out (it serves nothing)."""
        assert isinstance(self.client, RedisCluster)
        nodes = await self.client.cluster_nodes()
        return frozenset(
            (address, str(node["node_id"]))
            for address, node in nodes.items()
            if {"master"} <= (flags := set(str(node["flags"]).split(",")))
            and not flags & {"fail", "handshake", "noaddr"}
        )

    async def _primaries_changed(self) -> bool:
        """After a failover the old primary may live on as a replica, keeping its
        connection open but hearing none of the new primary's writes: compare the
        servers the client now writes to with the ones listened to."""
        try:
            if isinstance(self.client, RedisCluster):
                return await self._cluster_primaries() != self._listening
            info = await self.client.info("server")
        except Exception:  # noqa: BLE001 - unreachable now: the PING check covers that
            return False
        run_id = info.get("run_id")
        return isinstance(run_id, str | bytes) and _text(run_id) != self._listening

    def _served_by_a_listened_primary(self, key: str) -> bool:
        """Cluster: the slot map the last read followed names a listened primary."""
        assert isinstance(self.client, RedisCluster)
        try:
            node = self.client.get_node_from_key(key)
        except RedisError:
            return False
        return node is not None and node.name in self.client_ids

    # ------------------------------------------------------------ one connection
    async def _subscribe(self, target: _Target) -> None:
        # A connection of its own, never handed to a pool, and RESP2 whatever the
        # client speaks: in RESP2 the broadcasts arrive as ordinary pub/sub messages,
        # which every redis-py parser returns as replies.
        conn = target.conn
        self._conns.append(conn)
        await conn.connect()
        await conn.send_command("CLIENT", "ID")
        cid = await conn.read_response()
        if not isinstance(self.client, RedisCluster):
            await conn.send_command("INFO", "server")
            self._listening = _run_id(await conn.read_response())
        await conn.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST", "PREFIX", self.prefix
        )
        if await conn.read_response() not in (b"OK", "OK"):
            raise ConnectionError("CLIENT TRACKING refused")
        await conn.send_command("SUBSCRIBE", CHANNEL)
        await self._read(conn)  # the subscription confirmation
        self.client_ids[target.name] = int(cid)

    async def _listen(self, conn: Any) -> None:
        while True:
            self._handle(await self._read(conn))

    async def _read(self, conn: Any) -> Any:
        reply = await conn.read_response(timeout=math.inf, push_request=True)
        self._last_reply[id(conn)] = time.monotonic()
        return reply

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (b"message", "message"):
            return  # pong and subscription replies only refresh the health clock
        keys = msg[2]
        if keys is None:
            self.near.flush("flushdb")  # FLUSHDB / FLUSHALL
            return
        self.near.invalidate(k.decode() if isinstance(k, bytes) else k for k in keys)

    async def _watchdog(self) -> None:
        """PING on every subscribed connection; one without a reply in time means
        invalidations may be missed: return, which ends the session (dark, then
        reconnect). So does a change of the primaries."""
        ping = self._conns[0].pack_command("PING")
        while True:
            await asyncio.sleep(self.ping_interval)
            if await self._primaries_changed():
                log.warning("Redis primaries changed; near-cache resubscribing to them")
                return
            sent = time.monotonic()
            for conn in self._conns:
                # no health check of its own: that would read, and the reader is reading
                await conn.send_packed_command(ping, check_health=False)
            await asyncio.sleep(self.ping_timeout)
            if any(self._last_reply.get(id(conn), 0.0) < sent for conn in self._conns):
                log.warning("near-cache invalidation stream silent; reconnecting")
                return

    async def _close(self) -> None:
        conns, self._conns = self._conns, []
        self._last_reply.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.disconnect()


def _hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _run_id(info: Any) -> str:
    """``run_id`` from a raw ``INFO server`` reply."""
    for line in _text(info).splitlines():
        if line.startswith("run_id:"):
            return line.removeprefix("run_id:").strip()
    return ""
