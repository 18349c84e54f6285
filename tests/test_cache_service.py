"""The cache service against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from itertools import count

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update

from ordercache.app.context import AppContext
from ordercache.cache.breaker import CircuitBreaker
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.ops import Invalidate, Refresh
from ordercache.cache.service import CacheConfig, CacheService, build_cache_service
from ordercache.cache.views import INVENTORY, ORDER, View
from ordercache.errors import CacheError, InvalidIdError
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.models.orm import Inventory, Product
from ordercache.models.views import ProductInventory
from tests.conftest import REDIS_URL

NOW = datetime(2026, 1, 1, tzinfo=UTC)
_sku = count(1)


def inv(pid: int, version: int, available: int = 10) -> ProductInventory:
    return ProductInventory(
        product_id=pid, sku=f"SKU-{pid}", available=available, reserved=0, version=version,
        updated_at=NOW,
    )  # fmt: skip


def make_cache(
    client: aioredis.Redis,
    prefix: str,
    *,
    ttls: TtlPolicy | None = None,
    timeout: float = 0.5,
    **cfg: object,
) -> CacheService:
    return build_cache_service(
        client,
        KeySpace(prefix),
        ttls or TtlPolicy(jitter=0.0),
        CacheMetrics.create(CollectorRegistry()),
        timeout=timeout,
        breaker=CircuitBreaker(failures=3, reset_seconds=0.3),
        config=CacheConfig(**cfg),  # type: ignore[arg-type]
    )


@pytest.fixture
async def pooled() -> AsyncIterator[aioredis.Redis]:
    """A client with a bounded, blocking pool, as the factory builds them."""
    client = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=16)
    )
    yield client
    await client.aclose()


@pytest.fixture
def cache(pooled: aioredis.Redis, redis_raw: aioredis.Redis, key_prefix: str) -> CacheService:
    return make_cache(pooled, key_prefix)


async def add_products(ctx: AppContext, n: int) -> list[int]:
    """Insert ``n`` products with inventory rows at version 1; return their ids."""
    async with ctx.sessions() as s, s.begin():
        products = [
            Product(sku=f"T{random.getrandbits(40)}-{next(_sku)}", name="thing", price_cents=100)
            for _ in range(n)
        ]
        s.add_all(products)
        await s.flush()
        s.add_all(
            Inventory(product_id=p.id, available=100, reserved=0, version=1, updated_at=NOW)
            for p in products
        )
    return [p.id for p in products]


def inventory_loader(ctx: AppContext, *, pause: float = 0.0):  # type: ignore[no-untyped-def]
    async def load(pid: int) -> ProductInventory | None:
        async with ctx.sessions() as s:
            row = (
                await s.execute(
                    select(Inventory, Product.sku)
                    .join(Product, Product.id == Inventory.product_id)
                    .where(Inventory.product_id == pid)
                )
            ).first()
        if pause:
            await asyncio.sleep(random.random() * pause)
        if row is None:
            return None
        i, sku = row
        return ProductInventory(
            product_id=i.product_id, sku=sku, available=i.available, reserved=i.reserved,
            version=i.version, updated_at=i.updated_at,
        )  # fmt: skip

    return load


async def bump(ctx: AppContext, pid: int, available: int) -> int:
    """A writer's committed update; returns the new version."""
    async with ctx.sessions() as s, s.begin():
        res = await s.execute(
            update(Inventory)
            .where(Inventory.product_id == pid)
            .values(available=available, version=Inventory.version + 1)
            .returning(Inventory.version)
        )
        return int(res.scalar_one())


# ---------------------------------------------------------------- basic reads
async def test_miss_then_hit_and_loader_once(cache: CacheService) -> None:
    calls: list[int] = []

    async def loader(pid: int) -> ProductInventory:
        calls.append(pid)
        return inv(pid, 3)

    first = await cache.get_or_load(INVENTORY, 42, loader)
    second = await cache.get_or_load(INVENTORY, "42", loader)
    assert (first.status, second.status) == ("miss", "hit")
    assert second.value == inv(42, 3)
    assert calls == [42]


async def test_not_found_is_negatively_cached(cache: CacheService) -> None:
    calls: list[int] = []

    async def loader(pid: int) -> ProductInventory | None:
        calls.append(pid)
        return None

    assert (await cache.get_or_load(INVENTORY, 7, loader)).value is None
    again = await cache.get_or_load(INVENTORY, 7, loader)
    assert again.value is None and again.status == "hit"
    assert calls == [7]
    # an invalidation removes the negative entry
    await cache.invalidate(View.INVENTORY, 7)
    await cache.get_or_load(INVENTORY, 7, loader)
    assert calls == [7, 7]


@pytest.mark.parametrize("bad", ["", "0", "-1", "01", "1 ", "abc", "1;DEL x", "9" * 20, 0, -5, 2**63, 1.5, None, True])  # fmt: skip
async def test_invalid_ids_rejected_before_redis(cache: CacheService, bad: object) -> None:
    async def loader(pid: int) -> ProductInventory:
        raise AssertionError("loader must not run")

    with pytest.raises(InvalidIdError):
        await cache.get_or_load(INVENTORY, bad, loader)


async def test_ttl_expiry_with_real_short_ttl(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    cache = make_cache(redis_raw, key_prefix, ttls=TtlPolicy(inventory=1, jitter=0.0))
    calls = 0

    async def loader(pid: int) -> ProductInventory:
        nonlocal calls
        calls += 1
        return inv(pid, calls)

    assert (await cache.get_or_load(INVENTORY, 5, loader)).status == "miss"
    pttl = await redis_raw.pttl(cache.keys.entry(View.INVENTORY, 5))
    assert 0 < pttl <= 1000
    assert (await cache.get_or_load(INVENTORY, 5, loader)).status == "hit"
    await asyncio.sleep(1.2)
    after = await cache.get_or_load(INVENTORY, 5, loader)
    assert after.status == "miss" and after.value is not None and after.value.version == 2


async def test_ttl_jitter_spreads_expiry(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    cache = make_cache(redis_raw, key_prefix, ttls=TtlPolicy(inventory=300, jitter=0.2))
    await cache.set_many(INVENTORY, [inv(i, 1) for i in range(1, 41)])
    ttls = {await redis_raw.pttl(cache.keys.entry(View.INVENTORY, i)) for i in range(1, 41)}
    assert len(ttls) > 10
    assert all(240_000 - 50 <= t <= 300_000 for t in ttls)


async def test_get_many_and_set_many(cache: CacheService) -> None:
    values = [inv(i, 1, available=i) for i in range(1, 101)]
    assert await cache.set_many(INVENTORY, values) == 100
    got = await cache.get_many(INVENTORY, [*range(1, 101), 500])
    assert len(got) == 100 and got[17].available == 17 and 500 not in got
    # a second set of the same versions writes nothing (idempotent)
    assert await cache.set_many(INVENTORY, values) == 0


# ---------------------------------------------------------------- version guard
async def test_refresh_never_regresses(cache: CacheService) -> None:
    assert await cache.apply([Refresh(View.INVENTORY, 9, 3, inv(9, 3, available=3))]) == [1]
    # duplicate and older events are ignored
    assert await cache.apply(
        [
            Refresh(View.INVENTORY, 9, 3, inv(9, 3, available=3)),
            Refresh(View.INVENTORY, 9, 2, inv(9, 2, available=2)),
        ]
    ) == [0, 0]
    assert (await cache.get(INVENTORY, 9)) == inv(9, 3, available=3)
    # an old invalidation does not delete a newer entry
    assert await cache.invalidate(View.INVENTORY, 9, version=2) is False
    assert (await cache.get(INVENTORY, 9)) is not None
    # an invalidation at the same or a newer version does, and raises the floor
    assert await cache.invalidate(View.INVENTORY, 9, version=4) is True
    assert await cache.apply([Refresh(View.INVENTORY, 9, 3, inv(9, 3))]) == [0]
    assert await cache.apply([Refresh(View.INVENTORY, 9, 5, inv(9, 5))]) == [1]


async def test_race_reader_fill_of_old_version_is_rejected(
    ctx: AppContext, redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    """Reader loads v1; writer commits v2 and invalidates; the reader's fill loses."""
    cache = make_cache(redis_raw, key_prefix)
    [pid] = await add_products(ctx, 1)
    real = inventory_loader(ctx)
    loaded, resume = asyncio.Event(), asyncio.Event()

    async def slow_loader(p: int) -> ProductInventory | None:
        value = await real(p)  # reads v1 from the database
        loaded.set()
        await resume.wait()
        return value

    reader = asyncio.create_task(cache.get_or_load(INVENTORY, pid, slow_loader))
    await loaded.wait()
    v2 = await bump(ctx, pid, available=5)  # writer commits v2 ...
    await cache.invalidate(View.INVENTORY, pid, version=v2)  # ... and its event invalidates
    resume.set()
    stale = await reader
    assert stale.value is not None and stale.value.version == 1  # the reader got what it read
    assert await redis_raw.get(cache.keys.entry(View.INVENTORY, pid)) is None  # but no fill
    fresh = await cache.get_or_load(INVENTORY, pid, real)
    assert fresh.status == "miss" and fresh.value is not None and fresh.value.version == v2
    assert rejected(cache) == {"generation": 1, "stale": 0, "older": 0}


async def test_race_without_version_uses_generation(cache: CacheService) -> None:
    """An invalidation without a version (e.g. a history) still voids in-flight fills."""
    loaded, resume = asyncio.Event(), asyncio.Event()

    async def loader(pid: int) -> ProductInventory:
        loaded.set()
        await resume.wait()
        return inv(pid, 1)

    reader = asyncio.create_task(cache.get_or_load(INVENTORY, 11, loader))
    await loaded.wait()
    await cache.invalidate(View.INVENTORY, 11)
    resume.set()
    await reader
    assert await cache.get(INVENTORY, 11) is None


def rejected(cache: CacheService) -> dict[str, float]:
    """Fill rejections of the inventory view by reason."""
    return {
        r: cache.metrics.fills_rejected.labels("inventory", r)._value.get()
        for r in ("generation", "stale", "older")
    }


async def test_fill_below_the_tombstone_floor_is_rejected_as_stale(cache: CacheService) -> None:
    """The invalidation (floor 2) landed before the read began, but the load still saw
    version 1 (a lagging replica): the generation matches, the floor refuses it."""
    await cache.invalidate(View.INVENTORY, 12, version=2)

    async def lagging(pid: int) -> ProductInventory:
        return inv(pid, 1)

    got = await cache.get_or_load(INVENTORY, 12, lagging)
    assert got.status == "miss" and got.value == inv(12, 1)
    assert await cache.get(INVENTORY, 12) is None
    assert rejected(cache) == {"generation": 0, "stale": 1, "older": 0}


async def test_fill_under_a_newer_cached_entry_is_rejected_as_older(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    """Two processes miss: the slow one loaded v1, the other filled v2 meanwhile (a fill
    bumps no generation); the slow fill must not overwrite v2."""
    slow = make_cache(redis_raw, key_prefix)
    fast = make_cache(redis_raw, key_prefix, lease_wait=0.0)
    loaded, resume = asyncio.Event(), asyncio.Event()

    async def old_loader(pid: int) -> ProductInventory:
        loaded.set()
        await resume.wait()
        return inv(pid, 1)

    async def new_loader(pid: int) -> ProductInventory:
        return inv(pid, 2)

    reader = asyncio.create_task(slow.get_or_load(INVENTORY, 13, old_loader))
    await loaded.wait()
    assert (await fast.get_or_load(INVENTORY, 13, new_loader)).value == inv(13, 2)
    resume.set()
    assert (await reader).value == inv(13, 1)
    assert await slow.get(INVENTORY, 13) == inv(13, 2)
    assert rejected(slow) == {"generation": 0, "stale": 0, "older": 1}


# ---------------------------------------------------------------- stampedes
async def test_stampede_200_concurrent_misses_one_load(
    pooled: aioredis.Redis, redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    # 200 readers share 16 connections: on a busy CPU a script call may wait longer
    # than the other tests' 0.5 s budget, and a Redis error (a bypass) is not what
    # this test is about. With Redis answering, one load is guaranteed.
    cache = make_cache(pooled, key_prefix, timeout=10.0)
    calls = 0

    async def loader(pid: int) -> ProductInventory:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return inv(pid, 1)

    results = await asyncio.gather(*(cache.get_or_load(INVENTORY, 77, loader) for _ in range(200)))
    assert calls == 1
    assert all(r.value == inv(77, 1) for r in results)
    # Guaranteed: one load; every other reader either shared it (a single-flight wait,
    # answered with the leader's "miss") or came late enough to find the fill ("hit").
    # How many did which depends on scheduling (a busy CPU delays the later GETs).
    waits = cache.metrics.stampede_waits.labels("inventory", "singleflight")._value.get()
    statuses = [r.status for r in results]
    assert statuses.count("miss") == 1 + waits
    assert statuses.count("hit") == 199 - waits


async def test_lease_makes_second_process_wait(redis_raw: aioredis.Redis, key_prefix: str) -> None:
    """Two services (as two processes would be: separate single-flight) share one load."""
    a = make_cache(redis_raw, key_prefix, lease_wait=2.0)
    b = make_cache(redis_raw, key_prefix, lease_wait=2.0)
    calls = 0

    async def loader(pid: int) -> ProductInventory:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return inv(pid, 1)

    first = asyncio.create_task(a.get_or_load(INVENTORY, 88, loader))
    await asyncio.sleep(0.05)  # a holds the lease now
    second = await b.get_or_load(INVENTORY, 88, loader)
    assert (await first).status == "miss"
    assert second.status == "hit" and second.value == inv(88, 1)
    assert calls == 1
    assert b.metrics.stampede_waits.labels("inventory", "lease")._value.get() == 1


# ---------------------------------------------------------------- failures
@pytest.fixture
async def outage_cache(private_redis: ManagedProcess) -> AsyncIterator[CacheService]:
    client = aioredis.Redis.from_url(
        f"redis://{private_redis.url}/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )
    yield make_cache(client, "out")
    await client.aclose()


async def test_redis_outage_reads_bypass_then_recover(
    outage_cache: CacheService, private_redis: ManagedProcess
) -> None:
    cache = outage_cache
    calls = 0

    async def loader(pid: int) -> ProductInventory:
        nonlocal calls
        calls += 1
        return inv(pid, 1)

    assert (await cache.get_or_load(INVENTORY, 1, loader)).status == "miss"
    assert (await cache.get_or_load(INVENTORY, 1, loader)).status == "hit"
    private_redis.kill()
    statuses = [(await cache.get_or_load(INVENTORY, 1, loader)).status for _ in range(6)]
    assert statuses == ["bypass"] * 6  # never an exception
    assert cache.degraded
    assert cache.metrics.breaker_state._value.get() == 2
    # writes by the pipeline do raise, so it can retry and hold its offset
    with pytest.raises(CacheError):
        await cache.apply([Invalidate(View.INVENTORY, 1, 2)])
    # restart on the same port: after the reset pause a probe closes the breaker
    restarted = start_redis_server(port=private_redis.port)
    try:
        await asyncio.sleep(0.4)
        results = [(await cache.get_or_load(INVENTORY, 1, loader)).status for _ in range(3)]
        assert results[-2:] == ["hit", "hit"] or results == ["miss", "hit", "hit"]
        assert not cache.degraded
    finally:
        restarted.cleanup()


async def test_no_fill_while_degraded(outage_cache: CacheService) -> None:
    cache = outage_cache
    for _ in range(3):
        cache.breaker.failure()
    assert cache.degraded

    async def loader(pid: int) -> ProductInventory:
        return inv(pid, 1)

    assert (await cache.get_or_load(INVENTORY, 3, loader)).status == "bypass"
    cache.breaker.success()
    assert await cache.get(INVENTORY, 3) is None  # nothing was written while degraded


async def test_corrupt_entry_is_a_miss(cache: CacheService, redis_raw: aioredis.Redis) -> None:
    await redis_raw.set(cache.keys.entry(View.ORDER, 5), b"v1|{not json")
    calls = 0

    async def loader(oid: int) -> None:
        nonlocal calls
        calls += 1

    assert (await cache.get_or_load(ORDER, 5, loader)).status == "miss"
    assert calls == 1
    # the corrupt entry was replaced (here by a cached "not found"), even with a guard
    await cache.invalidate(View.ORDER, 6)
    await redis_raw.set(cache.keys.entry(View.ORDER, 6), b"v1|{not json")
    assert (await cache.get_or_load(ORDER, 6, loader)).status == "miss"
    again = await cache.get_or_load(ORDER, 6, loader)
    assert again.status == "hit" and again.value is None
    assert calls == 2
