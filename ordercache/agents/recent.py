"""What the pipeline applied in the last few seconds, kept for a failover re-apply.

Asynchronous replication may drop a Redis primary's newest writes when a replica takes
over; the pipeline keeps a short window of applied cache operations and mirrored
tracking records and gives them to the new server again (both are idempotent).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class RecentWindow(Generic[T]):
    """Items added in the last ``seconds`` (monotonic clock), oldest first."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._items: deque[tuple[float, T]] = deque()

    def add(self, items: Iterable[T]) -> None:
        now = self._clock()
        self._items.extend((now, item) for item in items)
        self._prune(now)

    def items(self) -> list[T]:
        """The items still inside the window."""
        self._prune(self._clock())
        return [item for _, item in self._items]

    def __bool__(self) -> bool:
        return bool(self._items)

    def _prune(self, now: float) -> None:
        horizon = now - self.seconds
        while self._items and self._items[0][0] < horizon:
            self._items.popleft()
