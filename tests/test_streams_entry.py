"""Pure parts of the streams package: entry schema, validation, key layout, config."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from ordercache.cache.keys import KeySpace
from ordercache.errors import DecodeError, InvalidIdError
from ordercache.retry import Backoff
from ordercache.streams._redis import safe_block_ms
from ordercache.streams.config import ConsumerConfig, MirrorConfig
from ordercache.streams.deadletter import dead_letter_fields
from ordercache.streams.entry import (
    ENTRY_SCHEMA_VERSION,
    StreamEntry,
    TrackingRecord,
    decode_entry,
    encode_fields,
    iso_utc,
)
from ordercache.streams.errors import MirrorOrderError
from ordercache.streams.layout import StreamLayout, dead_letter_key
from ordercache.streams.mirror import check_partition_order, record_args
from ordercache.streams.notifier import notification_text
from ordercache.streams.tail import format_entry

T0 = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def rec(**kw: Any) -> TrackingRecord:
    base: dict[str, Any] = {
        "event_id": "ev-1",
        "order_id": 42,
        "status": "in_transit",
        "location": "Berlin",
        "carrier": "DHL",
        "occurred_at": T0,
        "shipment_id": 7,
        "topic": "tracking.updates",
        "partition": 2,
        "offset": 1000,
    }
    base.update(kw)
    return TrackingRecord(**base)


def as_map(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


# ------------------------------------------------------------------ encode / decode
@pytest.mark.parametrize(
    ("location", "carrier", "shipment_id"),
    [
        ("Berlin", "DHL", 7),
        (None, "DHL", 7),
        ("Berlin", None, None),
        (None, None, None),
        ("Zürich Hbf — Gleis 3", "Post CH", 2**63 - 1),
    ],
)
def test_encode_decode_round_trip(
    location: str | None, carrier: str | None, shipment_id: int | None
) -> None:
    r = rec(location=location, carrier=carrier, shipment_id=shipment_id)
    fields = as_map(encode_fields(r))
    assert fields["v"] == ENTRY_SCHEMA_VERSION
    assert ("location" in fields) == (location is not None)
    assert ("carrier" in fields) == (carrier is not None)
    assert ("shipment_id" in fields) == (shipment_id is not None)
    assert fields["source"] == "tracking.updates:2:1000"
    e = decode_entry("1-0", fields)
    assert (e.event_id, e.order_id, e.status) == ("ev-1", 42, "in_transit")
    assert (e.location, e.carrier, e.shipment_id) == (location, carrier, shipment_id)
    assert e.occurred_at == T0
    assert e.entry_id == "1-0"


def test_fields_are_flat_strings() -> None:
    flat = encode_fields(rec())
    assert all(isinstance(x, str) for x in flat)
    assert len(flat) % 2 == 0
    args = record_args(rec(), 4)
    assert args[:5] == ["ev-1", "tracking.updates:2", 1000, 4, len(flat) // 2]
    assert args[5:] == flat


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T0, "2026-03-01T12:30:45.123456+00:00"),
        (T0.replace(tzinfo=None), "2026-03-01T12:30:45.123456+00:00"),
        (
            datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-03-01T12:00:00+00:00",
        ),
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00+00:00"),
    ],
)
def test_iso_utc(value: datetime, expected: str) -> None:
    assert iso_utc(value) == expected


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "schema_version"),
        ({"v": "2", "event_id": "e", "order_id": "1", "status": "s"}, "schema_version"),
        (
            {"v": "1", "order_id": "1", "status": "s", "occurred_at": T0.isoformat()},
            "missing_field",
        ),
        (
            {"v": "1", "event_id": "e", "status": "s", "occurred_at": T0.isoformat()},
            "missing_field",
        ),
        (
            {"v": "1", "event_id": "e", "order_id": "01", "status": "s", "occurred_at": "x"},
            "bad_id",
        ),
        (
            {"v": "1", "event_id": "e", "order_id": "-5", "status": "s", "occurred_at": "x"},
            "bad_id",
        ),
        (
            {"v": "1", "event_id": "e", "order_id": "5", "status": "s", "occurred_at": "yesterday"},
            "bad_timestamp",
        ),
        (
            {
                "v": "1",
                "event_id": "e",
                "order_id": "5",
                "status": "s",
                "occurred_at": T0.isoformat(),
                "shipment_id": "abc",
            },
            "bad_id",
        ),
        (
            {"v": "1", "event_id": "e", "order_id": "5", "occurred_at": T0.isoformat()},
            "missing_field",
        ),
    ],
)
def test_decode_errors(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_entry("1-0", fields)
    assert info.value.reason == reason


def test_decode_naive_timestamp_is_utc() -> None:
    e = decode_entry(
        "1-0",
        {
            "v": "1",
            "event_id": "e",
            "order_id": "5",
            "status": "s",
            "occurred_at": "2026-01-01T10:00:00",
        },
    )
    assert e.occurred_at == datetime(2026, 1, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"event_id": ""}, ValueError),
        ({"event_id": "x" * 201}, ValueError),
        ({"event_id": "a\nb"}, ValueError),
        ({"order_id": 0}, InvalidIdError),
        ({"order_id": -3}, InvalidIdError),
        ({"order_id": 2**63}, InvalidIdError),
        ({"order_id": True}, InvalidIdError),
        ({"shipment_id": 0}, InvalidIdError),
        ({"status": ""}, ValueError),
        ({"status": "x" * 65}, ValueError),
        ({"location": ""}, ValueError),
        ({"carrier": "a\x00b"}, ValueError),
        ({"occurred_at": "2026-01-01"}, TypeError),
        ({"topic": "bad topic"}, ValueError),
        ({"topic": ""}, ValueError),
        ({"partition": -1}, ValueError),
        ({"offset": -1}, ValueError),
        ({"offset": 2**53}, ValueError),
        ({"offset": True}, ValueError),
    ],
)
def test_record_validation(kw: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        rec(**kw)


# ------------------------------------------------------------------ batch order
@pytest.mark.parametrize(
    ("offsets", "ok"),
    [
        ([(0, 1), (0, 2), (0, 3)], True),
        ([(0, 1), (1, 0), (0, 2), (1, 5)], True),
        ([(0, 3), (0, 3)], True),  # a repeat inside a batch is a duplicate, not disorder
        ([(0, 3), (0, 2)], False),
        ([(0, 1), (1, 9), (1, 4)], False),
        ([], True),
    ],
)
def test_check_partition_order(offsets: list[tuple[int, int]], ok: bool) -> None:
    records = [rec(event_id=f"e{i}", partition=p, offset=o) for i, (p, o) in enumerate(offsets)]
    if ok:
        check_partition_order(records)
    else:
        with pytest.raises(MirrorOrderError):
            check_partition_order(records)


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("order_id", [1, 2, 3, 42, 1001, 2**63 - 1])
def test_layout_slots(order_id: int) -> None:
    layout = StreamLayout(KeySpace("oc"), shards=4)
    shard = layout.shard_of(order_id)
    assert shard == order_id % 4
    stream = layout.shard_stream(shard)
    assert stream == f"oc:stream:tracking:{{{shard}}}"
    same_slot = {
        key_slot(k.encode())
        for k in (
            stream,
            layout.shard_offsets(shard),
            layout.shard_seen(shard),
            dead_letter_key(stream),
        )
    }
    assert len(same_slot) == 1
    # The order's stream shares its shard's slot: one script appends to both.
    order_stream = layout.order_stream(order_id)
    assert order_stream == f"oc:stream:tracking:{{{shard}}}:order:{order_id}"
    assert key_slot(order_stream.encode()) in same_slot


@pytest.mark.parametrize("bad", ["0", "-1", "1 ", "abc", "1e3", 0, -5, "99999999999999999999"])
def test_order_key_validates_id(bad: object) -> None:
    with pytest.raises(InvalidIdError):
        StreamLayout(KeySpace("oc"), 4).order_stream(bad)  # type: ignore[arg-type]


def test_shard_range() -> None:
    layout = StreamLayout(KeySpace("oc"), shards=3)
    assert len(layout.shard_streams()) == 3
    with pytest.raises(ValueError, match="shard"):
        layout.shard_stream(3)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kw",
    [
        {"shards": 0},
        {"shards": 2000},
        {"global_maxlen": -1},
        {"global_maxlen": 0, "global_max_age_ms": 0},
        {"order_maxlen": 0},
        {"order_ttl_ms": 0},
        {"dedupe_window_ms": -1},
    ],
)
def test_mirror_config_rejects(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        MirrorConfig(**kw)


@pytest.mark.parametrize(
    "kw",
    [{"count": 0}, {"block_ms": 0}, {"max_deliveries": 0}, {"claim_idle_ms": -1}],
)
def test_consumer_config_rejects(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        ConsumerConfig(**kw)


@pytest.mark.parametrize(
    ("socket_timeout", "wanted", "expected"),
    [(None, 1000, 1000), (0.5, 1000, 400), (5.0, 1000, 1000), (0.05, 1000, 10), (2.0, 100, 100)],
)
async def test_safe_block_ms(socket_timeout: float | None, wanted: int, expected: int) -> None:
    client = aioredis.Redis(socket_timeout=socket_timeout)
    try:
        assert safe_block_ms(client, wanted) == expected
    finally:
        await client.aclose()


def test_backoff_is_bounded_and_resets() -> None:
    b = Backoff(0.1, 1.0)
    delays = [b.next_delay() for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    b.reset()
    assert b.next_delay() <= 0.1


# ------------------------------------------------------------------ presentation
@pytest.mark.parametrize(
    ("status", "text"),
    [
        ("out_for_delivery", "order 42 is out for delivery"),
        ("delivered", "order 42 was delivered"),
        ("in_transit", None),
        ("exception", None),
    ],
)
def test_notification_text(status: str, text: str | None) -> None:
    entry = decode_entry("1-0", as_map(encode_fields(rec(status=status))))
    assert notification_text(entry) == text


def test_format_entry() -> None:
    line = format_entry(StreamEntry("5-1", as_map(encode_fields(rec()))))
    for part in ("order 42", "in_transit", "at Berlin", "via DHL", "shipment 7", "[5-1]"):
        assert part in line
    raw = format_entry(StreamEntry("5-2", {"v": "9", "x": "y"}))
    assert "undecodable" in raw
    assert "x=y" in raw


def test_dead_letter_fields_keep_the_original() -> None:
    raw = {b"v": b"1", b"event_id": b"e1", b"\xff": b"\x00\xfe"}
    fields = dead_letter_fields(
        raw, reason="r", entry_id="9-0", deliveries=6, group="g", stream="s", consumer="c"
    )
    assert {k: fields[k] for k in raw} == raw  # bytes kept as they were
    assert fields["dl_reason"] == "r"
    assert fields["dl_id"] == "9-0"
    assert fields["dl_deliveries"] == "6"
    assert (fields["dl_group"], fields["dl_stream"], fields["dl_consumer"]) == ("g", "s", "c")
