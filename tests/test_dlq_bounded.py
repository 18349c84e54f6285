"""No record can halt a partition: dead letters too large for the DLQ are sent bounded.

Against the real broker (Tansu) and Redis. Measured here: Tansu enforces no
``message.max.bytes`` (it stores and serves a 100 MiB record, and ignores a topic's
``max.message.bytes``); the limit that bites is the DLQ producer's own
``max_request_size`` (aiokafka, 1 MiB by default), which refuses a dead letter
before sending with the non-retriable ``MessageSizeTooLargeError``. Before the
bounded letters, that error was retried for ever and the partition never moved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from ordercache.agents.dlq import dlq_key, record_size
from ordercache.agents.pipeline import ChangePipeline
from ordercache.agents.tracking import mirror_hook
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_mirror, build_pipeline
from ordercache.cache.views import INVENTORY, View
from ordercache.config.settings import Settings
from tests.conftest import REDIS_URL, make_settings, unique
from tests.test_pipeline import eventually, inventory_envelope, read_dlq, tracking_envelope

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024
#: Just over the DLQ limit (undecodable: invalid_json), and far over it (oversized).
JUST_OVER = MiB + 1
FAR_OVER = 8 * MiB


@pytest.fixture(scope="module")
async def env(
    kafka_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, AppContext, ChangePipeline]]:
    tag = unique("b")
    data = tmp_path_factory.mktemp("bounded")
    settings = make_settings(
        redis_url=REDIS_URL,
        redis_key_prefix=tag,
        database_url=f"sqlite+aiosqlite:///{Path(data) / 'unused.db'}",
        kafka_broker=kafka_broker,
        app_id=f"oc-{tag}",
        topic_orders=f"{tag}.orders",
        topic_inventory=f"{tag}.inventory",
        topic_tracking=f"{tag}.tracking",
        topic_dlq=f"{tag}.dlq",
        kafka_partitions=2,
        # the just-over value is parsed (and found undecodable), the far-over one is not
        event_max_bytes=2 * MiB,
        data_dir=data,
    )
    ctx = AppContext.build(settings)
    pipeline = build_pipeline(ctx, [kafka_broker], hooks=[mirror_hook(build_mirror(ctx))])
    await pipeline.start()
    yield settings, ctx, pipeline
    await pipeline.stop()
    client = aioredis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{tag}:*", count=500):
        await client.unlink(key)
    await client.aclose()
    await ctx.aclose()


def order_envelope(oid: int, version: int) -> bytes:
    return json.dumps(
        {
            "before": None,
            "after": {
                "id": oid, "customer_id": 1, "status": "paid", "total_cents": 100,
                "currency": "EUR", "created_at": "2026-03-01T10:00:00Z",
                "updated_at": "2026-03-01T10:00:00Z", "version": version,
            },
            "op": "u",
            "source": {"lsn": 1, "txId": 1, "ts_ms": 1, "table": "orders"},
            "ts_ms": 1,
        }
    ).encode()  # fmt: skip


async def test_too_large_dead_letters_are_bounded_and_the_partition_moves_on(
    env: Any, kafka_broker: str
) -> None:
    settings, ctx, pipeline = env
    base = 300_000_000 + (hash(unique()) % 1_000_000)
    oid, pid, tracked = base, base + 1, base + 2
    keys = {
        settings.topic_orders: str(oid).encode(),
        settings.topic_inventory: str(pid).encode(),
        settings.topic_tracking: str(tracked).encode(),
    }
    good = {
        settings.topic_orders: order_envelope(oid, 7),
        settings.topic_inventory: inventory_envelope(pid, 3, 11, sku="B"),
        settings.topic_tracking: tracking_envelope(1, tracked, "in_transit"),
    }
    producer = AIOKafkaProducer(bootstrap_servers=[kafka_broker], max_request_size=16 * MiB)
    await producer.start()
    sent: dict[tuple[str, int, int], bytes] = {}
    try:
        for topic, key in keys.items():
            for size, fill in ((JUST_OVER, b"\xfe"), (FAR_OVER, b"{")):
                value = fill + hashlib.sha256(topic.encode()).digest() * (size // 32)
                value = value[:size]
                meta = await producer.send_and_wait(
                    topic, value, key=key, headers=[("trace", b"t-1")]
                )
                sent[(topic, meta.partition, meta.offset)] = value
            # after them, on the same partition (same key): a good event that must apply
            await producer.send_and_wait(topic, good[topic], key=key)
    finally:
        await producer.stop()

    guard = ctx.keys.guard(View.ORDER, oid)
    stream = build_mirror(ctx).layout.order_stream(tracked)

    async def all_applied() -> bool:
        return (
            await ctx.redis.client.hget(guard, "f") == b"7"
            and await ctx.cache.get(INVENTORY, pid) is not None
            and await ctx.redis.client.xlen(stream) == 1
        )

    await eventually(all_applied, timeout=60)

    letters = await read_dlq(kafka_broker, settings.topic_dlq, len(sent))
    # (at least once: a retried send may add a duplicate, never lose one)
    assert {(dl.topic, dl.partition, dl.offset) for dl in letters} == set(sent)
    for letter in letters:
        assert letter.partition is not None and letter.offset is not None
        original = sent[(letter.topic, letter.partition, letter.offset)]
        expected_reason = "invalid_json" if len(original) == JUST_OVER else "oversized"
        assert letter.reason == expected_reason
        assert letter.bound is not None
        assert letter.bound.cause == "MessageSizeTooLargeError"
        assert letter.bound.value_size == len(original)
        assert letter.bound.value_sha256 == hashlib.sha256(original).hexdigest()
        assert letter.key == keys[letter.topic]
        assert letter.headers == (("trace", b"t-1"),)
        assert letter.value is not None and original.startswith(letter.value)
        assert MiB - 4096 < len(letter.value) < MiB  # as much as fits
        record = letter.to_record()
        assert record_size(*record) <= settings.dlq_max_bytes
        # the counting table's key reads the bounded letter like any other
        assert dlq_key(record.headers, 0) == f"{letter.topic}|{expected_reason}|0"
    for topic in keys:
        assert pipeline.metrics.events.labels(topic, "dlq")._value.get() >= 2
