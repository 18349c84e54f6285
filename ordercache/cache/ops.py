"""Cache operations as data: what the event pipeline asks the cache to do.

Agents turn events into these (a pure function) and hand a batch to
``CacheService.apply(ops)``, which executes them in one pipeline, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from ordercache.cache.views import View


@dataclass(frozen=True, slots=True)
class Invalidate:
    """Drop the entry and void in-flight fills.

    ``version`` is the row version the event carries, when the event is keyed by the
    view's own entity (e.g. an order change for the order view): the guard then
    rejects any later fill older than it. ``None`` means "no comparable version"
    (e.g. a history invalidated by an order change): fills that started before the
    invalidation are still voided through the guard's generation counter.
    """

    view: View
    entity_id: int
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """Write-through of a new value at ``version`` (ignored if not newer)."""

    view: View
    entity_id: int
    version: int
    value: BaseModel


CacheOp = Invalidate | Refresh
