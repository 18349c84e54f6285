"""Cache warming against a private Redis (restarted) and the session's PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from ordercache.app.context import AppContext
from ordercache.cache.service import CacheService
from ordercache.cache.views import HISTORY, INVENTORY, ORDER, ViewSpec
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.sample.seed import SeedSpec, run_seed
from ordercache.warming import CacheWarmer, WarmConfig, Warming, WarmMetrics, hotset
from tests.conftest import unique
from tests.test_cache_service import make_cache

RATE = 50


@pytest.fixture
async def seeded(ctx: AppContext) -> AppContext:
    await run_seed(ctx.engine, SeedSpec(customers=15, products=30, orders=60))
    return ctx


class Counted:
    """Every database load of the warmer, with its wall-clock second and size."""

    def __init__(self, warmer: CacheWarmer) -> None:
        self.loads: list[tuple[float, int]] = []
        inner = warmer._loader

        def loader(spec: ViewSpec[Any]) -> Callable[[Sequence[int]], Awaitable[Mapping[int, Any]]]:
            load = inner(spec)

            async def counted(ids: Sequence[int]) -> Mapping[int, Any]:
                out = await load(ids)
                self.loads.append((time.time(), len(ids)))
                return out

            return counted

        warmer._loader = loader  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.loads)


def warmer_for(cache: CacheService, ctx: AppContext, **cfg: Any) -> CacheWarmer:
    config = WarmConfig(
        **{"rate": RATE, "batch": 20, "orders": 40, "customers": 10, "products": 0,
           "check_interval": 0.05, **cfg}
    )  # fmt: skip
    return CacheWarmer(cache, ctx.sessions, config, WarmMetrics.create(CollectorRegistry()))


async def hot_keys(cache: CacheService, ctx: AppContext, cfg: WarmConfig) -> list[str]:
    async with ctx.sessions() as s:
        plan = [
            (ORDER, await hotset.hot_orders(s, cfg.orders)),
            (HISTORY, await hotset.hot_customers(s, cfg.customers)),
            (INVENTORY, await hotset.hot_products(s, cfg.products)),
        ]
    return [cache.keys.entry(spec.view, i) for spec, ids in plan for i in ids]


async def until(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def redis_proc() -> AsyncIterator[list[ManagedProcess]]:
    procs = [start_redis_server()]
    yield procs
    for p in procs:
        p.cleanup()


async def test_hot_set_cached_after_restart_with_bounded_database_load(
    seeded: AppContext, redis_proc: list[ManagedProcess]
) -> None:
    port = redis_proc[0].port
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    cache = make_cache(client, unique("w"))
    warmer = warmer_for(cache, seeded)
    counted = Counted(warmer)
    warming = Warming(warmer)
    warming.start()
    try:
        keys = await hot_keys(cache, seeded, warmer.config)
        assert len(keys) > RATE  # more than one second's worth of loads at the rate
        await until(lambda: warmer.progress.state == "done")
        assert warmer.progress.rounds == 1 and warmer.progress.filled == len(keys)
        assert all(await client.mget(keys))

        # Redis restarts empty (new run_id): the warmer notices and warms again
        redis_proc[0].kill()
        redis_proc.append(start_redis_server(port=port))
        await until(lambda: warmer.progress.rounds == 2 and warmer.progress.state == "done")
        assert all(await client.mget(keys))
        # the database saw at most RATE loads in any wall-clock second (the limiter's
        # windows), and every hot entry was loaded exactly once per round
        per_second: dict[int, int] = {}
        for t, n in counted.loads:
            per_second[int(t)] = per_second.get(int(t), 0) + n
        first, last = counted.loads[0][0], counted.loads[-1][0]
        assert counted.total == 2 * len(keys)
        assert counted.total <= RATE * (int(last) - int(first) + 2)
        assert warmer.progress.as_dict()["progress"] == 1.0
    finally:
        await warming.stop()
        await client.aclose()


async def test_two_workers_split_the_work(seeded: AppContext, redis_raw: aioredis.Redis) -> None:
    prefix = unique("w")
    caches = [make_cache(redis_raw, prefix) for _ in range(2)]
    warmers = [warmer_for(c, seeded, rate=1000) for c in caches]
    counters = [Counted(w) for w in warmers]
    identity = await caches[0].server_identity()
    assert identity is not None
    await asyncio.gather(*(w.warm(identity) for w in warmers))
    keys = await hot_keys(caches[0], seeded, warmers[0].config)
    assert all(await redis_raw.mget(keys))
    # every chunk was loaded by exactly one of them
    assert sum(c.total for c in counters) == len(keys)
    assert all(
        w.progress.chunks_done + w.progress.chunks_elsewhere == w.progress.chunks for w in warmers
    )


async def test_warming_is_cancelled_on_stop(seeded: AppContext, redis_raw: aioredis.Redis) -> None:
    cache = make_cache(redis_raw, unique("w"))
    warmer = warmer_for(cache, seeded, rate=5, batch=5)
    warming = Warming(warmer)
    warming.start()
    await until(lambda: warmer.progress.state == "warming")
    await warming.stop()
    assert warmer.progress.state == "cancelled"
    assert await redis_raw.get(warmer.marker) is None  # not marked warm: a restart warms again


async def test_stop_ends_warming_even_when_a_redis_call_loses_the_cancellation(
    seeded: AppContext, redis_raw: aioredis.Redis
) -> None:
    # On Python 3.11 redis-py's send (asyncio.wait_for) can return normally from a
    # cancelled task: the cancellation is lost, and a single cancel() left the warming
    # loop running for good (a worker's shutdown hung on it). Stopped at many points
    # of a round and of the idle checks after it, warming always ends.
    for i in range(20):
        # the worker's own client (its socket timeout makes redis-py send through wait_for)
        warmer = warmer_for(seeded.cache, seeded, rate=100_000, batch=5, check_interval=0)
        warming = Warming(warmer)
        warming.start()
        await asyncio.sleep(0.01 * i)
        await asyncio.wait_for(warming.stop(), timeout=30)
        assert warming.task is None


async def test_warm_fill_loses_to_an_invalidation(
    seeded: AppContext, redis_raw: aioredis.Redis
) -> None:
    """Warming goes through the version guard: an invalidation during its load wins."""
    from ordercache.cache.bulk import fill_missing

    cache = make_cache(redis_raw, unique("w"))
    async with seeded.sessions() as s:
        pids = await hotset.hot_products(s, 3)

    async def load(ids: Sequence[int]) -> Mapping[int, Any]:
        from ordercache.db import repository

        async with seeded.sessions() as s:
            out = await repository.load_inventory_many(s, ids)
        await cache.invalidate(INVENTORY.view, pids[0])  # lands during the load
        return out

    outcome = await fill_missing(cache, INVENTORY, pids, load)
    assert (outcome.loaded, outcome.filled, outcome.rejected) == (3, 2, 1)
    assert await redis_raw.get(cache.keys.entry(INVENTORY.view, pids[0])) is None


async def test_progress_in_stats_and_metrics(seeded: AppContext, redis_raw: aioredis.Redis) -> None:
    from ordercache.cache.breaker import CircuitBreaker
    from ordercache.health.redis_info import RedisMonitor
    from ordercache.web.stats import StatsReporter

    cache = make_cache(redis_raw, unique("w"))
    reg = CollectorRegistry()
    warmer = CacheWarmer(
        cache, seeded.sessions, WarmConfig(rate=1000, orders=5, customers=2, products=3),
        WarmMetrics.create(reg),
    )  # fmt: skip
    reporter = StatsReporter(
        reg,
        redis=seeded.redis,
        monitor=RedisMonitor(seeded.redis.client),
        breaker=CircuitBreaker(),
        warming=warmer.status,
    )
    assert reporter.render()["warming"]["state"] == "idle"
    identity = await cache.server_identity()
    assert identity is not None
    await warmer.warm(identity)
    shown = reporter.render()["warming"]
    assert (shown["state"], shown["progress"], shown["filled"]) == ("done", 1.0, 10)
    assert reg.get_sample_value("ordercache_cache_warm_progress_ratio") == 1.0
    filled = reg.get_sample_value(
        "ordercache_cache_warm_entries_total", {"view": "order", "outcome": "filled"}
    )
    assert filled == 5
