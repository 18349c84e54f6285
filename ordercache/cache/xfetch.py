"""Probabilistic early refresh (XFetch) of hot entries, before they expire.

Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache Stampede
Prevention" (VLDB 2015): a reader that finds an entry recomputes it early when

    now - delta * beta * ln(random()) >= expiry

where ``delta`` is how long the recomputation took and ``random()`` is uniform in
(0, 1]. The probability rises as expiry nears and is higher for slower loads, so a
hot key is refreshed by one of its readers shortly before it would expire (and its
readers miss), while a cold key simply expires. ``beta`` > 1 favours earlier
refreshes; 0 switches it off.

``delta`` and the expiry travel in the entry's prefix (:mod:`ordercache.cache.codec`),
written by the fill that stored it: the hit path needs no extra round trip.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ordercache.cache.service import CacheService
    from ordercache.cache.views import ViewSpec

log = logging.getLogger(__name__)

#: Beyond this many ``delta * beta`` before expiry the refresh probability is e**-40.
_FAR = 40.0


def header(raw: bytes) -> tuple[int, int] | None:
    """``(delta_ms, expires_ms)`` from an entry's prefix, if it records them."""
    end = raw.find(b"|", 0, 64)
    if end < 0:
        return None
    parts = raw[:end].split(b":")
    if len(parts) != 3 or raw[:1] != b"v":
        return None
    try:
        delta, expires = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    return (delta, expires) if delta > 0 else None


def due(
    delta_ms: int,
    expires_ms: int,
    now_ms: float,
    beta: float,
    rand: Callable[[], float] = random.random,
) -> bool:
    """Should this read refresh the entry now? (XFetch's test; ``rand`` in [0, 1).)"""
    if beta <= 0:
        return False
    if expires_ms - now_ms > delta_ms * beta * _FAR:
        return False  # the draw would have to be below e**-40: skip it
    return now_ms - delta_ms * beta * math.log(1.0 - rand()) >= expires_ms


class EarlyRefresh:
    """Starts XFetch refreshes for a cache service: at most one per key per process,
    in the background (the reader that triggers it is answered from the entry)."""

    def __init__(self, service: CacheService) -> None:
        self.service = service
        # held here until done: the loop keeps only a weak reference to a task
        self._running: dict[str, asyncio.Task[None]] = {}

    def maybe(
        self,
        spec: ViewSpec[Any],
        eid: int,
        raw: bytes,
        loader: Callable[[int], Awaitable[Any]],
    ) -> None:
        """After a hit on ``raw``: start a refresh if XFetch says so."""
        svc = self.service
        head = header(raw)
        if head is None or not due(*head, time.time() * 1000, svc.config.xfetch_beta):
            return
        key = svc.keys.entry(spec.view, eid)
        if key in self._running:
            return
        self._running[key] = asyncio.create_task(self._refresh(spec, eid, loader))

        def done(t: asyncio.Task[None]) -> None:
            self._running.pop(key, None)
            if not t.cancelled() and t.exception() is not None:
                log.warning("early refresh of %s failed: %r", spec.view.value, t.exception())

        self._running[key].add_done_callback(done)

    async def _refresh(
        self, spec: ViewSpec[Any], eid: int, loader: Callable[[int], Awaitable[Any]]
    ) -> None:
        """Reload and re-fill through the guarded fill. The fill lease keeps other
        processes from refreshing the same entry at once; the generation is read
        before the load, so an invalidation meanwhile voids this fill."""
        svc = self.service
        keys = svc.keys.triple(spec.view, eid)
        token = secrets.token_hex(8)
        try:
            pipe = svc.backend.client.pipeline(transaction=False)
            pipe.set(keys[2], token, nx=True, px=svc.config.lease_ms)
            pipe.hget(keys[1], "g")
            leased, gen = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - a Redis error: skip; the entry just expires
            log.debug("early refresh skipped: %s", type(exc).__name__)
            return
        if not leased:
            return  # another process is loading it
        svc.metrics.early_refreshes.labels(spec.view.value).inc()
        started = time.monotonic()
        value = await svc._load(spec.view, eid, loader)
        took = time.monotonic() - started
        if took < svc.config.max_fill_age:
            await svc._fill(spec, keys, gen or b"0", value, token, took)
