"""Micro-benchmark of decode(): µs per event, beside a bare ``orjson.loads`` baseline.

    python -m bench.bench_decode [--n 20000] [--rounds 7]

Rounds interleave the case and its baseline, alternating which goes first; the
ratio is the median of per-round ratios (``bench/common.py``). ``--json`` prints one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import orjson

from bench.common import Report, add_json_flag, median, paired
from ordercache.agents.decode import decode

TS = "2024-05-01T10:11:12.123456Z"
SOURCE = {
    "version": "2.7.0.Final", "connector": "postgresql", "name": "oc", "ts_ms": 1714558500000,
    "snapshot": "false", "db": "orders", "sequence": '["24023928","24023928"]',
    "schema": "public", "table": "orders", "txId": 555, "lsn": 24023928, "xmin": None,
}  # fmt: skip
ORDER = {
    "id": 123456, "customer_id": 42, "status": "paid", "total_cents": 12999,
    "currency": "EUR", "created_at": TS, "updated_at": TS, "version": 7,
}  # fmt: skip
ITEM = {"id": 9, "order_id": 123456, "product_id": 77, "quantity": 2, "unit_price_cents": 500,
        "version": 1}  # fmt: skip
STOCK = {"product_id": 77, "available": 10, "reserved": 3, "version": 9, "updated_at": TS}


def envelope(table: str, row: dict[str, object], op: str = "u") -> dict[str, object]:
    return {"before": None, "after": row, "source": {**SOURCE, "table": table}, "op": op,
            "ts_ms": 1714558500123, "transaction": None}  # fmt: skip


OUTBOX_HEADERS = [("id", b"4d47e190-0402-4048-bc2c-89dd54343cdc")]
CASES: dict[str, tuple[bytes, list[tuple[str, bytes]]]] = {
    "orders envelope": (orjson.dumps(envelope("orders", ORDER)), []),
    "order_items envelope": (orjson.dumps(envelope("order_items", ITEM, "c")), []),
    "inventory envelope": (orjson.dumps(envelope("inventory", STOCK)), []),
    "orders, schema-wrapped": (
        orjson.dumps({"schema": {"type": "struct"}, "payload": envelope("orders", ORDER)}),
        [],
    ),
    "orders outbox (string payload)": (
        orjson.dumps(orjson.dumps(ORDER).decode()),
        OUTBOX_HEADERS,
    ),
}


def per_call_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def _run(n: int, rounds: int, as_json: bool) -> None:
    report = Report("decode")
    for name, (value, headers) in CASES.items():

        async def base(v: bytes = value) -> float:
            return per_call_us(lambda: orjson.loads(v), n)

        async def ours(v: bytes = value, h: list[tuple[str, bytes]] = headers) -> float:
            return per_call_us(lambda: decode("orders.changes", b"123456", v, h), n)

        result = await paired(rounds, base, ours, better="lower")
        report.absolute(
            f"decode {name}, {len(value)} bytes (µs per event)",
            "µs",
            median(result.ours),
            baseline=median(result.baseline),
            ratio=result.ratio,
            target="informational (bare orjson.loads is the floor)",
            met=True,
            ratios=result.ratios,
        )
    report.emit(as_json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    add_json_flag(parser)
    args = parser.parse_args()
    asyncio.run(_run(args.n, args.rounds, args.json))


if __name__ == "__main__":
    main()
