"""Cache benchmarks, each measure against its baseline at its best, in one run.

    python -m bench.cache [--orders 5000] [--rounds 9] [--cluster] [--json]

1. hit path, L1 off: raw redis-py ``GET`` + ``orjson.loads`` + model validation
   vs ``CacheService.get_or_load`` (hit; metrics included)
2. 100-key batch: raw ``MGET`` + ``orjson.loads`` of each value vs ``get_many``
   (and, for the same output, raw ``MGET`` + ``orjson`` + model validation)
3. L1 hit: raw ``GET`` + ``orjson`` vs ``get_or_load`` answered by the near-cache
   (the same public call as a Redis hit, metrics included)
4. L1 coherence: start of an invalidation by another client -> the L1 entry gone
   (p99 of 300; an upper bound of commit -> gone)
5. per view: cache hit vs the same view loaded from PostgreSQL
6. stampede across processes: 4 processes x 50 concurrent misses of one key -> loads

``--cluster`` measures 3 and 4 on a private 3-primary Redis Cluster instead (keys on
every primary; the listener holds one connection per primary), against the same
baseline through the cluster client.

Rounds are interleaved, the order alternates, and the figure is the median of
per-round ratios (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from bench.common import (
    REDIS_URL,
    Report,
    add_json_flag,
    latencies,
    log,
    median,
    p,
    paired,
    scratch_database,
    throughput,
)
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.near import NearCache, NearConfig
from ordercache.cache.service import CacheConfig, CacheService, build_cache_service
from ordercache.cache.tracking import TrackingListener
from ordercache.cache.views import HISTORY, INVENTORY, ORDER, ViewSpec
from ordercache.db import repository as repo
from ordercache.db.engine import create_engine, session_factory
from ordercache.models.orm import Customer, Order, Product
from ordercache.models.views import OrderDetails
from ordercache.redisconn.client import AnyRedis
from ordercache.sample.seed import SeedSpec, run_seed

STAMPEDE_PROCS = 4
STAMPEDE_PER_PROC = 50


def make_client(max_connections: int = 32) -> aioredis.Redis:
    return aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=max_connections)
    )


def make_cache(client: AnyRedis, prefix: str, **config: Any) -> CacheService:
    """A cache service as the worker builds it (early refresh on, beta 1.0)."""
    return build_cache_service(
        client,
        KeySpace(prefix),
        TtlPolicy(jitter=0.1),
        CacheMetrics.create(CollectorRegistry()),
        timeout=0.5,
        config=CacheConfig(**{"xfetch_beta": 1.0, **config}),
    )


async def main(orders: int, rounds: int, as_json: bool) -> None:
    report = Report("cache")
    async with scratch_database() as url:
        engine = create_engine(url, pool_size=10)
        spec = SeedSpec(customers=max(100, orders // 50), products=500, orders=orders)
        seeded = await run_seed(engine, spec)
        log(f"seeded: {seeded.summary()}")
        sessions = session_factory(engine)
        async with sessions() as s:
            order_ids = list((await s.execute(select(Order.id).limit(2000))).scalars())
            customer_ids = list(
                (await s.execute(select(Customer.id).order_by(func.random()).limit(500))).scalars()
            )
            product_ids = list((await s.execute(select(Product.id).limit(500))).scalars())
        client = make_client()
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        cache = make_cache(client, prefix)
        try:
            load = loaders(sessions)
            await hit_path(report, cache, client, load, order_ids[0], rounds)
            await batch(report, cache, client, sessions, order_ids[:100], rounds)
            await near_cache(report, client, prefix, load, order_ids[:2], rounds)
            await per_view(report, cache, load, order_ids, customer_ids, product_ids, rounds)
            await stampede(report, prefix)
        finally:
            await cleanup(client, prefix)
            await client.aclose()
            await engine.dispose()
    report.emit(as_json)


async def cleanup(client: aioredis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(k)
        if len(batch) == 1000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


def loaders(sessions: Any) -> dict[str, Callable[[int], Awaitable[Any]]]:
    async def order(i: int) -> Any:
        async with sessions() as s:
            return await repo.load_order_details(s, i)

    async def history(i: int) -> Any:
        async with sessions() as s:
            return await repo.load_customer_history(s, i)

    async def inventory(i: int) -> Any:
        async with sessions() as s:
            return await repo.load_inventory(s, i)

    return {"order": order, "history": history, "inventory": inventory}


async def hit_path(
    report: Report,
    cache: CacheService,
    client: aioredis.Redis,
    load: dict[str, Callable[[int], Awaitable[Any]]],
    oid: int,
    rounds: int,
) -> None:
    await cache.get_or_load(ORDER, oid, load["order"])
    raw_key = f"{cache.keys.prefix}:raw:{oid}"
    value = await load["order"](oid)
    await client.set(raw_key, value.model_dump_json())

    async def raw_get() -> Any:
        return OrderDetails.model_validate(orjson.loads(await client.get(raw_key)))  # type: ignore[arg-type]

    async def our_get() -> Any:
        return await cache.get_or_load(ORDER, oid, load["order"])

    for fn in (raw_get, our_get):  # warm connections and code paths
        await throughput(fn, 500)
    result = await paired(
        rounds, lambda: throughput(raw_get, 3000), lambda: throughput(our_get, 3000)
    )
    report.paired(
        "hit path, L1 off (ops/s)",
        "ops/s",
        result,
        target=0.95,
        detail="raw GET + orjson + model validation",
    )


async def batch(
    report: Report,
    cache: CacheService,
    client: aioredis.Redis,
    sessions: Any,
    ids: list[int],
    rounds: int,
) -> None:
    async with sessions() as s:
        found = await repo.load_order_details_many(s, ids)
    await cache.set_many(ORDER, [found[i] for i in ids if i in found])
    keys = [cache.keys.entry(ORDER.view, i) for i in ids]

    async def raw_mget() -> None:
        for raw in await client.mget(keys):
            if raw is not None:
                orjson.loads(raw.partition(b"|")[2])

    async def raw_mget_models() -> None:
        for raw in await client.mget(keys):
            if raw is not None:
                OrderDetails.model_validate(orjson.loads(raw.partition(b"|")[2]))

    async def ours() -> None:
        await cache.get_many(ORDER, ids)

    for fn in (raw_mget, raw_mget_models, ours):
        await throughput(fn, 50)
    result = await paired(rounds, lambda: throughput(raw_mget, 300), lambda: throughput(ours, 300))
    report.paired(
        "100-key batch (batches/s)", "batches/s", result, target=0.8, detail="raw MGET + orjson"
    )
    same = await paired(
        rounds, lambda: throughput(raw_mget_models, 300), lambda: throughput(ours, 300)
    )
    report.paired(
        "100-key batch, same output (batches/s)",
        "batches/s",
        same,
        target=0.8,
        detail="raw MGET + orjson + model validation",
    )


async def near_cache(
    report: Report,
    client: AnyRedis,
    prefix: str,
    load: dict[str, Callable[[int], Awaitable[Any]]],
    ids: list[int],
    rounds: int,
    other_client: Callable[[], AnyRedis] = lambda: make_client(4),
) -> None:
    """L1 hit vs raw GET + orjson; coherence lag of L1 after an invalidation (of each
    of ``ids`` in turn, by a client of its own)."""
    cache = make_cache(client, prefix)
    near = NearCache(NearConfig(ttl=60.0))
    cache.near = near
    listener = TrackingListener(client, near, prefix)
    await listener.start()
    try:
        assert await listener.wait_live(10)
        oid = ids[0]
        key = await _fill_near(cache, oid, load["order"])
        raw_key = f"{prefix}:raw:{oid}"
        await client.set(raw_key, (await client.get(key)).partition(b"|")[2])  # type: ignore[union-attr]

        async def raw_get() -> Any:
            return orjson.loads(await client.get(raw_key))  # type: ignore[arg-type]

        async def our_get() -> Any:
            return await cache.get_or_load(ORDER, oid, load["order"])

        async def raw_round() -> float:
            return await throughput(raw_get, 1000)

        async def our_round() -> float:
            return await throughput(our_get, 50_000)

        result = await paired(rounds, raw_round, our_round)
        assert key in near, "the L1 entry was dropped during the measure"
        report.paired(
            "L1 hit through get_or_load, metrics included (ops/s)",
            "ops/s",
            result,
            target=100.0,
            detail="raw GET + orjson",
        )
        # Coherence: from the start of an invalidation (another client, as the
        # pipeline's) to the L1 entry gone. The start includes the invalidation's
        # own round trip, so this is an upper bound on commit -> gone.
        other = other_client()
        invalidator = make_cache(other, prefix)
        lags: list[float] = []
        after_reply: list[float] = []
        try:
            for i in range(300):
                oid = ids[i % len(ids)]
                key = await _fill_near(cache, oid, load["order"])
                t0 = time.perf_counter()
                await invalidator.invalidate(ORDER.view, oid, version=None)
                t1 = time.perf_counter()
                while key in near:
                    await asyncio.sleep(0)
                t2 = time.perf_counter()
                lags.append(t2 - t0)
                after_reply.append(t2 - t1)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
        finally:
            await other.aclose()
        p99 = quantile_ms(lags, 0.99)
        report.absolute(
            "L1 coherence, invalidation -> L1 entry gone, p99",
            "ms",
            p99,
            target="<= 10 ms",
            met=p99 <= 10.0,
            p50_ms=quantile_ms(lags, 0.5),
            max_ms=max(lags) * 1e3,
            # from the invalidation's reply instead (a lower bound of commit -> gone)
            after_reply_p99_ms=quantile_ms(after_reply, 0.99),
            samples=len(lags),
        )
    finally:
        await listener.stop()


async def _fill_near(cache: CacheService, oid: int, loader: Callable[[int], Awaitable[Any]]) -> str:
    key = cache.keys.entry(ORDER.view, oid)
    assert cache.near is not None
    for _ in range(1000):
        await cache.get_or_load(ORDER, oid, loader)
        if key in cache.near:
            return key
        await asyncio.sleep(0.001)
    raise RuntimeError("L1 entry never kept")


async def per_view(
    report: Report,
    cache: CacheService,
    load: dict[str, Callable[[int], Awaitable[Any]]],
    order_ids: list[int],
    customer_ids: list[int],
    product_ids: list[int],
    rounds: int,
) -> None:
    views: list[tuple[str, ViewSpec[Any], list[int]]] = [
        ("order", ORDER, order_ids[:300]),
        ("history", HISTORY, customer_ids[:300]),
        ("inventory", INVENTORY, product_ids[:300]),
    ]
    for name, spec, idlist in views:
        for i in idlist:
            await cache.get_or_load(spec, i, load[name])

        async def db_call(idlist: list[int] = idlist, name: str = name) -> Any:
            return await load[name](random.choice(idlist))

        async def hit_call(
            idlist: list[int] = idlist, name: str = name, spec: ViewSpec[Any] = spec
        ) -> Any:
            return await cache.get_or_load(spec, random.choice(idlist), load[name])

        result = await paired(
            rounds,
            lambda db_call=db_call: _p50(db_call),  # type: ignore[misc]
            lambda hit_call=hit_call: _p50(hit_call),  # type: ignore[misc]
            better="lower",
        )
        report.paired(f"{name} view p50, hit vs database (s)", "s", result, target=5.0)


async def _p50(fn: Callable[[], Awaitable[Any]]) -> float:
    return median(await latencies(fn, 100))


# ------------------------------------------------------------ stampede, processes
def _stampede_child(prefix: str, oid: int, start_at: float, out: Any) -> None:
    out.put(asyncio.run(_stampede_in_process(prefix, oid, start_at)))


async def _stampede_in_process(prefix: str, oid: int, start_at: float) -> int:
    client = make_client(64)
    cache = make_cache(client, prefix)
    loads = 0
    now = datetime(2026, 1, 1, tzinfo=UTC)

    async def loader(i: int) -> OrderDetails:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)  # a database read
        return OrderDetails(
            order_id=i, customer_id=1, status="paid", total_cents=100, currency="EUR",
            created_at=now, updated_at=now, version=1, items=[],
        )  # fmt: skip

    try:
        await client.ping()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(
            *(cache.get_or_load(ORDER, oid, loader) for _ in range(STAMPEDE_PER_PROC))
        )
        return loads
    finally:
        await client.aclose()


async def stampede(report: Report, prefix: str) -> None:
    ctx = mp.get_context("spawn")
    runs: list[int] = []
    for r in range(3):
        oid = 900_000_000 + r
        out = ctx.Queue()
        start_at = time.time() + 2.0  # every process connected and waiting
        procs = [
            ctx.Process(target=_stampede_child, args=(prefix, oid, start_at, out))
            for _ in range(STAMPEDE_PROCS)
        ]
        for proc in procs:
            proc.start()
        total = sum(out.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(10)
        runs.append(total)
    report.absolute(
        f"stampede: {STAMPEDE_PROCS} processes x {STAMPEDE_PER_PROC} concurrent misses",
        "database loads",
        max(runs),
        target="== 1",
        met=max(runs) == 1,
        runs=runs,
    )


async def cluster_main(rounds: int, as_json: bool) -> None:
    """The near-cache measures on a private 3-primary cluster."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from tests.redis_procs import start_cluster

    report = Report("cache-cluster")
    cluster = await asyncio.to_thread(start_cluster, 3)

    def cluster_client() -> RedisCluster:
        nodes = [ClusterNode("127.0.0.1", n.port) for n in cluster.nodes]
        return RedisCluster(startup_nodes=nodes, socket_timeout=5.0)

    try:
        async with scratch_database() as url:
            engine = create_engine(url, pool_size=4)
            await run_seed(engine, SeedSpec(customers=20, products=50, orders=200))
            async with session_factory(engine)() as s:
                order_ids = list((await s.execute(select(Order.id).limit(200))).scalars())
            client = cluster_client()
            await client.initialize()
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            keys = KeySpace(prefix)
            owners: dict[str, int] = {}  # one order per primary
            for oid in order_ids:
                node = client.get_node_from_key(keys.entry(ORDER.view, oid))
                assert node is not None
                owners.setdefault(node.name, oid)
            log(f"cluster: {len(cluster.nodes)} primaries, orders {sorted(owners.values())}")
            try:
                await near_cache(
                    report, client, prefix, loaders(session_factory(engine)),
                    sorted(owners.values()), rounds, cluster_client,
                )  # fmt: skip
            finally:
                await client.aclose()
                await engine.dispose()
    finally:
        cluster.cleanup()
    report.emit(as_json)


def quantile_ms(xs: list[float], q: float) -> float:
    return p(xs, q) * 1e3


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--cluster", action="store_true", help="near-cache measures on a cluster")
    add_json_flag(ap)
    a = ap.parse_args()
    if a.cluster:
        asyncio.run(cluster_main(a.rounds, a.json))
    else:
        asyncio.run(main(a.orders, a.rounds, a.json))
