"""What the cache service answers and how it is configured (plain data)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)
Status = Literal["hit", "miss", "bypass"]
Loader = Callable[[int], Awaitable[T | None]]


@dataclass(frozen=True, slots=True)
class CacheResult(Generic[T]):
    """A read's value (``None``: not found) and where it came from (``X-Cache``)."""

    value: T | None
    status: Status


@dataclass(frozen=True, slots=True)
class BodyResult:
    """A read's JSON body as stored (``None``: not found) and where it came from."""

    body: bytes | None
    status: Status


@dataclass(frozen=True, slots=True)
class CacheConfig:
    lease_ms: int = 3000
    #: How long a process waits for another process's fill before loading itself.
    lease_wait: float = 1.0
    lease_poll: float = 0.02
    #: Give up on filling when a load took longer than this (the tombstone must
    #: outlive every load for the generation check to hold).
    max_fill_age: float = 60.0
    negative_caching: bool = True
    #: Switch off the version guard (fills become plain SETs). For the stress test's
    #: "can it fail" half only; never in production.
    guard: bool = True
    #: XFetch's beta: how early hot entries are refreshed before they expire (0: off).
    xfetch_beta: float = 0.0
