"""Cache benchmarks, baseline and ours side by side in one run.

    python -m bench.cache [--orders 20000] [--rounds 7]

1. hit path: raw redis-py asyncio GET + json.loads  vs  CacheService.get_or_load (hit)
2. batch of 100: 100 sequential raw GETs  vs  CacheService.get_many (one MGET)
3. per view: cache hit  vs  the same view loaded through the database (PostgreSQL)
4. stampede: 200 concurrent misses of one key -> database loads

Rounds alternate baseline and ours; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from bench.common import REDIS_URL, latencies, median, scratch_database, table, throughput
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.service import CacheService, build_cache_service
from ordercache.cache.views import HISTORY, INVENTORY, ORDER, ViewSpec
from ordercache.db import repository as repo
from ordercache.db.engine import create_engine, session_factory
from ordercache.models.orm import Customer, Order, Product
from ordercache.sample.seed import SeedSpec, run_seed


async def main(orders: int, rounds: int) -> None:
    async with scratch_database() as url:
        engine = create_engine(url, pool_size=10)
        spec = SeedSpec(customers=max(100, orders // 50), products=500, orders=orders)
        report = await run_seed(engine, spec)
        print(f"seeded: {report.summary()}")
        sessions = session_factory(engine)
        async with sessions() as s:
            order_ids = list((await s.execute(select(Order.id).limit(2000))).scalars())
            customer_ids = list(
                (await s.execute(select(Customer.id).order_by(func.random()).limit(500))).scalars()
            )
            product_ids = list((await s.execute(select(Product.id).limit(500))).scalars())
        client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=32)
        )
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        cache = build_cache_service(
            client,
            KeySpace(prefix),
            TtlPolicy(jitter=0.1),
            CacheMetrics.create(CollectorRegistry()),
            timeout=0.5,
        )
        try:
            await run_all(cache, client, sessions, order_ids, customer_ids, product_ids, rounds)
        finally:
            async for batch in _scan(client, f"{prefix}:*"):
                await client.unlink(*batch)
            await client.aclose()
            await engine.dispose()


async def _scan(client: aioredis.Redis, match: str):  # type: ignore[no-untyped-def]
    batch = []
    async for k in client.scan_iter(match=match, count=1000):
        batch.append(k)
        if len(batch) == 1000:
            yield batch
            batch = []
    if batch:
        yield batch


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


async def run_all(
    cache: CacheService,
    client: aioredis.Redis,
    sessions: Any,
    order_ids: list[int],
    customer_ids: list[int],
    product_ids: list[int],
    rounds: int,
) -> None:
    load = loaders(sessions)
    rows: list[tuple[str, ...]] = []

    # 1. hit path --------------------------------------------------------------
    oid = order_ids[0]
    await cache.get_or_load(ORDER, oid, load["order"])
    raw_key = f"{cache.keys.prefix}:raw:{oid}"
    value = await load["order"](oid)
    await client.set(raw_key, value.model_dump_json())

    async def raw_get() -> Any:
        return json.loads(await client.get(raw_key))  # type: ignore[arg-type]

    async def our_get() -> Any:
        return await cache.get_or_load(ORDER, oid, load["order"])

    base_tp, our_tp = [], []
    for _ in range(rounds):
        base_tp.append(await throughput(raw_get, 2000))
        our_tp.append(await throughput(our_get, 2000))
    rows.append(
        (
            "hit path, order view (ops/s)",
            f"{median(base_tp):,.0f} raw GET+json.loads",
            f"{median(our_tp):,.0f} get_or_load",
            f"{median(our_tp) / median(base_tp):.2f}x",
            ">= 0.85x",
        )
    )

    # 2. batch of 100 ---------------------------------------------------------------
    ids = order_ids[:100]
    values = await repo_many(sessions, ids)
    await cache.set_many(ORDER, values)
    keys = [cache.keys.entry(ORDER.view, i) for i in ids]

    async def seq_100() -> None:
        for k in keys:
            await client.get(k)

    async def mget_100() -> None:
        await cache.get_many(ORDER, ids)

    seq, batch = [], []
    for _ in range(rounds):
        seq.append(median(await latencies(seq_100, 20)))
        batch.append(median(await latencies(mget_100, 20)))
    rows.append(
        (
            "read 100 keys (ms per batch)",
            f"{median(seq) * 1e3:.2f} 100 sequential GETs",
            f"{median(batch) * 1e3:.2f} get_many",
            f"{median(seq) / median(batch):.1f}x faster",
            ">= 5x",
        )
    )

    # 3. hit vs database per view -------------------------------------------------
    views: list[tuple[str, ViewSpec[Any], list[int]]] = [
        ("order", ORDER, order_ids[:300]),
        ("history", HISTORY, customer_ids[:300]),
        ("inventory", INVENTORY, product_ids[:300]),
    ]
    for name, spec, idlist in views:
        for i in idlist:
            await cache.get_or_load(spec, i, load[name])
        db_p50, hit_p50 = [], []
        for _ in range(rounds):

            async def db_call(idlist: list[int] = idlist, name: str = name) -> Any:
                return await load[name](random.choice(idlist))

            async def hit_call(
                idlist: list[int] = idlist, name: str = name, spec: ViewSpec[Any] = spec
            ) -> Any:
                return await cache.get_or_load(spec, random.choice(idlist), load[name])

            db_p50.append(median(await latencies(db_call, 100)))
            hit_p50.append(median(await latencies(hit_call, 100)))
        rows.append(
            (
                f"{name} view p50 (ms)",
                f"{median(db_p50) * 1e3:.3f} database (PostgreSQL)",
                f"{median(hit_p50) * 1e3:.3f} cache hit",
                f"{median(db_p50) / median(hit_p50):.1f}x faster",
                ">= 5x",
            )
        )

    # 4. stampede ----------------------------------------------------------------
    loads = 0
    cold = order_ids[-1]

    async def counting_loader(i: int) -> Any:
        nonlocal loads
        loads += 1
        return await load["order"](i)

    await cache.invalidate(ORDER.view, cold)
    await asyncio.gather(*(cache.get_or_load(ORDER, cold, counting_loader) for _ in range(200)))
    rows.append(("stampede: 200 concurrent misses", "-", f"{loads} database load(s)", "", "== 1"))

    print()
    print(table(rows, ("benchmark", "baseline (same run)", "ordercache", "ratio", "target")))


async def repo_many(sessions: Any, ids: list[int]) -> list[Any]:
    async with sessions() as s:
        found = await repo.load_order_details_many(s, ids)
    return [found[i] for i in ids if i in found]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    asyncio.run(main(a.orders, a.rounds))
