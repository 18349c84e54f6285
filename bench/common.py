"""Helpers shared by the benchmarks: a bench database, timing, and table printing."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from tests.pgtools import scratch_pg_database

PG_ADMIN_URL = os.environ.get(
    "ORDERCACHE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ORDERCACHE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy asyncpg URL), dropped afterwards."""
    async with scratch_pg_database("oc_bench", PG_ADMIN_URL) as url:
        yield url


async def throughput(fn: Callable[[], Awaitable[object]], n: int) -> float:
    """Calls per second of ``n`` sequential awaits of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return n / (time.perf_counter() - t0)


async def latencies(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Per-call latencies in seconds."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A Markdown table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])
