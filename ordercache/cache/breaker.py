"""A small circuit breaker: Redis is skipped after repeated failures, then probed.

Pure logic with an injectable clock; the cache service records each Redis call's
outcome here and asks :meth:`allow` before using Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Opens after ``failures`` consecutive errors; after ``reset_seconds`` lets one
    probe through (half-open); a successful probe closes it, a failed one re-opens it."""

    def __init__(
        self,
        failures: int = 5,
        reset_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probe_in_flight = False
        self._probe_started = 0.0

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_seconds
        ):
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def degraded(self) -> bool:
        """True unless the breaker is closed: fills are skipped while degraded."""
        return self._state is not BreakerState.CLOSED

    def allow(self) -> bool:
        """May the caller use Redis now? In half-open state, one caller at a time."""
        if self._state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN:
            now = self._clock()
            # A probe that never reported (its caller was cancelled) expires after
            # one reset period, so the breaker cannot stay half-open forever.
            if not self._probe_in_flight or now - self._probe_started >= self.reset_seconds:
                self._probe_in_flight = True
                self._probe_started = now
                return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        self._state = BreakerState.CLOSED

    def failure(self) -> None:
        self._probe_in_flight = False
        self._failures += 1
        if self._state is not BreakerState.CLOSED or self._failures >= self.threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
