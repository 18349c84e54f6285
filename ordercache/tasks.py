"""Stopping a background task for certain, and never half-way through a step.

One ``task.cancel()`` is a request, not a guarantee: a library may swallow it (on
Python 3.11, ``asyncio.wait_for`` returns the inner result when the inner future
completes in the same step as the cancellation, and the cancellation is lost). A
task whose loop goes on after that never ends, and whoever awaited it — a worker's
shutdown — hangs with it. :func:`cancel_and_wait` asks again until the task is done.

The opposite need: a step that must not be abandoned half-way — a database
transaction, whose commit or rollback a cancellation would otherwise interrupt,
leaving the connection to be reset while cancelled. :func:`run_to_completion`
lets the step finish and only then lets the cancellation through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Future[Any] | None, *, every: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``every``
    seconds while it runs on. Its result or error is not raised (a stop is asked)."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()  # retrieved: the task's own error was its to report


async def run_to_completion(step: Coroutine[Any, Any, T]) -> T:
    """Await ``step`` in a task of its own. A cancellation of the caller waits until
    the step has ended and is raised after it (the step's own error, if it had one,
    is then dropped: the step has cleaned up after it, and a stop was asked)."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = exc  # the step goes on; a second cancel is waited out the same
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved
        raise cancelled
    return task.result()
