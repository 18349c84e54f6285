"""``GET /orders/{id}`` hits, requests/s: the real worker vs a bare aiohttp handler.

    python -m bench.http [--orders 500] [--rounds 6] [--seconds 4] [--concurrency 32] [--json]

Ours: ``ordercache worker`` (a subprocess, the production entry point) answering
``GET /orders/{id}`` from the cache (every id filled before timing; X-Cache: hit).
Baseline: a bare aiohttp app in another process whose handler does one redis-py
``GET`` of the same entry and returns the stored JSON bytes: the fastest correct
answer a Python server can give from Redis. Both are driven by the same load
generator, a third process (aiohttp client, ``--concurrency`` connections, a fixed
hot set of 100 ids), for ``--seconds`` per round; rounds alternate which server goes
first; the figure is the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from sqlalchemy import select

from bench.common import (
    REDIS_URL,
    Report,
    add_json_flag,
    log,
    paired,
    profile_pid,
    scratch_database,
    summarize_profile,
)
from ordercache.cache.keys import KeySpace
from ordercache.cache.views import View
from ordercache.db.engine import create_engine, session_factory
from ordercache.local.services import free_port, start_tansu
from ordercache.models.orm import Order
from ordercache.sample.seed import SeedSpec, run_seed
from tests.workers import ROOT, WorkerProcess


# ------------------------------------------------------------------ baseline server
def _bare_server(port: int, prefix: str) -> None:
    keys = KeySpace(prefix)
    client = aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=64)
    )

    async def order(request: web.Request) -> web.Response:
        raw = await client.get(keys.entry(View.ORDER, int(request.match_info["oid"])))
        if raw is None:
            return web.Response(status=404)
        return web.Response(body=raw[raw.index(b"|") + 1 :], content_type="application/json")

    app = web.Application()
    app.router.add_get("/orders/{oid}", order)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ------------------------------------------------------------------ load generator
def _load(base: str, ids: list[int], seconds: float, concurrency: int) -> float:
    return asyncio.run(_drive(base, ids, seconds, concurrency))


async def _drive(base: str, ids: list[int], seconds: float, concurrency: int) -> float:
    urls = itertools.cycle([f"{base}/orders/{i}" for i in ids])
    connector = aiohttp.TCPConnector(limit=concurrency)
    done = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.get(next(urls)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status} from {base}")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


async def _wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.2)


async def main(
    orders: int, rounds: int, seconds: float, concurrency: int, as_json: bool, profile: str
) -> None:
    report = Report("http")
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    broker = start_tansu()
    ctx = mp.get_context("spawn")
    bare_port = free_port()
    # a process of its own, started like the worker (not a multiprocessing child)
    bare_cmd = [sys.executable, "-m", "bench.http", "--serve-bare", f"{bare_port}:{prefix}"]
    bare: subprocess.Popen[bytes] | None = None
    worker: WorkerProcess | None = None
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async with scratch_database() as url:
            engine = create_engine(url)
            await run_seed(engine, SeedSpec(customers=50, products=100, orders=orders))
            async with session_factory(engine)() as s:
                ids = list((await s.execute(select(Order.id).limit(100))).scalars())
            await engine.dispose()
            tmp = Path(tempfile.mkdtemp(prefix="oc-bench-http-"))
            worker = WorkerProcess.configured(
                tmp,
                "worker",
                redis_url=REDIS_URL,
                redis_key_prefix=prefix,
                kafka_broker=broker.url,
                database_url=url,
                app_id=f"bench-{prefix}",
                topic_orders=f"{prefix}.orders",
                topic_inventory=f"{prefix}.inventory",
                topic_tracking=f"{prefix}.tracking",
                topic_dlq=f"{prefix}.dlq",
                log_level="warning",
                warm="false",
            ).start()
            bare = subprocess.Popen(bare_cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})  # noqa: ASYNC220
            ours_base = f"http://127.0.0.1:{worker.web_port}"
            bare_base = f"http://127.0.0.1:{bare_port}"
            await _wait_http(f"{ours_base}/health/live")
            async with aiohttp.ClientSession() as s:
                for i in ids:  # fill every entry (misses), then both serve hits only
                    async with s.get(f"{ours_base}/orders/{i}") as resp:
                        assert resp.status == 200, resp.status
                    async with s.get(f"{ours_base}/orders/{i}") as resp:
                        assert resp.headers.get("X-Cache") == "hit"
            await _wait_http(f"{bare_base}/orders/{ids[0]}")
            with ProcessPoolExecutor(1, mp_context=ctx) as gen:
                loop = asyncio.get_running_loop()

                async def drive(base: str) -> float:
                    return await loop.run_in_executor(gen, _load, base, ids, seconds, concurrency)

                await drive(bare_base)  # warm both servers and the generator
                await drive(ours_base)
                result = await paired(rounds, lambda: drive(bare_base), lambda: drive(ours_base))
                if profile:
                    assert worker.proc is not None
                    spy = profile_pid(worker.proc.pid, seconds, profile)
                    await asyncio.sleep(0.5)
                    await drive(ours_base)
                    await asyncio.to_thread(spy.wait, 60)
                    for fn, own, incl in summarize_profile(profile):
                        log(f"{incl:6.1%} {own:6.1%}  {fn}")
            report.paired(
                "GET /orders/{id} hit (requests/s)",
                "requests/s",
                result,
                target=0.8,
                detail="bare aiohttp handler returning the Redis bytes",
            )
    finally:
        if worker is not None:
            worker.terminate()
        if bare is not None:
            bare.terminate()
            bare.wait(10)
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.unlink(key)
        await client.aclose()
        broker.cleanup()
    log(f"{rounds} rounds of {seconds}s at concurrency {concurrency}")
    report.emit(as_json)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--orders", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--profile", default="", help="after the rounds, py-spy the worker into this file"
    )
    ap.add_argument("--serve-bare", default="", help=argparse.SUPPRESS)
    add_json_flag(ap)
    a = ap.parse_args()
    if a.serve_bare:
        port, _, key_prefix = a.serve_bare.partition(":")
        _bare_server(int(port), key_prefix)
        sys.exit(0)
    asyncio.run(main(a.orders, a.rounds, a.seconds, a.concurrency, a.json, a.profile))
