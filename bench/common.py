"""Helpers shared by the benchmarks: a bench database, timing, paired rounds, the report.

Every benchmark measures ours and its baseline the same way:

* :func:`paired` runs ``rounds`` rounds, alternating which side goes first, and
  keeps the per-round ratio; the figure reported is the **median of per-round
  ratios** (a noisy round hurts both sides of that round, not the ratio's median).
* Both sides are timed by the same function (:func:`throughput`, :func:`latencies`)
  around the same kind of call: symmetric timers.
* :class:`Report` collects the measures and prints either a Markdown table or, with
  ``--json``, exactly one JSON object on stdout: for every measure ``ours``,
  ``baseline``, ``ratio``, ``target``, ``met`` (plus its unit and per-round figures).
  Progress lines go to stderr so that stdout stays one object.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

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


def log(*parts: object) -> None:
    """Progress output (stderr: stdout carries only the report)."""
    print(*parts, file=sys.stderr, flush=True)


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
    """The ``q`` quantile (nearest rank) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass(frozen=True, slots=True)
class Paired:
    """Per-round figures of both sides and the per-round ratios (ours vs baseline)."""

    ours: list[float]
    baseline: list[float]
    ratios: list[float]

    @property
    def ratio(self) -> float:
        return median(self.ratios)


async def paired(
    rounds: int,
    baseline: Callable[[], Awaitable[float]],
    ours: Callable[[], Awaitable[float]],
    *,
    better: Literal["higher", "lower"] = "higher",
) -> Paired:
    """Run ``rounds`` interleaved rounds, alternating who goes first.

    Each callable measures one round and returns its figure. The ratio of a round is
    ``ours / baseline`` when higher is better (rates), ``baseline / ours`` when lower
    is better (durations), so a ratio above 1 always means "ours is better".
    """
    out = Paired([], [], [])
    for r in range(rounds):
        if r % 2 == 0:
            b = await baseline()
            o = await ours()
        else:
            o = await ours()
            b = await baseline()
        out.baseline.append(b)
        out.ours.append(o)
        num, den = (o, b) if better == "higher" else (b, o)
        out.ratios.append(num / den if den else math.inf)
    return out


@dataclass(slots=True)
class Measure:
    name: str
    unit: str
    ours: float
    baseline: float | None
    ratio: float | None
    target: str
    met: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Report:
    """The measures of one benchmark run; prints one table or one JSON object."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.measures: list[Measure] = []
        self.started = time.time()

    def paired(
        self, name: str, unit: str, result: Paired, *, target: float, detail: str = ""
    ) -> Measure:
        """A measure from interleaved rounds: medians per side, median of ratios."""
        m = Measure(
            name,
            unit,
            median(result.ours),
            median(result.baseline),
            result.ratio,
            f">= {target}x" + (f" ({detail})" if detail else ""),
            result.ratio >= target,
            {
                "ours_rounds": result.ours,
                "baseline_rounds": result.baseline,
                "ratios": result.ratios,
            },
        )
        self.measures.append(m)
        log(f"{name}: ratio {m.ratio:.3f} (target {m.target}) -> {'met' if m.met else 'MISSED'}")
        return m

    def absolute(
        self,
        name: str,
        unit: str,
        ours: float,
        *,
        target: str,
        met: bool,
        baseline: float | None = None,
        ratio: float | None = None,
        **detail: Any,
    ) -> Measure:
        """A measure with an absolute target (a latency bound, a count, a reduction)."""
        m = Measure(name, unit, ours, baseline, ratio, target, met, dict(detail))
        self.measures.append(m)
        log(f"{name}: {ours:.4g} {unit} (target {target}) -> {'met' if met else 'MISSED'}")
        return m

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "started": self.started,
            "seconds": round(time.time() - self.started, 1),
            "loadavg": os.getloadavg(),
            "cpus": os.cpu_count(),
            "measures": {
                m.name: {
                    "unit": m.unit,
                    "ours": m.ours,
                    "baseline": m.baseline,
                    "ratio": m.ratio,
                    "target": m.target,
                    "met": m.met,
                    **m.detail,
                }
                for m in self.measures
            },
        }

    def emit(self, as_json: bool) -> None:
        if as_json:
            sys.stdout.write(orjson.dumps(self.as_dict()).decode() + "\n")
            return
        rows = [
            (
                m.name,
                _fmt(m.baseline),
                _fmt(m.ours),
                "" if m.ratio is None else f"{m.ratio:.3f}x",
                m.target,
                "yes" if m.met else "NO",
            )
            for m in self.measures
        ]
        print(table(rows, ("measure", "baseline", "ours", "ratio", "target", "met")))
        print(f"load average at the end: {os.getloadavg()}")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.4g}"


def add_json_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", action="store_true", help="print one JSON object (the report)")


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


def profile_pid(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (collapsed stacks to ``out``).

    py-spy is not a dependency: ``.venv/bin/pip install py-spy`` to profile.
    """
    return subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            out,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize_profile(path: str, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, own share, inclusive share) of the ``top`` functions by inclusive time
    in a py-spy collapsed-stack file."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            for frame in set(frames):
                incl[frame] = incl.get(frame, 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    ranked = sorted(incl.items(), key=lambda kv: -kv[1])[:top]
    return [(fn, own.get(fn, 0) / total, n / total) for fn, n in ranked] if total else []
