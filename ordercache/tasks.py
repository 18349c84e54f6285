"""Stopping a background task for certain.

One ``task.cancel()`` is a request, not a guarantee: a library may swallow it (on
Python 3.11, ``asyncio.wait_for`` returns the inner result when the inner future
completes in the same step as the cancellation, and the cancellation is lost). A
task whose loop goes on after that never ends, and whoever awaited it — a worker's
shutdown — hangs with it. :func:`cancel_and_wait` asks again until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


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
