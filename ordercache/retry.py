"""The one retry delay policy: exponential with full jitter, as redis-py computes it.

The Redis client's own retries (:mod:`ordercache.redisconn.client`), the change
pipeline's batch retries and the stream consumers' recovery loops all back off with
redis-py's :class:`~redis.backoff.ExponentialWithJitterBackoff`; :class:`Backoff`
adds the attempt counter and an interruptible sleep around it.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.backoff import ExponentialWithJitterBackoff

#: Attempts after which the delay stops growing (the cap has long been reached).
_MAX_ATTEMPT = 30


class Backoff:
    """Delays between retries; :meth:`reset` after a success."""

    def __init__(self, base: float, cap: float) -> None:
        self.policy = ExponentialWithJitterBackoff(cap=cap, base=base)
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next retry: random in [0, min(cap, base * 2**attempt)]."""
        delay = self.policy.compute(self.attempt)
        self.attempt = min(self.attempt + 1, _MAX_ATTEMPT)
        return delay

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next delay, or less if ``stop`` is set meanwhile."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
