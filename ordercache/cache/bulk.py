"""Many missing entries filled at once, through the same version guard as a miss.

Cache warming (:mod:`ordercache.warming`) uses it: one pipeline of ``acquire.lua``
(which reads each entry, its fill generation, and takes its fill lease), one batch
load from the database of the ids still missing, one pipeline of ``fill.lua``
(compare-and-set against the generation read *before* the load). An invalidation
that lands during the load voids that entry's fill exactly as it would a reader's.
Entries already cached, or being filled by a reader (lease taken), are left alone.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from ordercache.cache.backend import ACQUIRE, FILL, ScriptCall
from ordercache.cache.codec import encode_negative
from ordercache.cache.service import CacheService
from ordercache.cache.views import ViewSpec

T = TypeVar("T", bound=BaseModel)

#: Loads the views of many ids in one go; absent ids do not exist.
ManyLoader = Callable[[Sequence[int]], Awaitable[Mapping[int, T]]]


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    present: int = 0  # already cached: nothing loaded
    busy: int = 0  # a reader holds the fill lease: it fills
    loaded: int = 0  # loaded from the database
    filled: int = 0  # written by the guarded fill
    rejected: int = 0  # the guard refused (an invalidation or newer version won)


async def fill_missing(
    cache: CacheService, spec: ViewSpec[T], ids: Sequence[int], load_many: ManyLoader[T]
) -> BulkOutcome:
    """Fill the entries of ``ids`` that are not cached. Raises CacheError on Redis errors."""
    if not ids:
        return BulkOutcome()
    view = spec.view
    token = secrets.token_hex(8)
    triples = [cache.keys.triple(view, i) for i in ids]
    lease_ms = cache.config.lease_ms
    replies = await cache.backend.call_many(
        [ScriptCall(ACQUIRE, t, (token, lease_ms)) for t in triples]
    )
    todo: list[tuple[int, tuple[str, str, str], bytes]] = []
    present = busy = 0
    for eid, keys, (raw, gen, leased) in zip(ids, triples, replies, strict=True):
        if raw is not None:
            present += 1
        elif not int(leased):
            busy += 1
        else:
            todo.append((eid, keys, gen))
    if not todo:
        return BulkOutcome(present, busy)
    started = time.monotonic()
    t0 = time.perf_counter()
    values = await load_many([eid for eid, _, _ in todo])
    cache.metrics.loader_seconds.labels(view.value).observe(time.perf_counter() - t0)
    if time.monotonic() - started >= cache.config.max_fill_age:
        return BulkOutcome(present, busy, len(todo))  # too old to trust the guard
    calls = []
    for eid, keys, gen in todo:
        value = values.get(eid)
        if value is None:
            payload, version = encode_negative(0), 0
            ttl = cache.ttls.ttl_ms(view, negative=True)
        else:
            payload, version = spec.encode(value), value.version  # type: ignore[attr-defined]
            ttl = cache.ttls.ttl_ms(view)
        calls.append(ScriptCall(FILL, keys, (gen, version, payload, ttl, token)))
    outcomes = await cache.backend.call_many(calls)
    filled = sum(1 for o in outcomes if o == b"ok")
    return BulkOutcome(present, busy, len(todo), filled, len(todo) - filled)
