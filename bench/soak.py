"""Soak of the local default: a 500k-event backlog through its broker and the real pipeline.

    python -m bench.soak [--backlog 500000] [--rate 500] [--seconds 240] [--window 50000] [--json]

The broker is started exactly as the local default starts it (``start_tansu``), the
change pipeline as the worker builds it (``build_pipeline``, marked as running on the
bundled broker) with the local default's topic truncation (``local_truncation``),
which pauses the producer process while it empties consumed topics.
The producer runs in a separate process with ordercache's own ``ChangeEventProducer``
(the local default's sample traffic uses it too): first a backlog as fast as it goes,
then a steady rate. Redis is the machine's (keys under a random prefix, removed
afterwards).

Measured from outside the pipeline, once a second: lag = end offsets minus the
pipeline group's committed offsets (aiokafka, summed over the change partitions), the
RSS of the broker and of this process (the worker: the producer is elsewhere), and
every two seconds the fetch latency of one record at the tail of the largest change
partition (what a consumer pays to read the newest record; capped at 10 s).

Reported per window of ``--window`` applied events: apply rate, fetch latency (median),
lag (max), broker and worker RSS at the window's end. Targets:

* capacity holds: the apply rate of the last window that still had a backlog >= 0.8x
  the first window's (in the steady phase the pipeline can apply no faster than the
  producer sends, so those windows are compared with the offered rate instead);
* steady phase: every steady window applies >= 0.8x the offered rate;
* lag back to 0 within 60 s after the producer stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import REDIS_URL, median, table
from ordercache.agents.batch import BatchPlan
from ordercache.agents.pipeline import ensure_topics
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline
from ordercache.config.settings import load_settings

PARTITIONS = 4
KEYSPACE = 20_000


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------ producer process
async def producer_main(
    bootstrap: str, orders: str, inventory: str, backlog: int, rate: float, seconds: float
) -> None:
    """Backlog as fast as it goes, then ``rate``/s for ``seconds``; obeys pause/resume on stdin."""
    from datetime import UTC, datetime

    from ordercache.models.events import Entity, Op, RowChange
    from ordercache.sample.producer import ChangeEventProducer, Topics

    loop = asyncio.get_running_loop()
    running = asyncio.Event()
    running.set()
    pausing = asyncio.Event()

    def on_line(line: str) -> None:
        if line == "pause":
            running.clear()
            pausing.set()
        elif line == "resume":
            running.set()

    def reader() -> None:
        for raw in sys.stdin:
            loop.call_soon_threadsafe(on_line, raw.strip())

    import threading

    threading.Thread(target=reader, daemon=True).start()
    producer = ChangeEventProducer(bootstrap, Topics(orders=orders, inventory=inventory))
    now = datetime.now(UTC)
    sent = 0

    def change(i: int) -> RowChange:
        ident = 1 + i % KEYSPACE
        version = 2 + i // KEYSPACE
        if i % 3 == 2:
            stock = {"product_id": ident, "available": 7, "reserved": 1, "version": version,
                     "updated_at": now}  # fmt: skip
            return RowChange(Entity.INVENTORY, Op.UPDATE, after=stock)
        order = {"id": ident, "customer_id": 1 + ident % 500, "status": "paid",
                 "total_cents": 990, "currency": "EUR", "created_at": now, "updated_at": now,
                 "version": version}  # fmt: skip
        return RowChange(Entity.ORDER, Op.UPDATE, after=order)

    async def gate() -> None:
        if not running.is_set():
            await producer.flush()
            print("paused", sent, flush=True)
            await running.wait()
            print("resumed", flush=True)

    async with producer:
        pending: list[Any] = []
        for i in range(backlog):
            if pausing.is_set():
                pausing.clear()
                await gate()
            pending += await producer.emit_transaction([change(i)], wait=False)
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        print("steady", sent, flush=True)
        t0 = time.perf_counter()
        total = int(rate * seconds)
        for j in range(total):
            delay = t0 + j / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if pausing.is_set():
                pausing.clear()
                await gate()
            await producer.emit_transaction([change(backlog + j)], wait=False)
            sent += 1
        await producer.flush()
    print("done", sent, flush=True)


class ProducerProcess:
    """The producer subprocess: its progress lines, and pause/resume for the housekeeping."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--producer", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.phase = "backlog"
        self.steady_at: float | None = None
        self.done_at: float | None = None
        self.sent = 0
        self._paused = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._reader = loop.run_in_executor(None, self._read, loop)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            loop.call_soon_threadsafe(self._on_line, line.strip())

    def _on_line(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "steady":
            self.phase, self.steady_at = "steady", time.monotonic()
        elif word == "done":
            self.phase, self.done_at, self.sent = "done", time.monotonic(), int(rest)
        elif word == "paused":
            self._paused.set()

    async def pause(self) -> bool:
        """Stop sending and flush; False when the producer has already finished."""
        if self.phase == "done" or self.proc.stdin is None:
            return False
        self._paused.clear()
        self.proc.stdin.write("pause\n")
        self.proc.stdin.flush()
        try:
            await asyncio.wait_for(self._paused.wait(), 30)
        except TimeoutError:
            return self.phase == "done"
        return True

    async def resume(self) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            self.proc.stdin.write("resume\n")
            self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# ------------------------------------------------------------------ measuring
@dataclass
class Sample:
    t: float
    lag: int
    broker_mb: float
    worker_mb: float
    fetch_s: float | None = None


@dataclass
class Window:
    index: int
    start: float
    end: float
    events: int
    phase: str
    offered: float | None = None
    partial: bool = False
    samples: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / max(self.end - self.start, 1e-9)


async def lag_of(
    probe: AIOKafkaConsumer, group: AIOKafkaConsumer, tps: list[TopicPartition]
) -> int:
    ends = await probe.end_offsets(tps)
    lag = 0
    for tp in tps:
        committed = await group.committed(tp)
        lag += max(0, ends[tp] - (committed or 0))
    return lag


async def tail_fetch(probe: AIOKafkaConsumer, tps: list[TopicPartition]) -> float | None:
    """Seconds to fetch the newest record of the largest partition (None: all empty)."""
    ends = await probe.end_offsets(tps)
    tp = max(tps, key=lambda t: ends[t])
    if ends[tp] == 0:
        return None
    probe.assign([tp])
    probe.seek(tp, ends[tp] - 1)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 10:
        got = await probe.getmany(tp, timeout_ms=500, max_records=1)
        if got.get(tp):
            break
    return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from ordercache.local.services import start_tansu

    try:
        from ordercache.local.truncate import local_truncation
    except ImportError:  # a checkout from before the truncation (before/after runs)
        local_truncation = None

    broker = start_tansu()
    prefix = f"soak{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(REDIS_URL)
    bootstrap = broker.url
    env = {
        "ORDERCACHE_REDIS_URL": REDIS_URL,
        "ORDERCACHE_REDIS_KEY_PREFIX": prefix,
        "ORDERCACHE_KAFKA_BROKER": bootstrap,
        "ORDERCACHE_DATABASE_URL": "sqlite+aiosqlite:///:memory:",
        "ORDERCACHE_APP_ID": prefix,
        "ORDERCACHE_KAFKA_PARTITIONS": str(PARTITIONS),
    }
    settings = load_settings(env)
    ctx = AppContext.build(settings)
    topics = [settings.topic_orders, settings.topic_inventory, settings.topic_tracking]
    tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
    applied = 0
    applied_at: list[tuple[float, int]] = []

    async def hook(bp: BatchPlan) -> None:
        nonlocal applied
        applied += len(bp.timestamps)
        applied_at.append((time.monotonic(), applied))

    producer: ProducerProcess | None = None
    extras: list[Any] = []
    pipeline = build_pipeline(ctx, [bootstrap], hooks=[hook])
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    group = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"{settings.app_id}-changes", enable_auto_commit=False
    )
    samples: list[Sample] = []
    try:
        await ensure_topics([bootstrap], [*topics, settings.topic_dlq], PARTITIONS)
        await pipeline.start()
        await probe.start()
        await group.start()
        producer = ProducerProcess(
            [bootstrap, settings.topic_orders, settings.topic_inventory, str(args.backlog),
             str(args.rate), str(args.seconds)]
        )  # fmt: skip
        truncation = (
            None
            if local_truncation is None
            else local_truncation(settings, ctx.registry, pipeline, [producer])
        )
        if truncation is not None:
            await truncation.start()
            extras.append(truncation)
        t_start = time.monotonic()
        last_probe = 0.0
        lag_zero_at: float | None = None
        while True:
            now = time.monotonic()
            s = Sample(now, await lag_of(probe, group, tps), rss_mb(broker.proc.pid),
                       rss_mb(os.getpid()))  # fmt: skip
            if now - last_probe >= 2:
                last_probe = now
                s.fetch_s = await tail_fetch(probe, tps)
            samples.append(s)
            if producer.phase == "done":
                if s.lag == 0 and applied >= producer.sent:
                    lag_zero_at = now
                    break
                assert producer.done_at is not None
                if now - producer.done_at > 60:
                    break
            if now - t_start > args.timeout:
                break
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        final_lag = await lag_of(probe, group, tps)
    finally:
        truncations = sum(getattr(svc, "truncations", 0) for svc in extras)
        for svc in extras:
            await svc.stop()
        if producer is not None:
            producer.stop()
        with contextlib.suppress(Exception):
            await probe.stop()
        with contextlib.suppress(Exception):
            await group.stop()
        await pipeline.stop()
        await ctx.aclose()
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.unlink(key)
        await client.aclose()
        broker.cleanup()

    # ---- windows of --window applied events
    windows: list[Window] = []
    boundary, start_t, start_n = args.window, samples[0].t if samples else 0.0, 0
    for t, n in applied_at:
        if n >= boundary:
            windows.append(Window(len(windows) + 1, start_t, t, n - start_n, ""))
            start_t, start_n = t, n
            boundary = (n // args.window + 1) * args.window
    if samples and applied > start_n:  # the rest, shorter than a window
        windows.append(Window(len(windows) + 1, start_t, samples[-1].t, applied - start_n, ""))
        windows[-1].partial = True
    caught_up_at = next(
        (s.t for s in samples
         if producer.steady_at is not None and s.t >= producer.steady_at and s.lag <= 1000),
        None,
    )  # fmt: skip
    for w in windows:
        w.samples = [s for s in samples if w.start < s.t <= w.end]
        # capacity-bound while the pipeline never caught up within the window
        if w.samples and min(s.lag for s in w.samples) > 1000:
            w.phase = "backlog"
        elif caught_up_at is not None and w.start >= caught_up_at:
            w.phase, w.offered = "steady", args.rate
        else:
            w.phase = "catch-up"
    full = [w for w in windows if not w.partial]
    backlog_w = [w for w in full if w.phase == "backlog"]
    steady_w = [w for w in full if w.phase == "steady"]
    rows = []
    for w in windows:
        fetches = [s.fetch_s for s in w.samples if s.fetch_s is not None]
        rows.append(
            (
                str(w.index) + (" (rest)" if w.partial else ""),
                w.phase,
                f"{w.rate:,.0f}" + (f" (offered {w.offered:,.0f})" if w.offered else ""),
                f"{median(fetches) * 1e3:,.1f}" if fetches else "-",
                f"{max((s.lag for s in w.samples), default=0):,}",
                f"{w.samples[-1].broker_mb:,.0f}" if w.samples else "-",
                f"{w.samples[-1].worker_mb:,.0f}" if w.samples else "-",
            )
        )
    first = backlog_w[0].rate if backlog_w else 0.0
    last = backlog_w[-1].rate if backlog_w else 0.0
    worst_steady = min((w.rate / args.rate for w in steady_w), default=0.0)
    drain_s = (
        None if lag_zero_at is None or producer.done_at is None else lag_zero_at - producer.done_at
    )
    measures = {
        "backlog apply rate, last window vs first (events/s)": {
            "ours": round(last), "baseline": round(first),
            "ratio": round(last / first, 3) if first else None, "target": ">= 0.8",
            "met": bool(first) and last >= 0.8 * first,
        },
        "steady apply rate, worst window vs offered (events/s)": {
            "ours": round(worst_steady * args.rate), "baseline": args.rate,
            "ratio": round(worst_steady, 3), "target": ">= 0.8", "met": worst_steady >= 0.8 and bool(steady_w),
        },
        "lag after the producer stopped (records)": {
            "ours": final_lag, "baseline": 0, "ratio": None,
            "target": "0 within 60 s", "met": final_lag == 0 and lag_zero_at is not None,
        },
    }  # fmt: skip
    return {
        "benchmark": "soak",
        "events": producer.sent,
        "applied": applied,
        "drain_seconds": None if drain_s is None else round(drain_s, 1),
        "truncations": truncations,
        "measures": measures,
        "windows": [dict(zip(HEADER, r, strict=True)) for r in rows],
        "table": table(rows, HEADER),
    }


HEADER = ("window", "phase", "apply rate (events/s)", "fetch latency p50 (ms)", "lag max",
          "broker RSS (MB)", "worker RSS (MB)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backlog", type=int, default=500_000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--window", type=int, default=50_000)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--producer", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.producer:
        b, o, i, n, r, s = a.producer
        asyncio.run(producer_main(b, o, i, int(n), float(r), float(s)))
        return
    out = asyncio.run(run(a))
    if a.json:
        print(json.dumps({k: v for k, v in out.items() if k != "table"}))
        return
    print(out["table"])
    print()
    for name, m in out["measures"].items():
        print(f"{name}: ours {m['ours']}, baseline {m['baseline']}, ratio {m['ratio']}, "
              f"target {m['target']}, {'met' if m['met'] else 'NOT met'}")  # fmt: skip
    print(
        f"events {out['events']:,}, applied {out['applied']:,}; lag back to 0 {out['drain_seconds']} s after the producer stopped"
    )


if __name__ == "__main__":
    main()
