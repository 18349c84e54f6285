"""Automatic cache warming after a cold or changed Redis.

The worker watches Redis's identity (``run_id``, every primary's in a cluster) and a
marker key holding the identity the cache was last warmed for. When they differ —
an empty Redis (marker gone: first start, flush, restart without persistence), a
restarted one, or a new primary after a failover — it warms the hot set
(:mod:`ordercache.warming.hotset`) in chunks:

* **through the version guard**: :func:`ordercache.cache.bulk.fill_missing` reads
  each entry's fill generation before the load and fills by compare-and-set, so a
  warm fill can never overwrite a newer invalidation; entries already cached are
  not loaded at all;
* **rate-limited**: every database load takes a token from a per-second window
  shared by all workers in Redis (``warm_rate`` loads/s in total);
* **coordinated**: each chunk is leased (``SET NX PX``) for the identity being
  warmed, so several workers starting together split the work instead of repeating it;
* **observable**: progress in ``/stats`` (``warming``) and the
  ``ordercache_cache_warm_*`` metrics;
* **cancellable**: stopping the worker cancels it between two Redis calls; nothing
  else waits for it (readiness does not).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ordercache.cache.bulk import BulkOutcome, fill_missing
from ordercache.cache.service import CacheService
from ordercache.cache.views import HISTORY, INVENTORY, ORDER, ViewSpec
from ordercache.config.settings import Settings
from ordercache.db import repository
from ordercache.errors import CacheError
from ordercache.tasks import cancel_and_wait
from ordercache.warming import hotset

log = logging.getLogger(__name__)

HotIds = Callable[[AsyncSession, int], Awaitable[list[int]]]


@dataclass(frozen=True, slots=True)
class WarmConfig:
    rate: int = 200  # database loads per second, all workers together
    batch: int = 100
    orders: int = 2_000
    customers: int = 500
    products: int = 0  # 0: every product
    check_interval: float = 2.0
    #: How long a chunk stays claimed by the worker warming it.
    chunk_lease_ms: int = 120_000

    @classmethod
    def from_settings(cls, s: Settings) -> WarmConfig:
        return cls(
            rate=s.warm_rate,
            batch=min(s.warm_batch, s.warm_rate),
            orders=s.warm_orders,
            customers=s.warm_customers,
            products=s.warm_products,
        )


@dataclass
class WarmProgress:
    """What ``/stats`` shows under ``warming``."""

    state: str = "idle"  # idle | warming | done | cancelled | failed
    rounds: int = 0
    chunks: int = 0
    chunks_done: int = 0
    chunks_elsewhere: int = 0  # leased by another worker
    present: int = 0
    busy: int = 0
    loaded: int = 0
    filled: int = 0
    rejected: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["progress"] = (
            round((self.chunks_done + self.chunks_elsewhere) / self.chunks, 4)
            if self.chunks
            else None
        )
        return out


@dataclass(frozen=True)
class WarmMetrics:
    entries: Counter
    active: Gauge
    progress: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WarmMetrics:
        m = cls(
            entries=Counter(
                "ordercache_cache_warm_entries",
                "Cache warming, entries by view and outcome (present: already cached; "
                "busy: a reader was filling it; filled; rejected by the version guard).",
                ["view", "outcome"],
                registry=registry,
            ),
            active=Gauge(
                "ordercache_cache_warming",
                "1 while this worker warms the cache.",
                registry=registry,
            ),
            progress=Gauge(
                "ordercache_cache_warm_progress_ratio",
                "Share of the current warming round's chunks done (here or elsewhere).",
                registry=registry,
            ),
        )
        for spec in (ORDER, HISTORY, INVENTORY):
            for outcome in ("present", "busy", "filled", "rejected"):
                m.entries.labels(spec.view.value, outcome)
        return m


class RateLimit:
    """At most ``rate`` tokens per wall-clock second, shared through Redis by every
    worker (a fixed window per second: ``INCRBY`` + ``PEXPIRE``)."""

    def __init__(self, client: Any, key: str, rate: int) -> None:
        self.client = client
        self.key = key
        self.rate = rate
        #: Tokens this process was granted per wall-clock second (the newest 120).
        self.granted: dict[int, int] = {}

    async def acquire(self, n: int) -> None:
        n = min(n, self.rate)
        while True:
            now = time.time()
            window = int(now)
            key = f"{self.key}:{window}"
            pipe = self.client.pipeline(transaction=False)
            pipe.incrby(key, n)
            pipe.pexpire(key, 5_000)
            count, _ = await pipe.execute()
            if int(count) <= self.rate:
                self.granted[window] = self.granted.get(window, 0) + n
                if len(self.granted) > 120:
                    del self.granted[min(self.granted)]
                return
            await asyncio.sleep(window + 1 - now + 0.001)


class CacheWarmer:
    """Warms the hot set when Redis is cold or changed; see the module docstring."""

    def __init__(
        self,
        cache: CacheService,
        sessions: async_sessionmaker[AsyncSession],
        config: WarmConfig,
        metrics: WarmMetrics,
    ) -> None:
        self.cache = cache
        self.sessions = sessions
        self.config = config
        self.metrics = metrics
        self.progress = WarmProgress()
        client = cache.backend.client
        self.client = client
        prefix = cache.keys.prefix
        self.marker = f"{prefix}:warm:identity"
        self._lease_prefix = f"{prefix}:warm:chunk"
        self.limit = RateLimit(client, f"{prefix}:warm:rate", config.rate)

    def status(self) -> dict[str, Any]:
        """The current round's progress (``/stats``)."""
        return self.progress.as_dict()

    async def run(self) -> None:
        """Until cancelled: warm whenever the identity and the marker disagree."""
        while True:
            try:
                identity = await self.cache.server_identity()
                if identity is not None:
                    marker = await self.client.get(self.marker)
                    if marker != identity:
                        await self.warm(identity)
            except asyncio.CancelledError:
                if self.progress.state == "warming":
                    self.progress.state = "cancelled"
                    self.progress.finished_at = time.time()
                self.metrics.active.set(0)
                raise
            except (CacheError, OSError, TimeoutError, ConnectionError) as exc:
                self._failed(exc)
            except Exception as exc:  # noqa: BLE001 - a Redis or database error: retry later
                self._failed(exc)
            await asyncio.sleep(self.config.check_interval)

    def _failed(self, exc: BaseException) -> None:
        self.metrics.active.set(0)
        if self.progress.state == "warming":
            self.progress.state = "failed"
            self.progress.finished_at = time.time()
        self.progress.error = type(exc).__name__
        log.warning("cache warming interrupted (%s); retrying later", type(exc).__name__)

    async def warm(self, identity: bytes) -> WarmProgress:
        """One warming round for ``identity``; sets the marker when it completes."""
        c = self.config
        p = self.progress = WarmProgress(
            state="warming", rounds=self.progress.rounds + 1, started_at=time.time()
        )
        self.metrics.active.set(1)
        log.info("Redis is cold or changed: warming the hot set")
        async with self.sessions() as s:
            plan: list[tuple[ViewSpec[Any], list[int]]] = [
                (ORDER, await hotset.hot_orders(s, c.orders)),
                (HISTORY, await hotset.hot_customers(s, c.customers)),
                (INVENTORY, await hotset.hot_products(s, c.products)),
            ]
        # The hottest chunk of every view first, then the next of each: the readers'
        # most frequent keys are warm within the first seconds, whatever their view.
        per_view = [
            [(spec, ids[i : i + c.batch], i // c.batch) for i in range(0, len(ids), c.batch)]
            for spec, ids in plan
        ]
        chunks = [chunk for group in itertools.zip_longest(*per_view) for chunk in group if chunk]
        p.chunks = len(chunks)
        tag = hashlib.sha1(identity, usedforsecurity=False).hexdigest()[:12]
        for spec, ids, index in chunks:
            lease = f"{self._lease_prefix}:{tag}:{spec.view.value}:{index}"
            if not await self.client.set(lease, b"1", nx=True, px=c.chunk_lease_ms):
                p.chunks_elsewhere += 1
            else:
                self._count(spec, await fill_missing(self.cache, spec, ids, self._loader(spec)))
                p.chunks_done += 1
            self.metrics.progress.set((p.chunks_done + p.chunks_elsewhere) / p.chunks)
        await self.client.set(self.marker, identity)
        p.state, p.finished_at = "done", time.time()
        self.metrics.active.set(0)
        log.info(
            "cache warmed: %d filled, %d already cached, %d chunks by other workers",
            p.filled,
            p.present,
            p.chunks_elsewhere,
        )
        return p

    def _count(self, spec: ViewSpec[Any], o: BulkOutcome) -> None:
        p, view = self.progress, spec.view.value
        p.present += o.present
        p.busy += o.busy
        p.loaded += o.loaded
        p.filled += o.filled
        p.rejected += o.rejected
        for outcome, n in (
            ("present", o.present),
            ("busy", o.busy),
            ("filled", o.filled),
            ("rejected", o.rejected),
        ):
            if n:
                self.metrics.entries.labels(view, outcome).inc(n)

    def _loader(
        self, spec: ViewSpec[Any]
    ) -> Callable[[Sequence[int]], Awaitable[Mapping[int, Any]]]:
        async def load(ids: Sequence[int]) -> Mapping[int, Any]:
            await self.limit.acquire(len(ids))
            async with self.sessions() as s:
                if spec is ORDER:
                    return await repository.load_order_details_many(s, ids)
                if spec is INVENTORY:
                    return await repository.load_inventory_many(s, ids)
                out = {}
                for cid in ids:
                    history = await repository.load_customer_history(s, cid)
                    if history is not None:
                        out[cid] = history
                return out

        return load


@dataclass
class Warming:
    """The warmer and its task, for the app's lifecycle (:mod:`ordercache.app.wiring`)."""

    warmer: CacheWarmer
    task: asyncio.Task[None] | None = field(default=None)

    def start(self) -> None:
        self.task = asyncio.create_task(self.warmer.run(), name="cache-warming")

    async def stop(self) -> None:
        await cancel_and_wait(self.task)
        self.task = None
