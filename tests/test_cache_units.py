"""Pure logic of the cache and the pipeline: no Redis, no broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from ordercache.agents.batch import plan_batch
from ordercache.cache.breaker import BreakerState, CircuitBreaker
from ordercache.cache.codec import CorruptEntryError, encode_negative, entry_version
from ordercache.cache.keys import KeySpace, TtlPolicy, validate_id
from ordercache.cache.ops import Invalidate
from ordercache.cache.singleflight import SingleFlight
from ordercache.cache.views import INVENTORY, ORDER, SPECS, View
from ordercache.errors import DecodeError, InvalidIdError
from ordercache.models.views import ProductInventory
from ordercache.retry import Backoff

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------ ids and keys
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1, 1),
        ("1", 1),
        ("42", 42),
        (b"42", 42),
        (2**63 - 1, 2**63 - 1),
        ("9223372036854775807", 2**63 - 1),
    ],
)
def test_valid_ids(raw: object, expected: int) -> None:
    assert validate_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", " 1", "1 ", "+1", "-1", "0", "007", "1.0", "1e3", "abc", "1\n", "\uff11", "9223372036854775808",
     "1" * 20, "{1}", "1:2", "*", 0, -1, 2**63, True, False, None, 1.0, [1], b"\xff"],
)  # fmt: skip
def test_invalid_ids(raw: object) -> None:
    with pytest.raises(InvalidIdError):
        validate_id(raw)


def test_keys_share_a_cluster_hash_tag() -> None:
    ks = KeySpace("oc")
    entry, guard, lease = ks.triple(View.ORDER, 123)
    assert entry == f"oc:v{SPECS[View.ORDER].schema_version}:order:{{123}}"
    assert (guard, lease) == (ks.guard(View.ORDER, 123), ks.lease(View.ORDER, 123))
    # the hash tag (text between the first { and }) is the same for all three
    tags = {k[k.index("{") + 1 : k.index("}")] for k in (entry, guard, lease)}
    assert tags == {"123"}


@pytest.mark.parametrize("view", list(View))
def test_schema_version_is_in_every_key(view: View) -> None:
    assert f":v{SPECS[view].schema_version}:" in KeySpace("p").entry(view, 5)


def test_ttl_policy_defaults_and_jitter() -> None:
    t = TtlPolicy()
    assert (t.order, t.history, t.inventory) == (900, 3600, 300)
    no_jitter = TtlPolicy(jitter=0.0)
    assert no_jitter.ttl_ms(View.ORDER) == 900_000
    assert no_jitter.ttl_ms(View.ORDER, negative=True) == 30_000
    samples = {TtlPolicy(jitter=0.1).ttl_ms(View.INVENTORY) for _ in range(200)}
    assert len(samples) > 50
    assert min(samples) >= 270_000 and max(samples) <= 300_000


# ------------------------------------------------------------------ codec
def inv(version: int) -> ProductInventory:
    return ProductInventory(
        product_id=7, sku="S", available=1, reserved=2, version=version, updated_at=NOW
    )


def test_codec_round_trip_and_version_prefix() -> None:
    raw = INVENTORY.encode(inv(12))
    assert raw.startswith(b"v12|")
    assert entry_version(raw) == 12
    assert INVENTORY.decode(raw) == inv(12)


def test_codec_negative_entry() -> None:
    assert INVENTORY.decode(encode_negative()) is None
    assert entry_version(encode_negative(3)) == 3


@pytest.mark.parametrize("raw", [b"", b"no-prefix", b"v1|{", b'v1|{"product_id": 1}', b"v1|[]"])
def test_codec_rejects_corrupt_entries(raw: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        INVENTORY.decode(raw)


def test_codec_never_unpickles() -> None:
    import pickle

    with pytest.raises(CorruptEntryError):
        ORDER.decode(b"v1|" + pickle.dumps({"order_id": 1}))


# ------------------------------------------------------------------ breaker
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, reset_seconds=2.0, clock=clock)
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allow() and b.degraded
    clock.now = 2.5
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # one probe ...
    assert not b.allow()  # ... at a time
    b.failure()  # failed probe: open again, for another reset period
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.now = 5.0
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED and not b.degraded and b.allow()


def test_breaker_probe_that_never_reports_expires() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, reset_seconds=1.0, clock=clock)
    b.failure()
    clock.now = 1.5
    assert b.allow()  # the probe's caller is then cancelled: no success, no failure
    assert not b.allow()
    clock.now = 2.6
    assert b.allow()  # a new probe after one reset period


# ------------------------------------------------------------------ single-flight
async def test_singleflight_shares_result_and_exception() -> None:
    sf: SingleFlight[int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 5

    tasks = [asyncio.create_task(sf.do("k", work)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(shared for _, shared in results) == [False] + [True] * 9
    assert not sf.in_flight("k")

    async def boom() -> int:
        await asyncio.sleep(0.01)
        raise RuntimeError("db down")

    outcomes = await asyncio.gather(*(sf.do("e", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_singleflight_cancelled_leader_does_not_cancel_waiters() -> None:
    sf: SingleFlight[int] = SingleFlight()
    started = asyncio.Event()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0.05)
        return 7

    leader = asyncio.create_task(sf.do("k", slow))
    await started.wait()
    waiters = [asyncio.create_task(sf.do("k", slow)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    results = await asyncio.gather(*waiters)
    assert [r for r, _ in results] == [7, 7, 7]
    assert calls == 2  # one waiter took over the load; the others shared it


# ------------------------------------------------------------------ batch planning
def rec(offset: int, value: Any, topic: str = "t", partition: int = 0) -> Any:
    return SimpleNamespace(
        topic=topic, partition=partition, offset=offset, timestamp=1000 + offset,
        key=b"k", value=value, headers=(),
    )  # fmt: skip


def fake_decode(topic: str, key: Any, value: Any, headers: Any) -> Any:
    if value is None:
        return "tombstone"
    if value == "bad":
        raise DecodeError("invalid_json", "nope")
    if value == "badid":
        raise InvalidIdError("id must be digits")
    return value


def fake_plan(event: Any) -> list[Any]:
    return [Invalidate(View.ORDER, int(event), None)]


def test_plan_batch_keeps_order_rejects_bad_and_dedupes() -> None:
    records = [rec(0, "1"), rec(1, "bad"), rec(2, None), rec(3, "2"), rec(4, "1"), rec(5, "badid")]
    bp = plan_batch(records, fake_decode, fake_plan, lambda e: e == "tombstone")
    assert bp.ops == [Invalidate(View.ORDER, 1, None), Invalidate(View.ORDER, 2, None)]
    assert [(r.record.offset, r.reason) for r in bp.rejected] == [
        (1, "invalid_json"),
        (5, "invalid_id"),
    ]
    assert bp.outcomes[("t", "applied")] == 3
    assert bp.outcomes[("t", "dlq")] == 2
    assert bp.outcomes[("t", "tombstone")] == 1
    assert bp.last_offsets == {("t", 0): 5}
    assert bp.timestamps == [1000, 1003, 1004]


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.05), (1, 0.1), (2, 0.2), (5, 1.6), (6, 2.0)]
)
def test_backoff_is_full_jitter_under_a_doubling_ceiling(attempt: int, ceiling: float) -> None:
    delays = []
    for _ in range(300):
        b = Backoff(base=0.05, cap=2.0)
        b.attempt = attempt
        delays.append(b.next_delay())
    assert all(0 <= d <= ceiling for d in delays)
    # full jitter spreads over the whole range (each bound fails with p = 2**-300)
    assert min(delays) < ceiling / 2 < max(delays)
