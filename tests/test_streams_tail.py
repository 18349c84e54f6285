"""tail() and the example notifier, against the real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from ordercache.cache.keys import KeySpace
from ordercache.errors import InvalidIdError
from ordercache.local.services import free_port
from ordercache.streams.config import ConsumerConfig, MirrorConfig
from ordercache.streams.entry import StreamEntry, TrackingRecord
from ordercache.streams.layout import StreamLayout, dead_letter_key
from ordercache.streams.mirror import StreamMirror
from ordercache.streams.notifier import Notifier
from ordercache.streams.tail import format_entry, tail

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("ORDERCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def rec(i: int, order_id: int, status: str = "in_transit") -> TrackingRecord:
    return TrackingRecord(
        event_id=f"ev-{i}",
        order_id=order_id,
        status=status,
        location="Hamburg",
        carrier="UPS",
        occurred_at=datetime(2026, 1, 1, 8, 0, i % 60, tzinfo=UTC),
        shipment_id=order_id * 10,
        topic="tracking.updates",
        partition=0,
        offset=i,
    )


async def collect(it: Any, n: int) -> list[StreamEntry]:
    return [e async for e in it][:n]


async def test_tail_replays_then_follows(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    keys = KeySpace(key_prefix)
    mirror = StreamMirror(redis_raw, keys, MirrorConfig(shards=2))
    await mirror.mirror([rec(0, 5), rec(1, 6), rec(2, 5)])
    task = asyncio.create_task(collect(tail(redis_raw, keys, 5, shards=2, from_id="0", count=4), 4))
    await asyncio.sleep(0.05)
    await mirror.mirror([rec(3, 6), rec(4, 5), rec(5, 5)])
    got = await asyncio.wait_for(task, 20)
    assert [e.tracking().event_id for e in got] == ["ev-0", "ev-2", "ev-4", "ev-5"]
    assert "order 5" in format_entry(got[0])


async def test_tail_from_now_skips_history(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    keys = KeySpace(key_prefix)
    mirror = StreamMirror(redis_raw, keys, MirrorConfig(shards=1))
    await mirror.mirror([rec(0, 9), rec(1, 9)])
    it = tail(redis_raw, keys, "9", shards=1, count=2, block_ms=100)
    first = asyncio.create_task(anext(it))
    # Give tail the moment it needs to note where "now" is; a later mirror is news.
    await asyncio.sleep(0.3)
    await mirror.mirror([rec(2, 9), rec(3, 9)])
    entries = [await asyncio.wait_for(first, 20), await asyncio.wait_for(anext(it), 20)]
    assert [e.tracking().event_id for e in entries] == ["ev-2", "ev-3"]
    with pytest.raises(StopAsyncIteration):
        await anext(it)


async def test_tail_validates_the_order_id(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    with pytest.raises(InvalidIdError):
        await anext(tail(redis_raw, KeySpace(key_prefix), "1 OR 1=1", count=1))


async def test_notifier_notifies_once_per_delivery_status(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    keys = KeySpace(key_prefix)
    layout = StreamLayout(keys, 2)
    mirror = StreamMirror(redis_raw, keys, MirrorConfig(shards=2))
    batch = [
        rec(0, 11, "picked_up"),
        rec(1, 12, "out_for_delivery"),
        rec(2, 11, "out_for_delivery"),
        rec(3, 12, "delivered"),
        rec(4, 13, "in_transit"),
    ]
    await mirror.mirror(batch)
    await mirror.mirror(batch)  # a Kafka redelivery changes nothing downstream
    await redis_raw.xadd(layout.shard_stream(0), {"v": "99", "junk": "x"})
    said: list[str] = []
    cfg = ConsumerConfig(block_ms=100, start_id="0", claim_interval_s=0.1)
    notifier = Notifier(redis_raw, layout, consumer_name="n1", config=cfg, sink=said.append)
    notifier.start()
    deadline = asyncio.get_running_loop().time() + 20
    while sum(c.stats.processed + c.stats.dead_lettered for c in notifier.consumers) < 6:
        assert asyncio.get_running_loop().time() < deadline, "notifier did not catch up"
        await asyncio.sleep(0.02)
    await notifier.stop()
    assert sorted(said) == [
        "order 11 is out for delivery",
        "order 12 is out for delivery",
        "order 12 was delivered",
    ]
    dead = await redis_raw.xrange(dead_letter_key(layout.shard_stream(0)))
    assert len(dead) == 1
    assert dead[0][1][b"dl_reason"].startswith(b"rejected: schema_version")


async def test_notifier_process_end_to_end(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    """``ordercache notify`` logs the line and stops on SIGTERM."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")},
        "PYTHONPATH": str(ROOT),
        "ORDERCACHE_REDIS_URL": REDIS_URL,
        "ORDERCACHE_REDIS_KEY_PREFIX": key_prefix,
    }
    mirror = StreamMirror(redis_raw, KeySpace(key_prefix), MirrorConfig())
    await mirror.mirror([rec(0, 77, "out_for_delivery")])
    metrics_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ordercache.app.main",
            "notify",
            "--from-start",
            "--consumer",
            "e2e",
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        layout = StreamLayout(KeySpace(key_prefix), MirrorConfig().shards)
        stream = layout.shard_stream(layout.shard_of(77))
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            groups = await redis_raw.xinfo_groups(stream) if await redis_raw.exists(stream) else []
            if groups and groups[0]["entries-read"] == 1 and groups[0]["pending"] == 0:
                break
            assert proc.poll() is None, "notifier exited early"
            assert asyncio.get_running_loop().time() < deadline, "notifier did not consume"
            await asyncio.sleep(0.1)
        # the consumer's own metrics are served for Prometheus (dead-letter alerts etc.)
        text = ""
        async with aiohttp.ClientSession() as http:
            while "ordercache_stream_length{" not in text:  # gauges refresh every few s
                assert asyncio.get_running_loop().time() < deadline + 30, text
                await asyncio.sleep(0.5)
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    text = await resp.text()
        assert "# TYPE ordercache_stream_dead_letters_total counter" in text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    assert "order 77 is out for delivery" in err.decode()


async def test_tail_command_prints_an_orders_updates(
    redis_raw: aioredis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    """``ordercache tail ORDER_ID`` — the console command, as an operator runs it."""
    keys = KeySpace(key_prefix)
    mirror = StreamMirror(redis_raw, keys, MirrorConfig(shards=3))
    await mirror.mirror([rec(0, 41, "in_transit"), rec(1, 42), rec(2, 41, "out_for_delivery")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ORDERCACHE_REDIS_URL=REDIS_URL,
        ORDERCACHE_REDIS_KEY_PREFIX=key_prefix,
        ORDERCACHE_STREAM_SHARDS="3",
        ORDERCACHE_KAFKA_BROKER="127.0.0.1:9",
        ORDERCACHE_DATA_DIR=str(tmp_path),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ordercache.app.main", "tail", "41", "--from-start", "--count", "2",
        env=env, cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = [ln for ln in out.decode().splitlines() if "order 41" in ln]
    assert len(lines) == 2
    assert "in_transit" in lines[0] and "out_for_delivery" in lines[1]
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ordercache.app.main", "tail", "4x1", env=env, cwd=str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode != 0
    assert b"decimal digits" in err
