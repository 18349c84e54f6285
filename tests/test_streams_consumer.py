"""StreamConsumer against the real Redis: crash takeover, dead letters, NOGROUP, stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from ordercache.streams.config import ConsumerConfig
from ordercache.streams.consumer import RejectEntry, StreamConsumer, StreamMessage
from ordercache.streams.layout import dead_letter_key
from ordercache.streams.metrics import StreamMetrics

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("ORDERCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def fast(**kw: Any) -> ConsumerConfig:
    """Short timers so recovery paths run within a test."""
    base: dict[str, Any] = {
        "block_ms": 100,
        "claim_idle_ms": 150,
        "claim_interval_s": 0.05,
        "metrics_interval_s": 0.1,
        "backoff_base_s": 0.02,
        "backoff_cap_s": 0.2,
        "start_id": "0",
    }
    base.update(kw)
    return ConsumerConfig(**base)


async def eventually(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Wait until ``cond()`` (sync or async) is true; a liveness bound, not a timing test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


async def fill(r: aioredis.Redis, stream: str, n: int, start: int = 0) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(stream, {"n": str(i)})
    return [x.decode() for x in await pipe.execute()]


async def pending_count(r: aioredis.Redis, stream: str, group: str = "g") -> int:
    return int((await r.xpending(stream, group))["pending"])


@pytest.fixture
def stream(key_prefix: str) -> str:
    return f"{key_prefix}:stream:tracking:{{0}}"


async def test_processes_and_acknowledges(redis_raw: aioredis.Redis, stream: str) -> None:
    ids = await fill(redis_raw, stream, 25)
    seen: list[str] = []

    async def handler(msg: StreamMessage) -> None:
        assert msg.deliveries == 1
        seen.append(msg.id)

    c = StreamConsumer(redis_raw, stream, "g", "c1", handler, fast(count=7))
    c.start()
    await eventually(lambda: len(seen) == 25, "all entries handled")
    await c.stop()
    assert seen == ids
    assert await pending_count(redis_raw, stream) == 0
    assert c.stats.processed == 25


async def test_group_creation_is_idempotent(redis_raw: aioredis.Redis, stream: str) -> None:
    async def handler(msg: StreamMessage) -> None:
        return None

    c = StreamConsumer(redis_raw, stream, "g", "c1", handler, fast())
    assert await c.ensure_group() is True
    assert await c.ensure_group() is False
    assert await redis_raw.exists(stream) == 1  # MKSTREAM


async def test_cancelled_consumer_entries_are_reclaimed_once(
    redis_raw: aioredis.Redis, stream: str
) -> None:
    ids = await fill(redis_raw, stream, 30)
    completed: Counter[str] = Counter()
    stuck = asyncio.Event()

    async def crashing(msg: StreamMessage) -> None:
        if msg.entry.fields["n"] == "10":
            stuck.set()
            await asyncio.Event().wait()  # never returns: killed mid-entry
        completed[msg.id] += 1

    a = StreamConsumer(redis_raw, stream, "g", "a", crashing, fast(count=20))
    task = a.start()
    await asyncio.wait_for(stuck.wait(), 20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await pending_count(redis_raw, stream) == 10  # n=10..19 read by "a", not acked

    async def healthy(msg: StreamMessage) -> None:
        completed[msg.id] += 1

    b = StreamConsumer(redis_raw, stream, "g", "b", healthy, fast())
    b.start()
    await eventually(lambda: len(completed) == 30, "every entry completed")
    await b.stop()
    assert sorted(completed) == sorted(ids)
    assert set(completed.values()) == {1}
    assert b.stats.claimed == 10
    assert await pending_count(redis_raw, stream) == 0


CHILD = r"""
import asyncio, sys
import redis.asyncio as aioredis
from ordercache.streams.config import ConsumerConfig
from ordercache.streams.consumer import StreamConsumer

url, stream, done_key, started_key, stuck_n = sys.argv[1:6]

async def main():
    r = aioredis.Redis.from_url(url)
    async def handler(msg):
        if msg.entry.fields["n"] == stuck_n:
            await r.set(started_key, msg.id)
            await asyncio.sleep(3600)
        await r.rpush(done_key, msg.id)
    cfg = ConsumerConfig(block_ms=100, start_id="0", count=20)
    await StreamConsumer(r, stream, "g", "child", handler, cfg).run()

asyncio.run(main())
"""


async def test_sigkilled_consumer_entries_are_reclaimed_once(
    redis_raw: aioredis.Redis, stream: str, key_prefix: str
) -> None:
    ids = await fill(redis_raw, stream, 40)
    done_key, started_key = f"{key_prefix}:done", f"{key_prefix}:started"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, REDIS_URL, stream, done_key, started_key, "12"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        await eventually(lambda: redis_raw.exists(started_key), "child inside entry 12", 60)
    finally:
        child.kill()  # SIGKILL: no cleanup, no ack
        child.wait(10)
    assert await redis_raw.llen(done_key) == 12
    assert await pending_count(redis_raw, stream) == 8  # n=12..19 in the child's PEL

    async def handler(msg: StreamMessage) -> None:
        await redis_raw.rpush(done_key, msg.id)

    b = StreamConsumer(redis_raw, stream, "g", "survivor", handler, fast())
    b.start()
    await eventually(
        lambda: _llen_is(redis_raw, done_key, 40), "all 40 entries completed", timeout=30
    )
    await b.stop()
    done = [x.decode() for x in await redis_raw.lrange(done_key, 0, -1)]
    assert sorted(done) == sorted(ids)  # each entry completed exactly once
    assert b.stats.claimed == 8
    assert await pending_count(redis_raw, stream) == 0


async def _llen_is(r: aioredis.Redis, key: str, n: int) -> bool:
    return bool(await r.llen(key) >= n)


async def test_poison_entry_goes_to_dead_letters(redis_raw: aioredis.Redis, stream: str) -> None:
    ids = await fill(redis_raw, stream, 10)
    calls: Counter[str] = Counter()
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)

    async def handler(msg: StreamMessage) -> None:
        calls[msg.entry.fields["n"]] += 1
        if msg.entry.fields["n"] == "3":
            raise RuntimeError("cannot notify: boom")

    c = StreamConsumer(
        redis_raw, stream, "g", "c1", handler, fast(max_deliveries=3), metrics=metrics
    )
    c.start()
    await eventually(lambda: c.stats.dead_lettered == 1, "poison entry dead-lettered")
    await eventually(lambda: c.stats.processed == 9, "the others processed")
    await c.stop()
    assert calls["3"] == 3
    assert all(calls[str(i)] == 1 for i in range(10) if i != 3)
    assert await pending_count(redis_raw, stream) == 0
    dead = await redis_raw.xrange(dead_letter_key(stream))
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["n"] == "3"  # original fields kept
    assert fields["dl_id"] == ids[3]
    assert fields["dl_deliveries"] == "4"
    assert fields["dl_group"] == "g"
    assert fields["dl_stream"] == stream
    assert "boom" in fields["dl_reason"]
    labels = {"stream": "tracking:{0}", "group": "g"}  # the key without its prefix
    assert registry.get_sample_value("ordercache_stream_dead_letters_total", labels) == 1
    claims = registry.get_sample_value("ordercache_stream_claims_total", labels)
    assert claims is not None
    assert claims >= 2


async def test_rejected_entry_is_dead_lettered_at_once(
    redis_raw: aioredis.Redis, stream: str
) -> None:
    await fill(redis_raw, stream, 3)
    calls: Counter[str] = Counter()

    async def handler(msg: StreamMessage) -> None:
        calls[msg.id] += 1
        if msg.entry.fields["n"] == "1":
            raise RejectEntry("undecodable")

    c = StreamConsumer(redis_raw, stream, "g", "c1", handler, fast())
    c.start()
    await eventually(lambda: c.stats.processed == 2 and c.stats.dead_lettered == 1, "done")
    await c.stop()
    assert set(calls.values()) == {1}
    dead = await redis_raw.xrange(dead_letter_key(stream))
    assert dead[0][1][b"dl_reason"] == b"rejected: undecodable"


@pytest.mark.parametrize("how", ["destroy-group", "delete-stream"])
async def test_recovers_from_nogroup(redis_raw: aioredis.Redis, stream: str, how: str) -> None:
    await fill(redis_raw, stream, 5)
    handled: Counter[str] = Counter()

    async def handler(msg: StreamMessage) -> None:
        handled[msg.entry.fields["n"]] += 1

    c = StreamConsumer(redis_raw, stream, "g", "c1", handler, fast())
    c.start()
    await eventually(lambda: len(handled) == 5, "first entries handled")
    if how == "destroy-group":
        await redis_raw.xgroup_destroy(stream, "g")
    else:
        await redis_raw.delete(stream)
    await fill(redis_raw, stream, 5, start=5)
    await eventually(lambda: len(handled) == 10, "entries after the loss handled")
    await c.stop()
    assert c.stats.groups_created == 2
    assert await pending_count(redis_raw, stream) == 0
    # Re-created from "0": what the stream still held may be handled again (at least once).
    assert all(handled[str(i)] == 1 for i in range(5, 10))


async def test_stop_finishes_current_entry(redis_raw: aioredis.Redis, stream: str) -> None:
    ids = await fill(redis_raw, stream, 6)
    done: list[str] = []
    inside, gate = asyncio.Event(), asyncio.Event()

    async def handler(msg: StreamMessage) -> None:
        if msg.entry.fields["n"] == "2" and not gate.is_set():
            inside.set()
            await gate.wait()
        done.append(msg.id)

    c = StreamConsumer(redis_raw, stream, "g", "c1", handler, fast(count=10))
    c.start()
    await asyncio.wait_for(inside.wait(), 20)
    stopping = asyncio.create_task(c.stop())
    gate.set()
    await stopping
    assert done == ids[:3]  # the entry in progress finished...
    rows = await redis_raw.xpending_range(stream, "g", "-", "+", 10)
    assert [r["message_id"].decode() for r in rows] == ids[3:]  # ...and was acknowledged

    again = StreamConsumer(redis_raw, stream, "g", "c1", handler, fast())
    again.start()
    await eventually(lambda: len(done) == 6, "the rest handled after restart")
    await again.stop()
    assert done == ids
    assert await pending_count(redis_raw, stream) == 0


async def test_trimmed_pending_entries_are_acknowledged(
    redis_raw: aioredis.Redis, stream: str
) -> None:
    await fill(redis_raw, stream, 4)

    async def failing(msg: StreamMessage) -> None:
        raise RuntimeError("down")

    c = StreamConsumer(redis_raw, stream, "g", "c1", failing, fast(claim_idle_ms=60_000))
    c.start()
    await eventually(lambda: c.stats.failed == 4, "all four failed once")
    await c.stop()
    assert await pending_count(redis_raw, stream) == 4
    await redis_raw.xtrim(stream, maxlen=0)

    async def ok(msg: StreamMessage) -> None:
        raise AssertionError("a trimmed entry has nothing to handle")

    again = StreamConsumer(redis_raw, stream, "g", "c1", ok, fast(claim_idle_ms=60_000))
    again.start()
    await eventually(_zero_pending(redis_raw, stream), "pending list emptied")
    await again.stop()


def _zero_pending(r: aioredis.Redis, stream: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await pending_count(r, stream) == 0

    return check


async def test_metrics_move(redis_raw: aioredis.Redis, stream: str) -> None:
    await fill(redis_raw, stream, 10)
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)
    labels = {"stream": "tracking:0", "group": "g"}

    def gauge(name: str, **lab: str) -> float | None:
        return registry.get_sample_value(f"ordercache_stream_{name}", lab or labels)

    async def handler(msg: StreamMessage) -> None:
        if msg.entry.fields["n"] == "0":
            raise RuntimeError("n=0 never works")

    cfg = fast(max_deliveries=2, claim_idle_ms=300, metrics_interval_s=3600)
    c = StreamConsumer(
        redis_raw, stream, "g", "c1", handler, cfg, metrics=metrics, label="tracking:0"
    )
    await c.ensure_group("0")
    await c.refresh_metrics()
    assert gauge("length", stream="tracking:0") == 10
    assert gauge("group_lag") == 10
    assert gauge("pending") == 0
    assert gauge("oldest_pending_idle_seconds") == 0
    c.start()
    await eventually(lambda: c.stats.processed == 9, "nine handled")
    await asyncio.sleep(0.1)
    await c.refresh_metrics()
    assert gauge("group_lag") == 0
    assert gauge("pending") == 1
    assert (gauge("oldest_pending_idle_seconds") or 0) > 0
    await eventually(lambda: c.stats.dead_lettered == 1, "n=0 dead-lettered")
    await c.refresh_metrics()
    await c.stop()
    assert gauge("pending") == 0
    assert gauge("dead_letters_total") == 1
    assert (gauge("claims_total") or 0) >= 1
