"""Misses at TTL expiry of hot keys under steady load, XFetch on vs off.

    python -m bench.xfetch [--seconds 20] [--rounds 4] [--keys 10] [--ttl 2] [--rate 1000]
                           [--load-ms 20] [--beta 1.0] [--json]

``--keys`` hot keys (inventory view, TTL ``--ttl`` seconds, no jitter: every key
expires on schedule) read by a steady ``--rate`` reads/s, spread evenly, for
``--seconds``: by default 100 reads/s per key, a read every 10 ms against a load of
20 ms (XFetch's premise: a hot key is read several times per recomputation; fewer
reads per load need a larger beta). The loader stands for a database read of
``--load-ms`` ms. Every key is filled before the window, so every miss counted is a
miss at expiry. Off: ``xfetch_beta=0``; on: ``--beta`` (default 1.0, the setting's
default). Rounds alternate
which goes first; reported: the median over rounds of the fraction of misses saved.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

from bench.cache import cleanup, make_client
from bench.common import Report, add_json_flag, log, median, paired
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.service import CacheConfig, CacheService, build_cache_service
from ordercache.cache.views import INVENTORY
from ordercache.models.views import ProductInventory

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def main(
    seconds: float,
    rounds: int,
    keys: int,
    ttl: int,
    rate: int,
    load_ms: float,
    beta: float,
    as_json: bool,
) -> None:
    from prometheus_client import CollectorRegistry

    report = Report("xfetch")
    client = make_client(64)
    prefixes: list[str] = []

    async def loader(pid: int) -> ProductInventory:
        await asyncio.sleep(load_ms / 1000)
        return ProductInventory(
            product_id=pid, sku=f"S{pid}", available=1, reserved=0, version=1, updated_at=NOW
        )

    async def run(beta: float) -> float:
        prefix = f"benchx{uuid.uuid4().hex[:8]}"
        prefixes.append(prefix)
        cache = build_cache_service(
            client,
            KeySpace(prefix),
            TtlPolicy(inventory=ttl, jitter=0.0),
            CacheMetrics.create(CollectorRegistry()),
            timeout=0.5,
            config=CacheConfig(xfetch_beta=beta),
        )
        for pid in range(1, keys + 1):
            await cache.get_or_load(INVENTORY, pid, loader)
        misses = await steady(cache, keys, rate, seconds, loader)
        refreshed = cache.metrics.early_refreshes.labels("inventory")._value.get()
        await cleanup(client, prefix)
        log(f"beta {beta}: {misses} misses, {refreshed:.0f} early refreshes")
        return float(misses)

    try:
        result = await paired(rounds, lambda: run(0.0), lambda: run(beta), better="lower")
    finally:
        for prefix in prefixes:
            await cleanup(client, prefix)
        await client.aclose()
    fewer = [1 - o / b if b else 0.0 for o, b in zip(result.ours, result.baseline, strict=True)]
    report.absolute(
        f"misses at expiry, {keys} hot keys, TTL {ttl} s, {rate} reads/s, {seconds:.0f} s: "
        f"XFetch (beta {beta}) on vs off",
        "fraction fewer",
        median(fewer),
        baseline=median(result.baseline),
        ratio=result.ratio,
        target=">= 0.9 fewer (90%)",
        met=median(fewer) >= 0.9,
        misses_on=result.ours,
        misses_off=result.baseline,
        reductions=fewer,
    )
    report.emit(as_json)


async def steady(cache: CacheService, keys: int, rate: int, seconds: float, loader: object) -> int:
    misses = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(pid: int) -> None:
        nonlocal misses
        if (await cache.get_or_load(INVENTORY, pid, loader)).status == "miss":  # type: ignore[arg-type]
            misses += 1

    t0 = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(1 + i % keys))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return misses


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--load-ms", type=float, default=20.0)
    ap.add_argument("--beta", type=float, default=1.0)
    add_json_flag(ap)
    a = ap.parse_args()
    asyncio.run(main(a.seconds, a.rounds, a.keys, a.ttl, a.rate, a.load_ms, a.beta, a.json))
