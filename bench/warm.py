"""Hot-set misses in the first minute after a cold start, with and without warming.

    python -m bench.warm [--seconds 60] [--rounds 2] [--read-rate 300] [--warm-rate 1000] [--json]

A seeded PostgreSQL database; Redis starts cold (a fresh key prefix). Readers send
``--read-rate`` cache-aside reads per second for ``--seconds`` at the hot set (the
newest / in-flight orders, the most active customers' histories, every product's
inventory: 70 / 15 / 15 %), Zipf-distributed over each list's order (the newest
are the hottest). With warming on, :class:`~ordercache.warming.CacheWarmer` starts
with the traffic. Measured: misses during the window (each a database load on the
read path), and the warmer's database loads in its busiest wall-clock second (the
configured bound is ``--warm-rate``). Rounds alternate which side runs first.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from bench.cache import cleanup, loaders, make_cache, make_client
from bench.common import Report, add_json_flag, log, median, paired, scratch_database
from ordercache.cache.views import HISTORY, INVENTORY, ORDER, ViewSpec
from ordercache.db.engine import create_engine, session_factory
from ordercache.sample.seed import SeedSpec, run_seed
from ordercache.warming import CacheWarmer, WarmConfig, Warming, WarmMetrics, hotset


def zipf_picker(n: int, s: float = 1.1) -> Callable[[random.Random], int]:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w / total
        cum.append(acc)

    def pick(rng: random.Random) -> int:
        x = rng.random()
        lo, hi = 0, n - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    return pick


async def main(
    seconds: float, rounds: int, read_rate: int, warm_rate: int, orders: int, as_json: bool
) -> None:
    report = Report("warm")
    config = WarmConfig(rate=warm_rate, batch=100, orders=2000, customers=300, products=0)
    async with scratch_database() as url:
        engine = create_engine(url, pool_size=10)
        seeded = await run_seed(
            engine, SeedSpec(customers=max(300, orders // 20), products=500, orders=orders)
        )
        log(f"seeded: {seeded.summary()}")
        sessions = session_factory(engine)
        async with sessions() as s:
            plan: list[tuple[ViewSpec[Any], list[int], float]] = [
                (ORDER, await hotset.hot_orders(s, config.orders), 0.70),
                (HISTORY, await hotset.hot_customers(s, config.customers), 0.15),
                (INVENTORY, await hotset.hot_products(s, config.products), 0.15),
            ]
        log("hot set: " + ", ".join(f"{spec.view.value} {len(ids)}" for spec, ids, _ in plan))
        client = make_client(64)
        load = loaders(sessions)
        busiest: list[int] = []
        prefixes: list[str] = []

        async def run(warm: bool) -> float:
            prefix = f"benchw{uuid.uuid4().hex[:8]}"
            prefixes.append(prefix)
            cache = make_cache(client, prefix)
            warming = None
            per_second: dict[int, int] = {}
            if warm:
                warmer = CacheWarmer(
                    cache, sessions, config, WarmMetrics.create(CollectorRegistry())
                )
                # the limiter's grants: every database load waits for one first
                per_second = warmer.limit.granted
                warming = Warming(warmer)
                warming.start()
            misses = await traffic(cache, plan, load, seconds, read_rate)
            if warming is not None:
                await warming.stop()
                busiest.append(max(per_second.values(), default=0))
            await cleanup(client, prefix)
            log(f"warming {'on ' if warm else 'off'}: {misses} misses")
            return float(misses)

        try:
            result = await paired(rounds, lambda: run(False), lambda: run(True), better="lower")
        finally:
            for prefix in prefixes:
                await cleanup(client, prefix)
            await client.aclose()
            await engine.dispose()
    reductions = [
        1 - o / b if b else 0.0 for o, b in zip(result.ours, result.baseline, strict=True)
    ]
    fewer = median(reductions)
    report.absolute(
        f"hot-set misses in the first {seconds:.0f} s after a cold start, warming on vs off",
        "fraction fewer",
        fewer,
        baseline=median(result.baseline),
        ratio=result.ratio,
        target=">= 0.9 fewer (90%)",
        met=fewer >= 0.9,
        misses_on=result.ours,
        misses_off=result.baseline,
        reductions=reductions,
    )
    report.absolute(
        "warming's database loads in its busiest second",
        "loads/s",
        max(busiest, default=0),
        target=f"<= {warm_rate} (ORDERCACHE_WARM_RATE)",
        met=max(busiest, default=0) <= warm_rate,
        per_round=busiest,
    )
    report.emit(as_json)


async def traffic(
    cache: Any,
    plan: list[tuple[ViewSpec[Any], list[int], float]],
    load: dict[str, Callable[[int], Awaitable[Any]]],
    seconds: float,
    rate: int,
) -> int:
    """Reads at ``rate``/s for ``seconds`` (paced, concurrent); returns the misses."""
    rng = random.Random(7)
    pickers = [(spec, ids, share, zipf_picker(len(ids))) for spec, ids, share in plan if ids]
    shares = [share for _, _, share, _ in pickers]
    misses = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(spec: ViewSpec[Any], eid: int) -> None:
        nonlocal misses
        result = await cache.get_or_load(spec, eid, load[spec.view.value])
        if result.status == "miss":
            misses += 1

    t0 = time.perf_counter()
    total = int(seconds * rate)
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        spec, ids, _, pick = rng.choices(pickers, shares)[0]
        task = asyncio.create_task(one(spec, ids[pick(rng)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if len(pending) > 200:  # the database is the bottleneck: don't pile up
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.gather(*pending)
    return misses


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--read-rate", type=int, default=300)
    ap.add_argument("--warm-rate", type=int, default=1000)
    ap.add_argument("--orders", type=int, default=20_000)
    add_json_flag(ap)
    a = ap.parse_args()
    asyncio.run(main(a.seconds, a.rounds, a.read_rate, a.warm_rate, a.orders, a.json))
