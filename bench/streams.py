"""Tracking mirror throughput vs raw pipelined XADD, side by side in one run.

    python -m bench.streams [--records 20000] [--batch 500] [--rounds 5] [--redis-url URL]

Baseline: every record encoded exactly as the mirror encodes it and appended with
one pipelined ``XADD`` to its shard stream (no dedupe, no per-order stream, no
trimming), one pipeline per batch. Ours: ``StreamMirror.mirror(batch)`` (dedupe
state checked and advanced atomically, per-order stream + global shard stream,
MAXLEN/MINID trimming), one pipeline per batch. Also shown: a full redelivery of
the same records (every record a duplicate). Without ``--redis-url`` a private
redis-server is started, so the shared one is left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from ordercache.cache.keys import KeySpace
from ordercache.local.services import start_redis_server
from ordercache.streams.config import MirrorConfig
from ordercache.streams.entry import TrackingRecord, encode_fields
from ordercache.streams.layout import StreamLayout
from ordercache.streams.mirror import StreamMirror

STATUSES = ["label_created", "picked_up", "in_transit", "out_for_delivery", "delivered"]


def make_records(n: int, *, orders: int, partitions: int, seed: int = 1) -> list[TrackingRecord]:
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    offsets = [0] * partitions
    out = []
    for i in range(n):
        order_id = rng.randint(1, orders)
        p = order_id % partitions
        out.append(
            TrackingRecord(
                event_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                order_id=order_id,
                status=rng.choice(STATUSES),
                location=rng.choice(["Berlin DE", "Hamburg DE", "Leipzig Hub", None]),
                carrier=rng.choice(["DHL", "UPS", "DPD"]),
                occurred_at=t0 + timedelta(milliseconds=i),
                shipment_id=order_id * 10 + 1,
                topic="tracking.updates",
                partition=p,
                offset=offsets[p],
            )
        )
        offsets[p] += 1
    return out


def batches(records: Sequence[TrackingRecord], size: int) -> list[Sequence[TrackingRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


async def run_raw(
    client: aioredis.Redis, layout: StreamLayout, parts: list[Sequence[TrackingRecord]]
) -> float:
    start = time.perf_counter()
    for part in parts:
        pipe = client.pipeline(transaction=False)
        for rec in part:
            pipe.execute_command(
                "XADD", layout.shard_stream(rec.order_id % layout.shards), "*", *encode_fields(rec)
            )
        await pipe.execute()
    return time.perf_counter() - start


async def run_mirror(mirror: StreamMirror, parts: list[Sequence[TrackingRecord]]) -> float:
    start = time.perf_counter()
    for part in parts:
        await mirror.mirror(part)
    return time.perf_counter() - start


async def cleanup(client: aioredis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


async def bench(url: str, n: int, batch: int, rounds: int, orders: int) -> None:
    client = aioredis.Redis.from_url(url)
    cfg = MirrorConfig()
    records = make_records(n, orders=orders, partitions=8)
    parts = batches(records, batch)
    raw_rates: list[float] = []
    ours_rates: list[float] = []
    replay_rates: list[float] = []
    ratios: list[float] = []
    try:
        # Warm-up: connections, script cache, allocator.
        warm = KeySpace(f"bw{uuid.uuid4().hex[:6]}")
        await run_mirror(StreamMirror(client, warm, cfg), parts[:4])
        await run_raw(client, StreamLayout(warm, cfg.shards), parts[:4])
        await cleanup(client, warm.prefix)
        print(f"records={n} batch={batch} orders={orders} shards={cfg.shards} rounds={rounds}")
        head = ("round", "raw XADD rec/s", "mirror rec/s", "ratio", "replay rec/s")
        print(f"{head[0]:>5} {head[1]:>15} {head[2]:>13} {head[3]:>6} {head[4]:>13}")
        for r in range(rounds):
            raw_keys = KeySpace(f"br{uuid.uuid4().hex[:6]}")
            our_keys = KeySpace(f"bm{uuid.uuid4().hex[:6]}")
            mirror = StreamMirror(client, our_keys, cfg)
            # Alternate who goes first: a noisy machine should not favour one side.
            if r % 2 == 0:
                t_raw = await run_raw(client, StreamLayout(raw_keys, cfg.shards), parts)
                t_ours = await run_mirror(mirror, parts)
            else:
                t_ours = await run_mirror(mirror, parts)
                t_raw = await run_raw(client, StreamLayout(raw_keys, cfg.shards), parts)
            t_replay = await run_mirror(mirror, parts)
            raw_rates.append(n / t_raw)
            ours_rates.append(n / t_ours)
            replay_rates.append(n / t_replay)
            ratios.append(t_raw / t_ours)
            print(
                f"{r + 1:>5} {raw_rates[-1]:>15,.0f} {ours_rates[-1]:>13,.0f} "
                f"{ratios[-1]:>6.2f} {replay_rates[-1]:>13,.0f}"
            )
            await cleanup(client, raw_keys.prefix)
            await cleanup(client, our_keys.prefix)
        med_raw, med_ours = statistics.median(raw_rates), statistics.median(ours_rates)
        print(
            f"{'median':>5} {med_raw:>15,.0f} {med_ours:>13,.0f} "
            f"{statistics.median(ratios):>6.2f} {statistics.median(replay_rates):>13,.0f}"
        )
        verdict = "meets" if statistics.median(ratios) >= 0.5 else "MISSES"
        print(
            f"mirror / raw (median of per-round ratios): {statistics.median(ratios):.2f} "
            f"-> {verdict} the >= 0.5x target"
        )
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=5_000)
    parser.add_argument(
        "--redis-url", default=None, help="Use this server (default: a private one)."
    )
    args = parser.parse_args(argv)
    if args.redis_url:
        asyncio.run(bench(args.redis_url, args.records, args.batch, args.rounds, args.orders))
        return
    server = start_redis_server()
    try:
        print(f"private redis-server on {server.url}")
        asyncio.run(
            bench(f"redis://{server.url}/0", args.records, args.batch, args.rounds, args.orders)
        )
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
