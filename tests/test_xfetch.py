"""Probabilistic early refresh (XFetch): the decision as table tests, the refresh
against real Redis (through the guarded fill)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from ordercache.cache.codec import encode_negative, encode_value, entry_version
from ordercache.cache.views import INVENTORY, View
from ordercache.cache.xfetch import due, header
from ordercache.models.views import ProductInventory
from tests.test_cache_service import inv, make_cache


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"v3:40:1700000000000|{}", (40, 1_700_000_000_000)),
        (b"v3|{}", None),  # no recompute time recorded (refresh, set, older entries)
        (b"v3:0:17|{}", None),
        (b"n3|", None),
        (b"v3:x:17|{}", None),
        (b"v3:1:2:3|{}", None),
        (b"garbage", None),
    ],
)
def test_header(raw: bytes, expected: tuple[int, int] | None) -> None:
    assert header(raw) == expected


@pytest.mark.parametrize(
    ("delta", "expires", "now", "beta", "rand", "expected"),
    [
        (100, 10_000, 10_000, 1.0, 0.5, True),  # at expiry: always
        (100, 10_000, 9_000, 1.0, 0.5, False),  # 1 s early, -ln(0.5)*100 = 69 ms < 1 s
        (100, 10_000, 9_950, 1.0, 0.5, True),  # 50 ms early < 69 ms
        (100, 10_000, 9_900, 1.0, 0.5, False),
        (100, 10_000, 9_900, 2.0, 0.5, True),  # beta 2 reaches 139 ms early
        (100, 10_000, 9_000, 1.0, 0.99999, True),  # a rare draw refreshes very early
        (100, 10_000, 9_999, 0.0, 0.99, False),  # beta 0: off
        (1000, 10_000, 9_500, 1.0, 0.5, True),  # slower loads start earlier
    ],
)
def test_due(
    delta: int, expires: int, now: float, beta: float, rand: float, expected: bool
) -> None:
    assert due(delta, expires, now, beta, lambda: rand) is expected


def test_prefix_keeps_the_version_readable() -> None:
    raw = encode_value(inv(1, 12), delta_ms=5, expires_ms=1_700_000_000_000)
    assert raw.startswith(b"v12:5:1700000000000|")
    assert entry_version(raw) == 12
    assert INVENTORY.decode(raw) == inv(1, 12)
    assert encode_value(inv(1, 12)).startswith(b"v12|")
    assert entry_version(encode_negative(4)) == 4


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_hit_near_expiry_refreshes_in_background(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    cache = make_cache(redis_raw, key_prefix, xfetch_beta=1.0)
    key = cache.keys.entry(View.INVENTORY, 5)
    # an entry whose recorded expiry has come (Redis still holds it for a while)
    now_ms = int(time.time() * 1000)
    await redis_raw.set(key, encode_value(inv(5, 1), delta_ms=20, expires_ms=now_ms), px=30_000)
    loads = 0

    async def loader(pid: int) -> ProductInventory:
        nonlocal loads
        loads += 1
        return inv(pid, 2)

    result = await cache.get_or_load(INVENTORY, 5, loader)
    assert (result.status, result.value) == ("hit", inv(5, 1))  # answered from the entry

    async def refreshed() -> bool:
        raw = await redis_raw.get(key)
        return raw is not None and entry_version(raw) == 2

    await until(refreshed)
    assert loads == 1
    raw = await redis_raw.get(key)
    assert raw is not None
    head = header(raw)
    assert head is not None and head[1] > now_ms  # a new expiry recorded with the fill
    assert 0 < await redis_raw.pttl(key) <= 900_000
    assert cache.metrics.early_refreshes.labels("inventory")._value.get() == 1


async def test_early_refresh_goes_through_the_version_guard(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    cache = make_cache(redis_raw, key_prefix, xfetch_beta=1.0)
    key = cache.keys.entry(View.INVENTORY, 6)
    now_ms = int(time.time() * 1000)
    await redis_raw.set(key, encode_value(inv(6, 1), delta_ms=20, expires_ms=now_ms), px=30_000)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_loader(pid: int) -> ProductInventory:
        started.set()
        await release.wait()
        return inv(pid, 1)  # read before the write below committed

    await cache.get_or_load(INVENTORY, 6, slow_loader)
    await asyncio.wait_for(started.wait(), 10)
    await cache.invalidate(View.INVENTORY, 6, version=2)  # a write lands during the load
    release.set()

    async def settled() -> bool:
        return not cache._early._running

    await until(settled)
    assert await redis_raw.get(key) is None  # the refresh's fill lost to the invalidation
    assert cache.metrics.fills_rejected.labels("inventory", "generation")._value.get() == 1


async def test_beta_zero_never_refreshes(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    cache = make_cache(redis_raw, key_prefix, xfetch_beta=0.0)
    key = cache.keys.entry(View.INVENTORY, 7)
    await redis_raw.set(key, encode_value(inv(7, 1), delta_ms=20, expires_ms=1), px=30_000)

    async def loader(pid: int) -> ProductInventory:
        raise AssertionError("no load expected")

    for _ in range(20):
        assert (await cache.get_or_load(INVENTORY, 7, loader)).status == "hit"
    assert not cache._early._running
