"""The change pipeline against the real broker (Tansu), Redis and PostgreSQL.

One pipeline (one consumer group join) serves the whole module; each test uses its
own rows, so the tests do not see each other's entries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from sqlalchemy import insert

from ordercache.agents.dlq import DeadLetter
from ordercache.agents.pipeline import ChangePipeline
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.cache.views import INVENTORY, ORDER, View
from ordercache.config.settings import Settings
from ordercache.db import repository as repo
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.models.orm import Customer, Inventory, Product
from ordercache.sample import writes
from ordercache.sample.producer import ChangeEventProducer, Topics
from tests.conftest import REDIS_URL, make_settings, unique

pytestmark = pytest.mark.kafka

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def env(
    kafka_broker: str, pg_schema: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, AppContext, ChangePipeline, ChangeEventProducer]]:
    tag = unique("p")
    settings = make_settings(
        redis_url=REDIS_URL,
        redis_key_prefix=tag,
        database_url=pg_schema,
        kafka_broker=kafka_broker,
        app_id=f"oc-{tag}",
        topic_orders=f"{tag}.orders",
        topic_inventory=f"{tag}.inventory",
        topic_tracking=f"{tag}.tracking",
        topic_dlq=f"{tag}.dlq",
        kafka_partitions=2,
        event_max_bytes=4096,
        data_dir=tmp_path_factory.mktemp("pipe"),
    )
    ctx = AppContext.build(settings)
    pipeline = build_pipeline(ctx, [kafka_broker])
    await pipeline.start()
    producer = ChangeEventProducer([kafka_broker], Topics.from_settings(settings))
    await producer.start()
    yield settings, ctx, pipeline, producer
    await producer.stop()
    await pipeline.stop()
    client = aioredis.Redis.from_url(REDIS_URL)
    async for key in client.scan_iter(match=f"{tag}:*", count=500):
        await client.unlink(key)
    await client.aclose()
    await ctx.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait (bounded) until ``check`` holds; fail with a clear message otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def seed_catalog(ctx: AppContext) -> tuple[int, list[int]]:
    """A customer and two products with stock; returns (customer id, product ids)."""
    async with ctx.sessions() as s, s.begin():
        cust = Customer(email=f"{unique('c')}@example.com", name="Ada")
        prods = [Product(sku=unique("SKU-"), name="Widget", price_cents=250) for _ in range(2)]
        s.add(cust)
        s.add_all(prods)
        await s.flush()
        await s.execute(
            insert(Inventory),
            [
                {
                    "product_id": p.id,
                    "available": 50,
                    "reserved": 0,
                    "version": 1,
                    "updated_at": NOW,
                }
                for p in prods
            ],
        )
        return cust.id, [p.id for p in prods]


def loaders(ctx: AppContext) -> dict[str, Any]:
    async def order(i: int) -> Any:
        async with ctx.sessions() as s:
            return await repo.load_order_details(s, i)

    async def inventory(i: int) -> Any:
        async with ctx.sessions() as s:
            return await repo.load_inventory(s, i)

    return {"order": order, "inventory": inventory}


async def test_update_and_event_invalidate_then_next_read_is_new(env: Any) -> None:
    settings, ctx, pipeline, producer = env
    load = loaders(ctx)
    customer, products = await seed_catalog(ctx)
    async with ctx.sessions() as s, s.begin():
        changes = await writes.create_order(s, customer, [(products[0], 2)], NOW)
    applied = pipeline.metrics.events.labels(settings.topic_orders, "applied")
    before = applied._value.get()
    await producer.emit_transaction(changes)
    order_id = next(c.after["id"] for c in changes if c.entity.value == "orders")
    n_orders_topic = sum(1 for c in changes if c.entity.value in ("orders", "order_items"))

    async def creation_applied() -> bool:
        return applied._value.get() >= before + n_orders_topic

    await eventually(creation_applied)  # so the creation's invalidations are behind us

    first = await ctx.cache.get_or_load(ORDER, order_id, load["order"])
    assert first.value is not None and first.value.status == "created"
    assert (await ctx.cache.get_or_load(ORDER, order_id, load["order"])).status == "hit"

    async with ctx.sessions() as s, s.begin():
        paid = await writes.set_status(s, order_id, "paid", NOW)
    await producer.emit_transaction(paid)
    entry = ctx.keys.entry(View.ORDER, order_id)

    async def gone() -> bool:
        return await ctx.redis.client.exists(entry) == 0

    await eventually(gone)
    after = await ctx.cache.get_or_load(ORDER, order_id, load["order"])
    assert after.status == "miss"
    assert after.value is not None and after.value.status == "paid"
    assert after.value.version > first.value.version

    # inventory: a restock event makes the next read return the new stock
    inv0 = await ctx.cache.get_or_load(INVENTORY, products[1], load["inventory"])
    assert inv0.value is not None
    async with ctx.sessions() as s, s.begin():
        restocked = await writes.restock(s, products[1], 7, NOW)
    await producer.emit_transaction(restocked)
    key = ctx.keys.entry(View.INVENTORY, products[1])

    async def inv_gone() -> bool:
        return await ctx.redis.client.exists(key) == 0

    await eventually(inv_gone)
    inv1 = await ctx.cache.get_or_load(INVENTORY, products[1], load["inventory"])
    assert inv1.value is not None and inv1.value.available == inv0.value.available + 7


def inventory_envelope(pid: int, version: int, available: int, *, sku: str | None) -> bytes:
    after: dict[str, Any] = {
        "product_id": pid, "available": available, "reserved": 0, "version": version,
        "updated_at": "2026-03-01T10:00:00Z",
    }  # fmt: skip
    if sku is not None:
        after["sku"] = sku
    return json.dumps(
        {
            "before": None,
            "after": after,
            "op": "u",
            "source": {"lsn": 1000 + version, "txId": version, "ts_ms": 1, "table": "inventory"},
            "ts_ms": 1,
        }
    ).encode()


async def test_duplicates_and_reordering_leave_the_newest_version(env: Any) -> None:
    settings, ctx, _, producer = env
    pid = 900_000_000 + (hash(unique()) % 1_000_000)
    topic = settings.topic_inventory
    key = str(pid).encode()
    # refresh events (with sku: write-through), newest first, then old ones and duplicates
    for version in (5, 3, 5, 4, 2, 5):
        await producer.send_raw(
            topic, key, inventory_envelope(pid, version, available=version * 10, sku="S-1")
        )

    async def at_newest() -> bool:
        cached = await ctx.cache.get(INVENTORY, pid)
        return cached is not None and cached.version == 5

    await eventually(at_newest)
    # the old and duplicate events were applied after it and did not regress it
    await producer.send_raw(topic, key, inventory_envelope(pid, 1, available=1, sku="S-1"))
    marker = pid + 1
    await producer.send_raw(
        topic, str(marker).encode(), inventory_envelope(marker, 1, available=1, sku="M")
    )

    async def marker_applied() -> bool:
        return await ctx.cache.get(INVENTORY, marker) is not None

    await eventually(marker_applied)  # same partition or not, the batch ran
    cached = await ctx.cache.get(INVENTORY, pid)
    assert cached is not None and cached.version == 5 and cached.available == 50
    # an old invalidation (no sku: invalidate at version 3) does not delete it either
    await producer.send_raw(topic, key, inventory_envelope(pid, 3, available=30, sku=None))
    await producer.send_raw(
        topic, str(marker + 1).encode(), inventory_envelope(marker + 1, 1, available=1, sku="M")
    )

    async def marker2() -> bool:
        return await ctx.cache.get(INVENTORY, marker + 1) is not None

    await eventually(marker2)
    cached = await ctx.cache.get(INVENTORY, pid)
    assert cached is not None and cached.version == 5


async def read_dlq(
    bootstrap: str, topic: str, want: int, header: tuple[str, bytes] | None = None
) -> list[DeadLetter]:
    """The first ``want`` dead letters on ``topic`` (only those carrying ``header``: the
    module's tests share the topic and run in any order)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[DeadLetter] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(out) < want and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                for r in recs:
                    if header is None or header in r.headers:
                        out.append(DeadLetter.from_record(r.key, r.value, list(r.headers)))
    finally:
        await consumer.stop()
    return out


async def test_bad_events_go_to_dlq_and_good_ones_around_them_apply(
    env: Any, kafka_broker: str
) -> None:
    settings, ctx, pipeline, producer = env
    topic = settings.topic_inventory
    base = 800_000_000 + (hash(unique()) % 1_000_000)
    good = [base + i for i in range(3)]
    trace = ("trace", unique("t-").encode())
    bad = [
        (b"{not json", "invalid_json"),
        (json.dumps({"op": "u", "after": {"product_id": 5, "available": "lots"}, "source": {"table": "inventory"}}).encode(), "schema_mismatch"),
        (json.dumps({"op": "z", "before": None, "after": None, "source": {"table": "inventory"}}).encode(), "unknown_op"),
        (b'{"pad": "' + b"x" * 5000 + b'"}', "oversized"),
    ]  # fmt: skip
    await producer.send_raw(
        topic, str(good[0]).encode(), inventory_envelope(good[0], 1, 1, sku="G")
    )
    for value, _ in bad:
        await producer.send_raw(topic, b"42", value, headers=[trace])
    await producer.send_raw(
        topic, str(good[1]).encode(), inventory_envelope(good[1], 1, 1, sku="G")
    )
    await producer.send_raw(topic, str(good[2]).encode(), None)  # a tombstone: not an error
    await producer.send_raw(
        topic, str(good[2]).encode(), inventory_envelope(good[2], 1, 1, sku="G")
    )

    async def good_applied() -> bool:
        got = await ctx.cache.get_many(INVENTORY, good)
        return len(got) == 3

    await eventually(good_applied)
    letters = await read_dlq(kafka_broker, settings.topic_dlq, len(bad), trace)
    assert sorted(dl.reason for dl in letters) == sorted(r for _, r in bad)
    by_reason = {dl.reason: dl for dl in letters}
    for value, reason in bad:
        dl = by_reason[reason]
        assert dl.value == value and dl.bound is None  # the original bytes, unchanged
        assert dl.key == b"42"
        assert dl.topic == topic and dl.offset is not None and dl.partition is not None
        assert trace in dl.headers
    tomb = pipeline.metrics.events.labels(topic, "tombstone")._value.get()
    assert tomb >= 1


async def test_redis_down_holds_the_batch_until_it_applies(
    env: Any, kafka_broker: str, private_redis: ManagedProcess
) -> None:
    """While Redis is down the batch is retried and the offset held; nothing is skipped."""
    settings, _, _, producer = env
    own = settings.model_copy(
        update={"redis_url": SecretStr(f"redis://{private_redis.url}/0"), "app_id": unique("oc-")}
    )
    ctx = AppContext.build(own)
    pipeline = build_pipeline(ctx, [kafka_broker])
    await pipeline.start()
    try:
        pid = 700_000_000 + (hash(unique()) % 1_000_000)
        private_redis.kill()
        await producer.send_raw(
            settings.topic_inventory, str(pid).encode(), inventory_envelope(pid, 1, 9, sku="R")
        )

        async def retried() -> bool:
            return pipeline.metrics.retries._value.get() >= 2

        await eventually(retried)
        restarted = start_redis_server(port=private_redis.port)
        try:

            async def applied() -> bool:
                return await ctx.cache.get(INVENTORY, pid) is not None

            await eventually(applied)
        finally:
            await pipeline.stop()
            restarted.cleanup()
    finally:
        await ctx.aclose()


def tracking_envelope(
    row_id: int, order_id: int, status: str, *, event_id: str | None = None
) -> bytes:
    return json.dumps(
        {
            "before": None,
            "after": {
                "id": row_id,
                "event_id": event_id or f"ev-{order_id}-{row_id}",
                "order_id": order_id,
                "shipment_id": None,
                "status": status,
                "location": "Hamburg",
                "carrier": "DHL",
                "occurred_at": f"2026-03-01T10:00:{row_id % 60:02d}Z",
                "version": 1,
            },
            "op": "c",
            "source": {
                "lsn": 5000 + row_id,
                "txId": row_id,
                "ts_ms": 1,
                "table": "tracking_events",
            },
            "ts_ms": 1,
        }
    ).encode()


async def test_tracking_updates_are_mirrored_once_even_when_redelivered(
    env: Any, kafka_broker: str
) -> None:
    settings, ctx, _, producer = env
    from ordercache.agents.tracking import mirror_hook
    from ordercache.app.wiring import build_mirror

    mirror = build_mirror(ctx)
    order_id = 600_000_000 + (hash(unique()) % 1_000_000)
    stream = mirror.layout.order_stream(order_id)
    # the module's pipeline has no mirror hook: run one that has, as the worker does
    own = settings.model_copy(update={"app_id": unique("oc-")})
    octx = AppContext.build(own)
    first = build_pipeline(octx, [kafka_broker], hooks=[mirror_hook(build_mirror(octx))])
    await first.start()
    try:
        for i, status in enumerate(("in_transit", "out_for_delivery", "delivered"), start=1):
            await producer.send_raw(
                settings.topic_tracking,
                str(order_id).encode(),
                tracking_envelope(i, order_id, status),
            )
        # a bad tracking update (status with a control character) goes to the DLQ
        await producer.send_raw(
            settings.topic_tracking,
            str(order_id).encode(),
            tracking_envelope(9, order_id, "bad\x00"),
        )

        async def mirrored() -> bool:
            return await ctx.redis.client.xlen(stream) == 3

        await eventually(mirrored)
    finally:
        await first.stop()
        await octx.aclose()
    # Kafka redelivers everything to a new consumer group: nothing is added twice
    again = settings.model_copy(update={"app_id": unique("oc-")})
    actx = AppContext.build(again)
    replay = build_pipeline(actx, [kafka_broker], hooks=[mirror_hook(build_mirror(actx))])
    await replay.start()
    try:

        async def replayed() -> bool:
            return (
                replay.metrics.events.labels(settings.topic_tracking, "applied")._value.get() >= 3
            )

        await eventually(replayed)
    finally:
        await replay.stop()
        await actx.aclose()
    entries = await ctx.redis.client.xrange(stream)
    assert [e[1][b"status"] for e in entries] == [b"in_transit", b"out_for_delivery", b"delivered"]


async def test_recent_invalidations_are_reapplied_after_a_redis_failover(
    env: Any, kafka_broker: str, private_redis: ManagedProcess
) -> None:
    """A new Redis identity (restart or failover) gets the recent operations again:
    a replica promoted without the newest writes must not keep their stale entries."""
    settings, _, _, producer = env
    own = settings.model_copy(
        update={"redis_url": SecretStr(f"redis://{private_redis.url}/0"), "app_id": unique("oc-")}
    )
    ctx = AppContext.build(own)
    pipeline = build_pipeline(ctx, [kafka_broker])
    await pipeline.start()
    restarted: ManagedProcess | None = None
    try:
        base = 500_000_000 + (hash(unique()) % 1_000_000)
        pids = [base + i for i in range(5)]
        for pid in pids:  # entries cached at version 1 ...
            await ctx.cache.set(INVENTORY, inventory_view(pid, 1))
        for pid in pids:  # ... invalidated by version-2 events
            await producer.send_raw(
                settings.topic_inventory, str(pid).encode(), inventory_envelope(pid, 2, 5, sku=None)
            )

        async def invalidated() -> bool:
            return not await ctx.cache.get_many(INVENTORY, pids)

        await eventually(invalidated)
        # let the watcher see the current server's identity first (it checks every 2 s)
        await asyncio.sleep(pipeline.config.failover_check_interval + 0.5)
        # Failover: a new server (new run_id) that still holds the old entries, as a
        # replica that missed the last writes would.
        private_redis.kill()
        restarted = start_redis_server(port=private_redis.port)
        stale = aioredis.Redis.from_url(f"redis://{private_redis.url}/0")
        for pid in pids:
            await stale.set(
                ctx.keys.entry(View.INVENTORY, pid), INVENTORY.encode(inventory_view(pid, 1))
            )
        await stale.aclose()

        async def reapplied() -> bool:
            return pipeline.metrics.reapplied._value.get() >= len(pids) and not (
                await ctx.cache.get_many(INVENTORY, pids)
            )

        await eventually(reapplied)
    finally:
        await pipeline.stop()
        await ctx.aclose()
        if restarted is not None:
            restarted.cleanup()


async def test_recent_tracking_records_are_remirrored_after_a_redis_failover(
    env: Any, kafka_broker: str, private_redis: ManagedProcess
) -> None:
    """Tracking appends lost with a failed-over server are mirrored again, and only
    those: a new server that kept them gets nothing twice (the mirror's dedupe)."""
    from ordercache.agents.tracking import mirror_hook
    from ordercache.app.wiring import build_mirror

    settings, _, _, producer = env
    own = settings.model_copy(
        update={"redis_url": SecretStr(f"redis://{private_redis.url}/0"), "app_id": unique("oc-")}
    )
    ctx = AppContext.build(own)
    mirror = build_mirror(ctx)
    pipeline = build_pipeline(ctx, [kafka_broker], hooks=[mirror_hook(mirror)])
    # a window no slow machine outlasts: both replays must still hold all three records
    pipeline.config = dataclasses.replace(pipeline.config, reapply_window=600.0)
    await pipeline.start()
    servers: list[ManagedProcess] = []
    order_id = 610_000_000 + (hash(unique()) % 1_000_000)
    stream = mirror.layout.order_stream(order_id)
    statuses = [b"in_transit", b"out_for_delivery", b"delivered"]

    async def entries() -> list[bytes]:
        client = aioredis.Redis.from_url(f"redis://{private_redis.url}/0")
        try:
            return [e[1][b"status"] for e in await client.xrange(stream)]
        finally:
            await client.aclose()

    async def failover(workdir: Path | None) -> None:
        """Replace the server (new run_id) and wait until the replay reached the mirror.
        The pipeline also remembers other tests' tracking records (its group reads the
        shared topic from the start): only "more than before" is certain."""
        before = pipeline.metrics.remirrored._value.get()
        (servers.pop() if servers else private_redis).kill()
        servers.append(start_redis_server(port=private_redis.port, workdir=workdir))

        async def remirrored() -> bool:
            return pipeline.metrics.remirrored._value.get() > before

        await eventually(remirrored)

    try:
        for i, status in enumerate(statuses, start=1):
            await producer.send_raw(
                settings.topic_tracking,
                str(order_id).encode(),
                tracking_envelope(i, order_id, status.decode()),
            )

        async def mirrored() -> bool:
            return await entries() == statuses

        await eventually(mirrored)
        # let the watcher see the current server's identity first (it checks every 2 s)
        await asyncio.sleep(pipeline.config.failover_check_interval + 0.5)

        # 1. A new server that kept everything (restarted from a snapshot): the replay
        #    reaches the mirror, which adds nothing.
        snap = aioredis.Redis.from_url(f"redis://{private_redis.url}/0")
        await snap.save()
        await snap.aclose()
        await failover(private_redis.workdir)
        assert await entries() == statuses

        # 2. A new server that lost them (promoted without the newest writes): they
        #    come back, each once.
        await asyncio.sleep(pipeline.config.failover_check_interval + 0.5)
        await failover(None)
        assert await entries() == statuses
    finally:
        await pipeline.stop()
        await ctx.aclose()
        for server in servers:
            server.cleanup()


def inventory_view(pid: int, version: int) -> Any:
    from ordercache.models.views import ProductInventory

    return ProductInventory(
        product_id=pid, sku="S", available=1, reserved=0, version=version, updated_at=NOW
    )
