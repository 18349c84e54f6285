"""The local default's topic truncation against the real broker (Tansu) and pipeline.

The bundled broker keeps every record in memory and has no retention, so the local
default empties the change topics once the pipeline has applied every record. These
tests check that nothing unapplied is ever deleted, that the pipeline reads the
recreated topics from offset 0, and that the sample traffic's producer really holds
still while paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from ordercache.agents.batch import BatchPlan
from ordercache.agents.pipeline import ChangePipeline
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.config.settings import Settings
from ordercache.local.traffic import GatedProducer
from ordercache.local.truncate import TopicTruncation
from ordercache.models.events import Entity, Op, RowChange
from ordercache.sample.producer import Topics
from tests.conftest import REDIS_URL, make_settings, unique
from tests.test_pipeline import eventually
from tests.workers import WorkerProcess

pytestmark = pytest.mark.kafka

PARTITIONS = 2
NOW = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class Env:
    settings: Settings
    pipeline: ChangePipeline
    producer: GatedProducer
    truncation: TopicTruncation
    ctx: AppContext
    applied: list[int]
    bootstrap: str

    @property
    def tps(self) -> list[TopicPartition]:
        s = self.settings
        return [
            TopicPartition(t, p)
            for t in (s.topic_orders, s.topic_inventory, s.topic_tracking)
            for p in range(PARTITIONS)
        ]

    async def ends(self) -> dict[TopicPartition, int]:
        """High watermarks from fetch responses (this broker's ListOffsets answers the
        last batch's base offset + 1 instead of its end)."""
        probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await probe.start()
        try:
            probe.assign(self.tps)
            for tp in self.tps:
                probe.seek(tp, 0)
            since = time.time() * 1000
            deadline = time.monotonic() + 30
            while any(
                (probe.last_poll_timestamp(tp) or 0) < since for tp in self.tps
            ):  # fmt: skip
                assert time.monotonic() < deadline, "no fetch answer in time"
                await probe.getmany(timeout_ms=100)
            return {tp: probe.highwater(tp) for tp in self.tps}
        finally:
            await probe.stop()


@pytest.fixture
async def env(kafka_broker: str) -> AsyncIterator[Env]:
    tag = unique("lt")
    settings = make_settings(
        redis_url=REDIS_URL,
        redis_key_prefix=tag,
        database_url="sqlite+aiosqlite:///:memory:",
        kafka_broker=kafka_broker,
        app_id=f"oc-{tag}",
        topic_orders=f"{tag}.orders",
        topic_inventory=f"{tag}.inventory",
        topic_tracking=f"{tag}.tracking",
        topic_dlq=f"{tag}.dlq",
        kafka_partitions=PARTITIONS,
    )
    ctx = AppContext.build(settings)
    applied = [0]

    async def count(bp: BatchPlan) -> None:
        applied[0] += len(bp.timestamps)

    pipeline = build_pipeline(ctx, [kafka_broker], hooks=[count])
    await pipeline.start()
    producer = GatedProducer([kafka_broker], Topics.from_settings(settings))
    await producer.start()
    truncation = TopicTruncation(
        pipeline,
        [kafka_broker],
        (settings.topic_orders, settings.topic_inventory, settings.topic_tracking),
        PARTITIONS,
        producers=[producer],
        max_records=50,
        interval=3600,  # rounds are run by the tests, not by the timer
        drain_timeout=2.0,
        registry=ctx.registry,
    )
    await truncation.start()
    yield Env(settings, pipeline, producer, truncation, ctx, applied, kafka_broker)
    await truncation.stop()
    await producer.stop()
    await pipeline.stop()
    client = aioredis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{tag}:*", count=500):
        await client.unlink(key)
    await client.aclose()
    await ctx.aclose()


def stock(pid: int, version: int) -> RowChange:
    after = {
        "product_id": pid,
        "available": 5,
        "reserved": 0,
        "version": version,
        "updated_at": NOW,
    }
    return RowChange(Entity.INVENTORY, Op.UPDATE, after=after)


async def send(producer: GatedProducer, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        await producer.emit_transaction([stock(1 + i % 37, 2 + i)], wait=False)
    await producer.flush()


async def test_consumed_topics_are_emptied_and_read_again_from_zero(env: Env) -> None:
    await send(env.producer, 300)

    async def all_applied() -> bool:
        return env.applied[0] == 300

    await eventually(all_applied)
    assert sum((await env.ends()).values()) == 300
    assert await env.truncation.maybe_truncate()
    assert set((await env.ends()).values()) == {0}
    assert env.truncation.records_freed == 300
    assert env.ctx.registry.get_sample_value("ordercache_local_truncations_total") == 1

    # the producer was resumed and the pipeline reads the recreated topics from 0
    await send(env.producer, 40, first=300)

    async def rest_applied() -> bool:
        return env.applied[0] == 340

    await eventually(rest_applied)
    assert sum((await env.ends()).values()) == 40


async def test_below_the_threshold_nothing_is_deleted(env: Env) -> None:
    await send(env.producer, 20)

    async def applied() -> bool:
        return env.applied[0] == 20

    await eventually(applied)
    assert not await env.truncation.maybe_truncate()
    assert sum((await env.ends()).values()) == 20


async def test_a_producer_it_does_not_hold_keeps_the_topics(env: Env) -> None:
    """Records keep arriving from a writer the truncation cannot pause: the round is
    abandoned and every record is applied."""
    await send(env.producer, 200)
    outsider = GatedProducer([env.bootstrap], Topics.from_settings(env.settings))
    await outsider.start()
    stop = asyncio.Event()
    sent = [0]

    async def write() -> None:
        while not stop.is_set():
            await outsider.emit_transaction([stock(1000 + sent[0] % 7, 1 + sent[0])])
            sent[0] += 1

    writer = asyncio.create_task(write())
    try:

        async def caught_up() -> bool:
            return env.applied[0] >= 200

        await eventually(caught_up)
        assert not await env.truncation.maybe_truncate()
    finally:
        stop.set()
        await writer
        await outsider.stop()
    assert env.truncation.truncations == 0
    assert env.ctx.registry.get_sample_value("ordercache_local_truncations_total") == 0

    async def everything_applied() -> bool:
        return env.applied[0] == 200 + sent[0]

    await eventually(everything_applied)
    assert sum((await env.ends()).values()) == 200 + sent[0]


async def test_paused_producer_sends_nothing_until_resumed(env: Env) -> None:
    assert await env.producer.pause()
    task = asyncio.create_task(env.producer.emit_transaction([stock(5, 99)]))
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        assert sum((await env.ends()).values()) == 0
    finally:
        await env.producer.resume()
    await asyncio.wait_for(task, 10)
    assert sum((await env.ends()).values()) == 1
    with contextlib.suppress(asyncio.CancelledError):
        task.cancel()


def test_the_local_default_worker_empties_its_consumed_topics(tmp_path: Path) -> None:
    """``ordercache worker`` on the local default (its own Tansu and redis-server)
    pauses its sample traffic and empties the change topics once consumed."""
    worker = WorkerProcess.configured(
        tmp_path,
        "local",
        local_seed_orders=50,
        simulate_rate=200,
        local_truncate_records=100,
        log_level="info",
    ).start()
    try:
        worker.wait_for_log("local default: emptied the consumed change topics", timeout=90)
    finally:
        rc = worker.terminate()
    assert rc == 0, worker.log()[-3000:]
    assert "Traceback" not in worker.log()
