"""Tracking mirror throughput vs raw pipelined XADD, side by side in one run.

    python -m bench.streams [--records 20000] [--batch 500] [--rounds 5] [--redis-url URL] [--json]

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

from bench.common import Report, add_json_flag, log, paired
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


async def bench(url: str, n: int, batch: int, rounds: int, orders: int, as_json: bool) -> None:
    report = Report("streams")
    client = aioredis.Redis.from_url(url)
    cfg = MirrorConfig()
    records = make_records(n, orders=orders, partitions=8)
    parts = batches(records, batch)
    replay_rates: list[float] = []
    used: list[str] = []
    try:
        # Warm-up: connections, script cache, allocator.
        warm = KeySpace(f"bw{uuid.uuid4().hex[:6]}")
        await run_mirror(StreamMirror(client, warm, cfg), parts[:4])
        await run_raw(client, StreamLayout(warm, cfg.shards), parts[:4])
        await cleanup(client, warm.prefix)
        log(f"records={n} batch={batch} orders={orders} shards={cfg.shards} rounds={rounds}")

        async def raw_round() -> float:
            keys = KeySpace(f"br{uuid.uuid4().hex[:6]}")
            used.append(keys.prefix)
            return n / await run_raw(client, StreamLayout(keys, cfg.shards), parts)

        async def our_round() -> float:
            keys = KeySpace(f"bm{uuid.uuid4().hex[:6]}")
            used.append(keys.prefix)
            mirror = StreamMirror(client, keys, cfg)
            rate = n / await run_mirror(mirror, parts)
            # a full redelivery: every record a duplicate (outside the timed pair)
            replay_rates.append(n / await run_mirror(mirror, parts))
            return rate

        result = await paired(rounds, raw_round, our_round)
        report.paired(
            f"tracking mirror, {n:,} records (records/s)",
            "records/s",
            result,
            target=0.5,
            detail="raw pipelined XADD",
        )
        report.absolute(
            "tracking mirror, full redelivery (records/s)",
            "records/s",
            statistics.median(replay_rates),
            target="informational",
            met=True,
        )
    finally:
        for prefix in used:
            await cleanup(client, prefix)
        await client.aclose()
    report.emit(as_json)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=5_000)
    parser.add_argument(
        "--redis-url", default=None, help="Use this server (default: a private one)."
    )
    add_json_flag(parser)
    args = parser.parse_args(argv)
    run = (args.records, args.batch, args.rounds, args.orders, args.json)
    if args.redis_url:
        asyncio.run(bench(args.redis_url, *run))
        return
    server = start_redis_server()
    try:
        log(f"private redis-server on {server.url}")
        asyncio.run(bench(f"redis://{server.url}/0", *run))
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
