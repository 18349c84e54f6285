"""Kafka clients whose start is cut short leave no connection behind (real broker)."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from ordercache.agents import kafka_clients
from ordercache.agents.pipeline import ensure_topics
from tests.conftest import unique

pytestmark = pytest.mark.kafka


async def test_a_start_cancelled_at_any_point_leaks_no_connection(kafka_broker: str) -> None:
    # aiokafka's bootstrap leaks the connection it is using when cancelled half-way;
    # ensure_topics must close it anyway. Cancel after every step of the event loop
    # until the call completes on its own, so every point of the start is hit.
    topic = unique("leak.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for steps in range(1, 500):
            task = asyncio.ensure_future(ensure_topics([kafka_broker], [topic], 1))
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.done():
                task.result()
                break
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                continue
            break  # cancelled during its very last step, which completed anyway
        else:
            pytest.fail("ensure_topics never completed")
        # the abandoned starts end and are closed in the background
        await kafka_clients.drain(timeout=30)
        assert not kafka_clients._closing
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    assert steps > 5  # the loop did cancel the start at several points
