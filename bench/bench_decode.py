"""Micro-benchmark of decode(): µs per event, beside a bare ``orjson.loads`` baseline.

    python -m bench.bench_decode [--n 20000] [--rounds 7]

Rounds interleave the cases and the baseline; medians are reported (the machines
here are small and shared, so single runs are noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    baseline: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, (value, headers) in CASES.items():
            baseline[name].append(per_call_us(lambda v=value: orjson.loads(v), args.n))  # type: ignore[misc]
            results[name].append(
                per_call_us(
                    lambda v=value, h=headers: decode("orders.changes", b"123456", v, h),  # type: ignore[misc]
                    args.n,
                )
            )
    print(f"{'case':32s} {'bytes':>5s} {'decode µs':>10s} {'loads µs':>9s} {'events/s':>9s}")
    for name, (value, _) in CASES.items():
        med = statistics.median(results[name])
        base = statistics.median(baseline[name])
        print(f"{name:32s} {len(value):5d} {med:10.2f} {base:9.2f} {1e6 / med:9.0f}")


if __name__ == "__main__":
    main()
