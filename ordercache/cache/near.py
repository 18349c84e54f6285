"""The near-cache (L1): a bounded in-process copy of Redis entries, kept coherent.

An entry is served only while the process is *live*: its invalidation listener
(:mod:`ordercache.cache.tracking`) is subscribed to Redis's key-change broadcasts
for the key prefix. Losing the listener (disconnect, failover, a missed health
check) or opening the circuit breaker flushes everything and stops serving until
the listener is subscribed again.

Two bounds hold even if an invalidation message were lost:

* every entry expires ``ttl`` seconds after it was read from Redis (never later
  than the view's Redis TTL: Redis also broadcasts an entry's expiry);
* at most ``max_entries`` entries (least recently used are dropped).

A fill races with invalidations: the reader takes a :meth:`token` *before* its
Redis ``GET``; :meth:`put` refuses the value if any invalidation of that key (or a
flush) was processed since the token. An invalidation for a write that Redis
applied after the ``GET`` is broadcast after it, so it removes the entry when it
arrives: that arrival delay is the coherence lag (see ``bench/cache.py``).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: How many recent invalidations a pending fill is checked against; a fill that
#: started longer ago than this many invalidations is simply not kept.
RECENT = 4096


@dataclass(slots=True)
class NearEntry:
    """A Redis entry as read (``raw``) and its deadline; the service keeps its answers
    here once built (``value``: the decoded read's result, ``body``: the body read's)."""

    raw: bytes
    expires: float
    value: Any = None
    decoded: bool = False
    body: Any = None
    sliced: bool = False


@dataclass(frozen=True, slots=True)
class NearConfig:
    max_entries: int = 10_000
    ttl: float = 5.0


class NearCache:
    """LRU + TTL map of Redis key -> entry, emptied by invalidations and flushes."""

    def __init__(
        self, config: NearConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or NearConfig()
        self._clock = clock
        self._data: OrderedDict[str, NearEntry] = OrderedDict()
        self._seq = 0  # invalidations and flushes processed
        self._floor = 0  # tokens below this are void (a flush happened since)
        self._recent: deque[tuple[int, str]] = deque(maxlen=RECENT)
        self.live = False
        self.flushes = 0
        self.invalidations = 0
        self.on_flush: Callable[[str], None] | None = None
        #: Set by a cluster's listener: whether a fill of this key may be kept (its
        #: slot is served by a primary whose broadcasts are heard).
        self.accepts: Callable[[str], bool] | None = None

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> NearEntry | None:
        """The live, unexpired entry for ``key``."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry

    def token(self) -> int:
        """Taken before a Redis read whose result may be :meth:`put` here."""
        return self._seq

    def put(
        self, key: str, raw: bytes, token: int, *, ttl: float | None = None
    ) -> NearEntry | None:
        """Keep ``raw`` (read after ``token`` was taken) unless it may be stale."""
        if not self.live or token < self._floor or not self._unchanged_since(key, token):
            return None
        if self.accepts is not None and not self.accepts(key):
            return None
        life = self.config.ttl if ttl is None else min(ttl, self.config.ttl)
        entry = NearEntry(raw, self._clock() + life)
        self._data[key] = entry
        self._data.move_to_end(key)
        if len(self._data) > self.config.max_entries:
            self._data.popitem(last=False)
        return entry

    def _unchanged_since(self, key: str, token: int) -> bool:
        seq = self._seq
        if seq == token:
            return True
        if seq - token > len(self._recent):
            return False  # older than what is remembered: assume it changed
        for s, k in reversed(self._recent):
            if s <= token:
                return True
            if k == key:
                return False
        return True

    # ---------------------------------------------------------- invalidation
    def invalidate(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._seq += 1
            self.invalidations += 1
            self._recent.append((self._seq, key))
            self._data.pop(key, None)

    def flush(self, reason: str) -> None:
        """Drop everything and void every pending fill."""
        self._seq += 1
        self._floor = self._seq
        self._recent.clear()
        self._data.clear()
        self.flushes += 1
        if self.on_flush is not None:
            self.on_flush(reason)

    def go_live(self) -> None:
        """The listener is subscribed: from now on every change is seen."""
        self.flush("resubscribed")
        self.live = True

    def go_dark(self, reason: str) -> None:
        """The listener is gone: serve nothing, keep nothing."""
        self.live = False
        self.flush(reason)
