"""The near-cache (L1): bounds and the fill/invalidation race as table tests, and its
coherence through Redis CLIENT TRACKING against the real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from ordercache.cache.near import RECENT, NearCache, NearConfig
from ordercache.cache.service import CacheService
from ordercache.cache.tracking import TrackingListener
from ordercache.cache.views import INVENTORY, View
from ordercache.errors import CacheError
from ordercache.local.services import ManagedProcess
from ordercache.models.views import ProductInventory
from tests.conftest import REDIS_URL
from tests.test_cache_service import inv, make_cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def live(config: NearConfig | None = None, clock: Clock | None = None) -> NearCache:
    near = NearCache(config, clock=clock or Clock())
    near.go_live()
    return near


# ------------------------------------------------------------------ table tests
def test_put_get_and_ttl_bound() -> None:
    clock = Clock()
    near = live(NearConfig(ttl=5.0), clock)
    assert near.put("k", b"v1|{}", near.token()) is not None
    assert near.get("k") is not None
    clock.now += 4.9
    assert near.get("k") is not None
    clock.now += 0.2
    assert near.get("k") is None and "k" not in near


def test_ttl_never_beyond_the_given_cap() -> None:
    clock = Clock()
    near = live(NearConfig(ttl=5.0), clock)
    near.put("k", b"v1|{}", near.token(), ttl=1.0)
    clock.now += 1.01
    assert near.get("k") is None


def test_size_bound_drops_least_recently_used() -> None:
    near = live(NearConfig(max_entries=3))
    for k in "abc":
        near.put(k, b"x", near.token())
    near.get("a")  # a is now the most recent
    near.put("d", b"x", near.token())
    assert len(near) == 3 and "b" not in near and {"a", "c", "d"} <= set(near._data)


@pytest.mark.parametrize(
    ("between", "kept"),
    [
        ([], True),  # nothing happened since the token
        (["other"], True),  # another key changed
        (["k"], False),  # this key changed after the read began: may be stale
        (["other", "k", "x"], False),
        ([None], False),  # a flush (FLUSHDB, disconnect, breaker) voids every pending fill
    ],
)
def test_fill_refused_after_a_concurrent_invalidation(
    between: list[str | None], kept: bool
) -> None:
    near = live()
    token = near.token()
    for key in between:
        if key is None:
            near.flush("test")
        else:
            near.invalidate([key])
    assert (near.put("k", b"x", token) is not None) is kept


def test_fill_refused_when_too_many_invalidations_to_check() -> None:
    near = live()
    token = near.token()
    near.invalidate(f"o{i}" for i in range(RECENT + 1))
    assert near.put("k", b"x", token) is None
    assert near.put("k", b"x", near.token()) is not None


def test_dark_cache_neither_keeps_nor_serves() -> None:
    near = live()
    near.put("k", b"x", near.token())
    near.go_dark("disconnected")
    assert near.get("k") is None and near.put("k", b"x", near.token()) is None
    near.go_live()
    assert near.put("k", b"x", near.token()) is not None


# ------------------------------------------------------------ against real Redis
@pytest.fixture
async def l1(
    redis_raw: aioredis.Redis, key_prefix: str
) -> AsyncIterator[tuple[CacheService, TrackingListener]]:
    cache = make_cache(redis_raw, key_prefix)
    cache.near = NearCache(NearConfig(ttl=60.0))
    listener = TrackingListener(redis_raw, cache.near, key_prefix, ping_interval=0.2)
    await listener.start()
    assert await listener.wait_live(10)
    yield cache, listener
    await listener.stop()


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def loader_of(versions: dict[int, int]):  # type: ignore[no-untyped-def]
    async def load(pid: int) -> ProductInventory | None:
        return inv(pid, versions[pid])

    return load


async def test_l1_hit_through_the_same_call_and_metrics(
    l1: tuple[CacheService, TrackingListener],
) -> None:
    cache, _ = l1
    load = loader_of({7: 1})
    assert (await cache.get_or_load(INVENTORY, 7, load)).status == "miss"
    # the fill's own writes are broadcast too; read until the entry is kept
    await fill_l1(cache, 7, load)
    near_hits = cache.metrics.near_hits
    near_hits.flush()
    before = cache.metrics.requests.labels("inventory", "hit")._value.get()
    counted = near_hits.total("inventory")
    result = await cache.get_or_load(INVENTORY, 7, load)
    assert (result.status, result.value) == ("hit", inv(7, 1))
    assert near_hits.total("inventory") == counted + 1
    near_hits.flush()  # what every scrape does first
    assert cache.metrics.requests.labels("inventory", "hit")._value.get() == before + 1
    body = await cache.get_or_load_body(INVENTORY, 7, load)
    assert body.body == inv(7, 1).model_dump_json().encode()


async def fill_l1(cache: CacheService, pid: int, load) -> str:  # type: ignore[no-untyped-def]
    key = cache.keys.entry(View.INVENTORY, pid)
    assert cache.near is not None
    deadline = time.monotonic() + 10
    while key not in cache.near:
        assert time.monotonic() < deadline
        await cache.get_or_load(INVENTORY, pid, load)
        await asyncio.sleep(0.01)
    return key


async def test_invalidation_by_another_client_empties_l1(
    l1: tuple[CacheService, TrackingListener], redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    cache, _ = l1
    versions = {8: 1}
    key = await fill_l1(cache, 8, loader_of(versions))
    # another process's pipeline: its own client and service
    other = aioredis.Redis.from_url(REDIS_URL)
    try:
        await make_cache(other, key_prefix).invalidate(View.INVENTORY, 8, version=2)
    finally:
        await other.aclose()
    assert cache.near is not None
    await until(lambda: key not in cache.near)  # type: ignore[operator]
    versions[8] = 2
    assert (await cache.get_or_load(INVENTORY, 8, loader_of(versions))).value == inv(8, 2)


async def test_disconnect_flushes_and_stops_serving_until_resubscribed(
    l1: tuple[CacheService, TrackingListener], redis_raw: aioredis.Redis
) -> None:
    cache, listener = l1
    await fill_l1(cache, 9, loader_of({9: 1}))
    near = cache.near
    assert near is not None
    subscribed, flushes = listener.subscriptions, near.flushes
    (client_id,) = listener.client_ids.values()
    await redis_raw.execute_command("CLIENT", "KILL", "ID", client_id)
    await until(lambda: near.flushes > flushes)
    assert len(near) == 0 or listener.subscriptions > subscribed
    await until(lambda: listener.subscriptions > subscribed and near.live)


async def test_breaker_open_flushes_l1(l1: tuple[CacheService, TrackingListener]) -> None:
    cache, _ = l1
    await fill_l1(cache, 10, loader_of({10: 1}))
    assert cache.near is not None and len(cache.near) > 0
    for _ in range(cache.breaker.threshold):
        cache._failed(View.INVENTORY, "get", CacheError("simulated"))
    assert cache.degraded and len(cache.near) == 0
    # and while degraded it serves nothing from L1
    assert (await cache.get_or_load(INVENTORY, 10, loader_of({10: 1}))).status == "bypass"


async def test_missed_invalidation_is_stale_at_most_the_l1_ttl(
    redis_raw: aioredis.Redis, key_prefix: str
) -> None:
    """A listener that never gets this key's invalidation (it watches another prefix,
    as if the message were lost) serves the old value only until the L1 TTL ends."""
    clock = Clock()
    cache = make_cache(redis_raw, key_prefix)
    cache.near = NearCache(NearConfig(ttl=5.0), clock=clock)
    listener = TrackingListener(redis_raw, cache.near, key_prefix + "-elsewhere")
    await listener.start()
    try:
        assert await listener.wait_live(10)
        versions = {11: 1}
        key = await fill_l1(cache, 11, loader_of(versions))
        await cache.invalidate(View.INVENTORY, 11, version=2)  # never reaches this L1
        versions[11] = 2
        clock.now += 4.9
        assert (await cache.get_or_load(INVENTORY, 11, loader_of(versions))).value == inv(11, 1)
        clock.now += 0.2  # past the bound
        assert (await cache.get_or_load(INVENTORY, 11, loader_of(versions))).value == inv(11, 2)
        assert key not in cache.near
    finally:
        await listener.stop()


def test_near_hits_reach_the_requests_counter_at_every_scrape() -> None:
    from prometheus_client import CollectorRegistry

    from ordercache.cache.metrics import CacheMetrics

    registry = CollectorRegistry()
    metrics = CacheMetrics.create(registry)
    metrics.requests.labels("order", "hit").inc(2)  # Redis hits
    metrics.near_hits.hits["order"] += 3  # near-cache hits
    metrics.near_hits.negative["inventory"] += 1
    labels = {"view": "order", "result": "hit"}
    assert registry.get_sample_value("ordercache_cache_requests_total", labels) == 5
    assert registry.get_sample_value("ordercache_cache_near_hits_total", {"view": "order"}) == 3
    negative = {"view": "inventory", "result": "negative_hit"}
    assert registry.get_sample_value("ordercache_cache_requests_total", negative) == 1
    metrics.near_hits.hits["order"] += 1
    assert registry.get_sample_value("ordercache_cache_requests_total", labels) == 6


async def test_failover_to_another_primary_resubscribes_there(
    redis_raw: aioredis.Redis, key_prefix: str, private_redis: ManagedProcess
) -> None:
    """The old primary may stay up (as a replica) with our listener still connected:
    once the client writes elsewhere, the near-cache goes dark and follows it."""
    cache = make_cache(redis_raw, key_prefix)
    near = cache.near = NearCache(NearConfig(ttl=60.0))
    listener = TrackingListener(redis_raw, near, key_prefix, ping_interval=0.1)
    await listener.start()
    new_primary = aioredis.Redis.from_url(f"redis://{private_redis.url}/0")
    try:
        assert await listener.wait_live(10)
        await fill_l1(cache, 12, loader_of({12: 1}))
        flushes = near.flushes
        listener.client = new_primary  # what a Sentinel client does after a failover
        await until(lambda: near.flushes > flushes and len(near) == 0)
        await until(lambda: near.live and listener.subscriptions >= 2)
        # now it hears the new primary's changes
        key = cache.keys.entry(View.INVENTORY, 12)
        assert near.put(key, b"v1|{}", near.token()) is not None
        await new_primary.set(key, b"changed")
        await until(lambda: key not in near)
    finally:
        await listener.stop()
        await new_primary.aclose()
