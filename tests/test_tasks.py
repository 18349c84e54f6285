"""cancel_and_wait: a task that swallows a cancellation is still stopped.
run_to_completion: a step is never abandoned half-way by a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from ordercache.tasks import cancel_and_wait, run_to_completion


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


async def _step(release: asyncio.Event, log: list[str], *, fail: bool = False) -> int:
    log.append("began")
    await release.wait()
    log.append("ended")
    if fail:
        raise ValueError("boom")
    return 7


async def test_a_cancelled_caller_waits_for_the_step_and_then_is_cancelled() -> None:
    release, log = asyncio.Event(), []
    caller = asyncio.create_task(run_to_completion(_step(release, log)))
    await asyncio.sleep(0.01)
    assert log == ["began"]
    caller.cancel()
    await asyncio.sleep(0.01)
    caller.cancel()  # asked again, as cancel_and_wait does: still waited out
    await asyncio.sleep(0.01)
    assert not caller.done() and log == ["began"]
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert log == ["began", "ended"]


async def test_a_step_failing_after_the_cancel_still_ends_in_the_cancellation() -> None:
    release, log = asyncio.Event(), []
    caller = asyncio.create_task(run_to_completion(_step(release, log, fail=True)))
    await asyncio.sleep(0.01)
    caller.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert log == ["began", "ended"]


async def test_without_a_cancel_the_result_or_error_is_the_steps() -> None:
    release, log = asyncio.Event(), []
    release.set()
    assert await run_to_completion(_step(release, log)) == 7
    with pytest.raises(ValueError, match="boom"):
        await run_to_completion(_step(release, log, fail=True))
