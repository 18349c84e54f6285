"""In-process single-flight: concurrent callers for one key share one load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class SingleFlight(Generic[R]):
    """``await sf.do(key, fn)`` runs ``fn`` once per key at a time; the others wait for
    its result (or its exception). Cancelling a waiter does not cancel the shared load;
    cancelling the leader makes one of the waiters load instead."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[R]] = {}

    def in_flight(self, key: str) -> bool:
        return key in self._inflight

    async def do(self, key: str, fn: Callable[[], Awaitable[R]]) -> tuple[R, bool]:
        """Return ``(result, shared)``; ``shared`` is True for callers that waited."""
        fut = self._inflight.get(key)
        while fut is not None:
            try:
                return await asyncio.shield(fut), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not fut.cancelled() or (task is not None and task.cancelling()):
                    raise  # we were cancelled ourselves
                # The leader was cancelled, not us: take over (or join the next load).
                fut = self._inflight.get(key)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await fn()
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            # Mark retrieved: there may be no waiter, and that is fine.
            fut.exception()
            raise
        else:
            fut.set_result(result)
            return result, False
        finally:
            del self._inflight[key]
