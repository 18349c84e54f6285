"""The cache service: typed cache-aside with version-guarded fills.

Readers call :meth:`CacheService.get_or_load`; the event pipeline calls
:meth:`CacheService.apply`. The guarantees (docs/architecture.md, invariants 1, 4, 5, 7):

* A fill is a compare-and-set (``fill.lua``): it carries the guard generation read
  *before* the database load, and loses if an invalidation happened since, or if its
  version is older than the invalidation's tombstone floor or the cached entry.
* Concurrent misses of one key in this process share one load (single-flight);
  across processes a fill lease (SET NX PX with a token) makes others wait briefly
  for the leader's fill instead of loading too.
* A Redis error never reaches a reader: reads fall back to the loader ("bypass"),
  fills are skipped while degraded, and a circuit breaker stops calling Redis after
  consecutive failures, probing again after a pause. ``apply`` on the other hand
  raises :class:`CacheError` so the pipeline retries and holds its offset.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import TypeVar

from pydantic import BaseModel

from ordercache.cache.backend import (
    ACQUIRE,
    FILL,
    INVALIDATE,
    INVALIDATE_MANY,
    REFRESH,
    RedisCacheBackend,
    ScriptCall,
)
from ordercache.cache.breaker import CircuitBreaker
from ordercache.cache.codec import CorruptEntryError, encode_negative, encode_value, entry_body
from ordercache.cache.keys import KeySpace, TtlPolicy, validate_id
from ordercache.cache.metrics import FILL_REJECT_REASONS, CacheMetrics
from ordercache.cache.near import NearCache, NearEntry
from ordercache.cache.ops import CacheOp, Invalidate, Refresh
from ordercache.cache.results import BodyResult, CacheConfig, CacheResult, Loader, Status
from ordercache.cache.singleflight import SingleFlight
from ordercache.cache.views import SPECS, View, ViewSpec
from ordercache.cache.xfetch import EarlyRefresh
from ordercache.errors import CacheError

log = logging.getLogger(__name__)

__all__ = [
    "MULTI_CHUNK",
    "BodyResult",
    "CacheConfig",
    "CacheResult",
    "CacheService",
    "Loader",
    "Status",
    "build_cache_service",
]

T = TypeVar("T", bound=BaseModel)


class _Skip(enum.Enum):
    """What ``_hit_raw`` answers when Redis must not be used for this read."""

    BYPASS = enum.auto()


_BYPASS = _Skip.BYPASS

#: Invalidations per ``invalidate_many`` call (bounds the time one script blocks Redis).
MULTI_CHUNK = 200


class CacheService:
    """Typed get / set / delete / invalidate / batch / cache-aside over Redis."""

    def __init__(
        self,
        backend: RedisCacheBackend,
        keys: KeySpace,
        ttls: TtlPolicy,
        metrics: CacheMetrics,
        *,
        breaker: CircuitBreaker | None = None,
        config: CacheConfig | None = None,
        near: NearCache | None = None,
    ) -> None:
        self.backend = backend
        #: The near-cache (L1), or None when it is off (ORDERCACHE_NEAR_CACHE).
        self.near = near
        if near is not None:
            metrics.near_entries.set_function(near.__len__)
            near.on_flush = lambda reason: metrics.near_flushes.labels(reason).inc()
        self.keys = keys
        self.ttls = ttls
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self.config = config or CacheConfig()
        self._flight: SingleFlight[CacheResult[BaseModel]] = SingleFlight()
        self._req = {
            (v, r): metrics.requests.labels(v.value, r)
            for v in View
            for r in ("hit", "miss", "bypass", "negative_hit")
        }
        self._get_seconds = {v: metrics.op_seconds.labels(v.value, "get") for v in View}
        self._near_found = metrics.near_hits.hits
        self._near_negative = metrics.near_hits.negative
        self._hits = {v: self._req[(v, "hit")] for v in View}
        # Entry keys of the hot paths from a per-view head: KeySpace.entry's enum and
        # spec lookups cost more than the rest of a near-cache hit.
        self._key_head = {v: keys.entry(v, 0).removesuffix("0}") for v in View}
        assert all(f"{self._key_head[v]}7}}" == keys.entry(v, 7) for v in View)
        self._negative_hits = {v: self._req[(v, "negative_hit")] for v in View}
        self._early = EarlyRefresh(self)
        self._get_many_seconds = {v: metrics.op_seconds.labels(v.value, "get_many") for v in View}

    # ------------------------------------------------------------ breaker glue
    @property
    def degraded(self) -> bool:
        return self.breaker.degraded

    def _ok(self) -> None:
        if self.breaker.degraded:
            self.breaker.success()
            self.metrics.breaker_state.set(int(self.breaker.state))
        else:
            self.breaker.success()

    def _failed(self, view: View, op: str, exc: CacheError) -> None:
        self.breaker.failure()
        self.metrics.breaker_state.set(int(self.breaker.state))
        if self.near is not None and self.breaker.degraded:
            # Redis is treated as down: its invalidations may not reach us either.
            self.near.flush("breaker")
        self.metrics.errors.labels(view.value, op).inc()
        log.warning("cache %s on %s failed: %s", op, view.value, exc)

    # ------------------------------------------------------------------ reads
    async def get(self, spec: ViewSpec[T], entity_id: object) -> T | None:
        """The cached value, or ``None`` on a miss, a cached "not found" or an error."""
        eid = validate_id(entity_id)
        raw = await self._get_raw(spec.view, self.keys.entry(spec.view, eid))
        if raw is None:
            return None
        try:
            return spec.decode(raw)
        except CorruptEntryError:
            return None

    async def _get_raw(self, view: View, key: str) -> bytes | None:
        raw = await self._hit_raw(view, key)
        return None if isinstance(raw, _Skip) else raw

    async def get_many(self, spec: ViewSpec[T], ids: Iterable[object]) -> dict[int, T]:
        """Hits among ``ids`` in one MGET (cached "not found" and misses are absent)."""
        eids = [validate_id(i) for i in ids]
        if not eids or not self.breaker.allow():
            return {}
        view = spec.view
        head = self._key_head[view]
        t0 = time.perf_counter()
        try:
            raws = await self.backend.mget([f"{head}{e}}}" for e in eids])
        except CacheError as exc:
            self._failed(view, "get_many", exc)
            return {}
        self._get_many_seconds[view].observe(time.perf_counter() - t0)
        self._ok()
        return {
            eid: value
            for eid, value in zip(eids, spec.decode_many(raws), strict=True)
            if value is not None
        }

    async def get_or_load(
        self, spec: ViewSpec[T], entity_id: object, loader: Loader[T]
    ) -> CacheResult[T]:
        """Cache-aside read: Redis, else one (single-flight, leased) load and a guarded fill."""
        eid = validate_id(entity_id)
        view = spec.view
        key = f"{self._key_head[view]}{eid}}}"  # == self.keys.entry(view, eid)
        near = self.near
        token = 0
        if near is not None and near.live and not self.breaker.degraded:
            entry = near.get(key)
            if entry is not None and not entry.decoded:
                try:
                    entry.value, entry.decoded = CacheResult(spec.decode(entry.raw), "hit"), True
                except CorruptEntryError:  # kept by a body read; never served
                    near.invalidate((key,))
                    entry = None
            if entry is not None:
                # the result is immutable: built once per entry, handed out as is
                result: CacheResult[T] = entry.value
                self._near_hit(view, result.value is not None)
                return result
            token = near.token()
        # _hit_raw inlined: this is the hot path with the near-cache off
        if not self.breaker.allow():
            return await self._bypass(spec, eid, loader)
        t0 = time.perf_counter()
        try:
            raw = await self.backend.get(key)
        except CacheError as exc:
            self._failed(view, "get", exc)
            return await self._bypass(spec, eid, loader)
        self._get_seconds[view].observe(time.perf_counter() - t0)
        self._ok()
        if raw is not None:
            try:
                value = spec.decode(raw)
            except CorruptEntryError:
                log.warning("corrupt %s entry replaced", view.value)
            else:
                (self._hits if value is not None else self._negative_hits)[view].inc()
                result = CacheResult(value, "hit")
                if near is not None:
                    kept = self._near_put(near, view, key, raw, token, value is None)
                    if kept is not None:
                        kept.value, kept.decoded = result, True
                if self.config.xfetch_beta > 0:
                    self._early.maybe(spec, eid, raw, loader)
                return result
        return await self._not_hit(spec, eid, key, loader)

    async def get_or_load_body(
        self, spec: ViewSpec[T], entity_id: object, loader: Loader[T]
    ) -> BodyResult:
        """:meth:`get_or_load` answering the view's JSON: a hit is the stored bytes as
        they are (no decode, no re-encode); a miss is the loaded value encoded once."""
        eid = validate_id(entity_id)
        view = spec.view
        key = f"{self._key_head[view]}{eid}}}"  # == self.keys.entry(view, eid)
        near = self.near
        token = 0
        if near is not None and near.live and not self.breaker.degraded:
            entry = near.get(key)
            if entry is not None:
                if not entry.sliced:
                    entry.body, entry.sliced = BodyResult(entry_body(entry.raw), "hit"), True
                answer: BodyResult = entry.body
                self._near_hit(view, answer.body is not None)
                return answer
            token = near.token()
        raw = await self._hit_raw(view, key)
        if raw is _BYPASS:
            result = await self._bypass(spec, eid, loader)
        elif raw is not None:
            try:
                body = entry_body(raw)
            except CorruptEntryError:
                log.warning("corrupt %s entry replaced", view.value)
            else:
                self._req[(view, "hit" if body is not None else "negative_hit")].inc()
                answer = BodyResult(body, "hit")
                if near is not None:
                    kept = self._near_put(near, view, key, raw, token, body is None)
                    if kept is not None:
                        kept.body, kept.sliced = answer, True
                if self.config.xfetch_beta > 0:
                    self._early.maybe(spec, eid, raw, loader)
                return answer
            result = await self._not_hit(spec, eid, key, loader)
        else:
            result = await self._not_hit(spec, eid, key, loader)
        value = result.value
        return BodyResult(
            None if value is None else value.__pydantic_serializer__.to_json(value),
            result.status,
        )

    def _near_hit(self, view: View, found: bool) -> None:
        # plain integers, moved into the requests counter at each scrape (NearHits)
        (self._near_found if found else self._near_negative)[view] += 1

    def _near_put(
        self, near: NearCache, view: View, key: str, raw: bytes, token: int, negative: bool
    ) -> NearEntry | None:
        # never longer than the Redis entry could live (Redis also broadcasts expiry)
        ttl = self.ttls.negative if negative else self.ttls.base_seconds(view)
        return near.put(key, raw, token, ttl=float(ttl))

    async def _hit_raw(self, view: View, key: str) -> bytes | _Skip | None:
        """The entry, ``None`` on a miss, or ``_BYPASS`` (breaker open or Redis error:
        the caller serves from the database without touching Redis again)."""
        if not self.breaker.allow():
            return _BYPASS
        t0 = time.perf_counter()
        try:
            raw = await self.backend.get(key)
        except CacheError as exc:
            self._failed(view, "get", exc)
            return _BYPASS
        self._get_seconds[view].observe(time.perf_counter() - t0)
        self._ok()
        return raw

    async def _not_hit(
        self, spec: ViewSpec[T], eid: int, key: str, loader: Loader[T]
    ) -> CacheResult[T]:
        result, shared = await self._flight.do(
            key,
            lambda: self._miss(spec, eid, loader),  # type: ignore[arg-type]
        )
        if shared:
            self.metrics.stampede_waits.labels(spec.view.value, "singleflight").inc()
        return result  # type: ignore[return-value]

    async def _bypass(self, spec: ViewSpec[T], eid: int, loader: Loader[T]) -> CacheResult[T]:
        """Serve from the database without touching Redis; still one load per key."""
        self._req[(spec.view, "bypass")].inc()

        async def load() -> CacheResult[T]:
            return CacheResult(await self._load(spec.view, eid, loader), "bypass")

        result, shared = await self._flight.do(
            "bypass:" + self.keys.entry(spec.view, eid),
            load,  # type: ignore[arg-type]
        )
        if shared:
            self.metrics.stampede_waits.labels(spec.view.value, "singleflight").inc()
        return CacheResult(result.value, "bypass")  # type: ignore[arg-type]

    async def _load(self, view: View, eid: int, loader: Loader[T]) -> T | None:
        t0 = time.perf_counter()
        try:
            return await loader(eid)
        finally:
            self.metrics.loader_seconds.labels(view.value).observe(time.perf_counter() - t0)

    async def _miss(self, spec: ViewSpec[T], eid: int, loader: Loader[T]) -> CacheResult[T]:
        view = spec.view
        k = self.keys
        keys = k.triple(view, eid)
        token = secrets.token_hex(8)
        try:
            raw, gen, leased = await self.backend.call(
                ScriptCall(ACQUIRE, keys, (token, self.config.lease_ms))
            )
        except CacheError as exc:
            self._failed(view, "acquire", exc)
            return await self._bypass(spec, eid, loader)
        corrupt = False
        if raw is not None:
            try:
                value = spec.decode(raw)
            except CorruptEntryError:
                # Drop it (its version prefix cannot be trusted either) and replace it
                # with a fill below, without waiting for anyone else.
                corrupt = True
                try:
                    await self.backend.delete(keys[0])
                except CacheError as exc:
                    self._failed(view, "delete", exc)
            else:
                self._req[(view, "hit" if value is not None else "negative_hit")].inc()
                return CacheResult(value, "hit")
        if not leased and not corrupt:
            waited = await self._wait_for_fill(spec, keys[0])
            if waited is not None:
                self.metrics.stampede_waits.labels(view.value, "lease").inc()
                self._req[(view, "hit")].inc()
                return waited
        self._req[(view, "miss")].inc()
        started = time.monotonic()
        value = await self._load(view, eid, loader)
        took = time.monotonic() - started
        if took < self.config.max_fill_age:
            await self._fill(spec, keys, gen, value, token if leased else "", took)
        return CacheResult(value, "miss")

    async def _wait_for_fill(self, spec: ViewSpec[T], key: str) -> CacheResult[T] | None:
        deadline = time.monotonic() + self.config.lease_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(self.config.lease_poll)
            try:
                raw = await self.backend.get(key)
            except CacheError:
                return None
            if raw is not None:
                try:
                    return CacheResult(spec.decode(raw), "hit")
                except CorruptEntryError:
                    return None
        return None

    async def _fill(
        self,
        spec: ViewSpec[T],
        keys: tuple[str, str, str],
        gen: bytes | str,
        value: T | None,
        token: str,
        took: float = 0.0,
    ) -> None:
        view = spec.view
        if self.breaker.degraded:
            return  # no fill while degraded: the entry could miss an invalidation
        if value is None:
            if not self.config.negative_caching:
                return
            payload, version, ttl = encode_negative(0), 0, self.ttls.ttl_ms(view, negative=True)
        else:
            version, ttl = value.version, self.ttls.ttl_ms(view)  # type: ignore[attr-defined]
            # the load time and expiry, for early refresh (xfetch.py)
            payload = encode_value(
                value,
                delta_ms=max(1, round(took * 1000)),
                expires_ms=int(time.time() * 1000) + ttl,
            )
        t0 = time.perf_counter()
        try:
            if not self.config.guard:
                await self.backend.client.set(keys[0], payload, px=ttl)
                return
            outcome = await self.backend.call(
                ScriptCall(FILL, keys, (gen, version, payload, ttl, token))
            )
        except CacheError as exc:
            self._failed(view, "fill", exc)
            return
        self.metrics.op_seconds.labels(view.value, "fill").observe(time.perf_counter() - t0)
        if outcome != b"ok":
            reason = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
            if reason in FILL_REJECT_REASONS:
                self.metrics.fills_rejected.labels(view.value, reason).inc()

    # ----------------------------------------------------------------- writes
    async def set(self, spec: ViewSpec[T], value: T) -> bool:
        """Write ``value`` unless a newer version is cached or tombstoned. Raises CacheError."""
        eid = validate_id(spec.entity_id(value))
        return bool((await self.apply([Refresh(spec.view, eid, value.version, value)]))[0])  # type: ignore[attr-defined]

    async def set_many(self, spec: ViewSpec[T], values: Sequence[T]) -> int:
        """Version-guarded writes in one pipeline; returns how many were written."""
        ops: list[CacheOp] = [
            Refresh(spec.view, validate_id(spec.entity_id(v)), v.version, v)  # type: ignore[attr-defined]
            for v in values
        ]
        return sum(int(r) for r in await self.apply(ops))

    async def invalidate(self, view: View, entity_id: object, version: int | None = None) -> bool:
        """Invalidate with a tombstone (see ``invalidate.lua``). Raises CacheError."""
        eid = validate_id(entity_id)
        return bool((await self.apply([Invalidate(view, eid, version)]))[0])

    async def delete(self, view: View, entity_id: object) -> bool:
        """Plain delete of the entry (no tombstone). Prefer :meth:`invalidate`."""
        eid = validate_id(entity_id)
        try:
            return await self.backend.delete(self.keys.entry(view, eid)) > 0
        except CacheError as exc:
            self._failed(view, "delete", exc)
            raise

    def calls_for(self, ops: Iterable[CacheOp]) -> list[ScriptCall]:
        """The script calls that carry out ``ops`` in order (pure; for batching).

        Runs of invalidations go out as one ``invalidate_many`` call of up to
        ``MULTI_CHUNK`` entries where the server allows it (not in a cluster).
        """
        k = self.keys
        tomb = self.ttls.tombstone_ms()
        calls: list[ScriptCall] = []
        run_keys: list[str] = []
        run_versions: list[str] = []

        def flush() -> None:
            if run_versions:
                calls.append(
                    ScriptCall(
                        INVALIDATE_MANY, tuple(run_keys), (tomb, *run_versions), len(run_versions)
                    )
                )
                run_keys.clear()
                run_versions.clear()

        multi = self.backend.multi_key
        for op in ops:
            keys = k.triple(op.view, op.entity_id)
            if isinstance(op, Invalidate):
                ver = "" if op.version is None else str(op.version)
                if multi:
                    run_keys.extend(keys)
                    run_versions.append(ver)
                    if len(run_versions) >= MULTI_CHUNK:
                        flush()
                    continue
                calls.append(ScriptCall(INVALIDATE, keys, (ver, tomb)))
            else:
                flush()
                payload = SPECS[op.view].encode(op.value)
                calls.append(
                    ScriptCall(
                        REFRESH, keys, (op.version, payload, self.ttls.ttl_ms(op.view), tomb)
                    )
                )
        flush()
        return calls

    async def server_identity(self) -> bytes | None:
        """The Redis server's identity (changes on restart or failover); None if unknown."""
        return await self.backend.server_identity()

    async def apply(self, ops: Sequence[CacheOp]) -> list[int]:
        """Carry out ``ops`` in one pipeline, in order. Raises CacheError on any failure,
        so the caller can retry the batch (every op is idempotent under replay)."""
        if not ops:
            return []
        t0 = time.perf_counter()
        calls = self.calls_for(ops)
        try:
            replies = await self.backend.call_many(calls)
        except CacheError as exc:
            self._failed(ops[0].view, "apply", exc)
            raise
        results: list[int] = []
        for call, reply in zip(calls, replies, strict=True):
            if call.script is INVALIDATE_MANY:
                results.extend(int(r) for r in reply)
            else:
                results.append(int(reply))
        self._ok()
        self.metrics.op_seconds.labels(ops[0].view.value, "apply").observe(time.perf_counter() - t0)
        return results


def build_cache_service(
    client: object,
    keys: KeySpace,
    ttls: TtlPolicy,
    metrics: CacheMetrics,
    *,
    timeout: float,
    breaker: CircuitBreaker | None = None,
    config: CacheConfig | None = None,
    near: NearCache | None = None,
) -> CacheService:
    """A service over a redis-py asyncio client."""
    backend = RedisCacheBackend(client, timeout=timeout)  # type: ignore[arg-type]
    return CacheService(backend, keys, ttls, metrics, breaker=breaker, config=config, near=near)
