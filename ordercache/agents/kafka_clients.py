"""Starting aiokafka clients without leaking a connection when the start is cut short.

aiokafka's ``bootstrap()`` keeps the connection it is bootstrapping through in a
local variable and closes it only on the errors it expects: cancelled half-way (a
worker stopped during start-up, an ``asyncio.timeout`` around a health check) that
connection is never closed, and Python reports an unclosed ``AIOKafkaConnection``
when it is collected. So the start is never cancelled: it runs as a task of its own,
the caller stops *waiting* for it (timeout or cancellation), and the client is
closed once the start has ended — the start itself is bounded by the client's own
request timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import mode

from ordercache.agents.progress import describe_failure
from ordercache.retry import Backoff

log = logging.getLogger(__name__)

#: Clean-ups still running after their caller gave up waiting (kept referenced).
_closing: set[asyncio.Task[None]] = set()


async def start_or_close(
    start: Coroutine[Any, Any, object],
    close: Callable[[], Awaitable[object]],
    *,
    timeout: float | None = None,
) -> None:
    """Await ``start`` (at most ``timeout`` seconds). If it fails, the client is closed
    before the error is raised; if the wait times out (``TimeoutError``) or is
    cancelled, the client is closed as soon as ``start`` ends, in the background."""
    task = asyncio.ensure_future(start)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except BaseException:
        if task.done():
            await _close(close)
        else:
            cleanup = asyncio.ensure_future(_close_after(task, close))
            _closing.add(cleanup)
            cleanup.add_done_callback(_closing.discard)
        raise


async def _close_after(
    task: asyncio.Future[object], close: Callable[[], Awaitable[object]]
) -> None:
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: the caller already has its own error
    await _close(close)


async def _close(close: Callable[[], Awaitable[object]]) -> None:
    try:
        await close()
    except Exception as exc:  # noqa: BLE001 - closing after a failure is best effort
        log.debug("closing a Kafka client failed: %s", exc)


async def drain(timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) for the background closes to finish: called
    before the event loop ends, so no client is left half-closed."""
    if _closing:
        await asyncio.wait(set(_closing), timeout=timeout)


async def start_until_up(
    start: Callable[[], Awaitable[object]],
    service: mode.Service,
    *,
    what: str,
    backoff: Backoff | None = None,
) -> bool:
    """Call ``start`` until it succeeds (True) or ``service`` is stopping (False).

    For the clients that a worker must not die without: a broker that is down when
    the worker starts is waited for, with backoff and one warning per failed attempt
    naming ``what`` and the error. ``start`` cleans up after itself when it fails
    (:func:`start_or_close`)."""
    backoff = backoff or Backoff(0.5, 10.0)
    while not service.should_stop:
        try:
            await start()
        except Exception as exc:  # noqa: BLE001 - every failure means "not yet"
            delay = backoff.next_delay()
            log.warning(
                "broker not reachable (%s): %s waits; attempt %d, next in %.1fs",
                describe_failure(exc), what, backoff.attempt, delay,
            )  # fmt: skip
            await service.sleep(delay)
            continue
        if backoff.attempt:
            log.info("broker reachable: %s started after %d attempts", what, backoff.attempt + 1)
        return True
    return False
