"""cancel_and_wait: a task that swallows a cancellation is still stopped."""

from __future__ import annotations

import asyncio

from ordercache.tasks import cancel_and_wait


async def _swallows(times: int, ticks: list[int]) -> None:
    """Loops for ever; the first ``times`` cancellations are lost (as a library that
    swallows one would lose them)."""
    while True:
        try:
            await asyncio.sleep(0.01)
            ticks.append(1)
        except asyncio.CancelledError:
            if times == 0:
                raise
            times -= 1
            me = asyncio.current_task()
            assert me is not None
            me.uncancel()


async def test_a_swallowed_cancellation_is_asked_again_until_the_task_ends() -> None:
    ticks: list[int] = []
    task = asyncio.create_task(_swallows(2, ticks))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait(task, every=0.05), timeout=30)
    assert task.cancelled()


async def test_a_single_cancel_is_not_enough_for_such_a_task() -> None:
    # The premise of the test above: one cancel() leaves the task running.
    ticks: list[int] = []
    task = asyncio.create_task(_swallows(1, ticks))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done()
    await cancel_and_wait(task, every=0.05)
    assert task.cancelled()


async def test_a_failed_task_is_not_raised_and_none_is_nothing() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), ValueError)
    await cancel_and_wait(None)
