"""The cache's typed interface, declared once.

:class:`~ordercache.cache.service.CacheService` implements it (checked by mypy
below); web views and agents depend on this protocol, not on Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from pydantic import BaseModel

from ordercache.cache.ops import CacheOp
from ordercache.cache.views import View, ViewSpec

if TYPE_CHECKING:
    from ordercache.cache.service import BodyResult, CacheResult

T = TypeVar("T", bound=BaseModel)


class Cache(Protocol):
    """Typed get / set / delete / invalidate / batch / cache-aside."""

    @property
    def degraded(self) -> bool:
        """True while Redis is treated as down (reads bypass, fills are skipped)."""
        ...

    async def get(self, spec: ViewSpec[T], entity_id: object) -> T | None:
        """The cached value; ``None`` on a miss, a cached "not found" or a Redis error."""
        ...

    async def get_many(self, spec: ViewSpec[T], ids: Iterable[object]) -> dict[int, T]:
        """Hits among ``ids`` in one round trip."""
        ...

    async def get_or_load(
        self, spec: ViewSpec[T], entity_id: object, loader: Callable[[int], Awaitable[T | None]]
    ) -> CacheResult[T]:
        """Cache-aside read with database fallback; never raises a Redis error."""
        ...

    async def get_or_load_body(
        self, spec: ViewSpec[T], entity_id: object, loader: Callable[[int], Awaitable[T | None]]
    ) -> BodyResult:
        """:meth:`get_or_load` answering the view's JSON; a hit is served as stored."""
        ...

    async def set(self, spec: ViewSpec[T], value: T) -> bool:
        """Version-guarded write; False if a newer version is cached or tombstoned."""
        ...

    async def set_many(self, spec: ViewSpec[T], values: Sequence[T]) -> int:
        """Version-guarded writes in one pipeline; how many were written."""
        ...

    async def invalidate(self, view: View, entity_id: object, version: int | None = None) -> bool:
        """Drop the entry and leave a tombstone that voids older fills."""
        ...

    async def delete(self, view: View, entity_id: object) -> bool:
        """Plain delete (no tombstone)."""
        ...

    async def apply(self, ops: Sequence[CacheOp]) -> list[int]:
        """Carry out invalidations and refreshes in one pipeline, in order."""
        ...

    async def server_identity(self) -> bytes | None:
        """The Redis server's identity (changes on restart or failover); None if unknown."""
        ...


if TYPE_CHECKING:
    from ordercache.cache.service import CacheService

    _: type[Cache] = CacheService  # mypy: the service implements the interface
