"""Dead-letter records: original bytes kept, context in headers, round trip."""

from __future__ import annotations

import orjson
import pytest

from ordercache.agents.decode import decode
from ordercache.agents.dlq import (
    H_ATTEMPTS,
    H_DETAIL,
    H_FAILED_AT,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TIMESTAMP,
    H_TOPIC,
    HEADER_PREFIX,
    MAX_DETAIL,
    DeadLetter,
    DlqRecord,
    dead_letter,
)

ORIGINAL_HEADERS = [
    ("id", b"evt-1"),
    ("traceparent", b"00-abc-def-01"),
    ("id", b"dup"),
    ("nullable", None),
]


def build(**overrides: object) -> DlqRecord:
    args: dict[str, object] = {
        "topic": "orders.changes",
        "partition": 3,
        "offset": 1234,
        "key": b"\x00key\xff",
        "value": b"\xff\xfe not json \x00",
        "headers": ORIGINAL_HEADERS,
        "timestamp_ms": 1714558272123,
        "now_ms": 1714558280000,
    }
    args.update(overrides)
    return dead_letter("invalid_json", "unexpected character", **args)  # type: ignore[arg-type]


def ours(headers: list[tuple[str, bytes | None]]) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in headers if k.startswith(HEADER_PREFIX)}


def test_original_bytes_and_headers_are_kept_exactly() -> None:
    key, value, headers = build()
    assert key == b"\x00key\xff"
    assert value == b"\xff\xfe not json \x00"
    assert headers[: len(ORIGINAL_HEADERS)] == ORIGINAL_HEADERS
    assert ours(headers) == {
        H_REASON: "invalid_json",
        H_DETAIL: "unexpected character",
        H_TOPIC: "orders.changes",
        H_PARTITION: "3",
        H_OFFSET: "1234",
        H_TIMESTAMP: "1714558272123",
        H_FAILED_AT: "1714558280000",
        H_ATTEMPTS: "1",
        HEADER_PREFIX + "format": "1",
    }


def test_round_trip() -> None:
    key, value, headers = build()
    letter = DeadLetter.from_record(key, value, headers)
    assert letter == DeadLetter(
        reason="invalid_json",
        detail="unexpected character",
        topic="orders.changes",
        partition=3,
        offset=1234,
        key=b"\x00key\xff",
        value=b"\xff\xfe not json \x00",
        headers=tuple(ORIGINAL_HEADERS),
        timestamp_ms=1714558272123,
        failed_at_ms=1714558280000,
        attempts=1,
    )
    assert letter.to_record() == (key, value, headers)


def test_null_key_value_and_unknown_position() -> None:
    key, value, headers = build(
        key=None, value=None, partition=None, offset=None, timestamp_ms=None
    )
    assert (key, value) == (None, None)
    ctx = ours(headers)
    assert H_PARTITION not in ctx
    assert H_OFFSET not in ctx
    assert H_TIMESTAMP not in ctx
    letter = DeadLetter.from_record(key, value, headers)
    assert (letter.partition, letter.offset, letter.timestamp_ms) == (None, None, None)


def test_a_replayed_message_that_fails_again_counts_attempts() -> None:
    key, value, headers = build()
    key2, value2, headers2 = dead_letter(
        "schema_mismatch",
        "second try",
        topic="orders.changes",
        partition=0,
        offset=99,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=None,
        now_ms=1714558290000,
    )
    assert (key2, value2) == (key, value)
    assert headers2[: len(ORIGINAL_HEADERS)] == ORIGINAL_HEADERS
    ctx = ours(headers2)
    assert ctx[H_ATTEMPTS] == "2"
    assert ctx[H_REASON] == "schema_mismatch"
    assert ctx[H_OFFSET] == "99"
    assert sum(1 for k, _ in headers2 if k == H_REASON) == 1


def test_detail_is_one_bounded_line() -> None:
    _, _, headers = dead_letter(
        "schema_mismatch",
        "line one\nline two\t" + "x" * 5000,
        topic="t",
        partition=0,
        offset=0,
        key=None,
        value=b"{}",
        headers=[],
        timestamp_ms=None,
        now_ms=1,
    )
    detail = ours(headers)[H_DETAIL]
    assert "\n" not in detail
    assert detail.startswith("line one line two x")
    assert len(detail) == MAX_DETAIL


@pytest.mark.parametrize("reason", ["", "Bad Reason", "x" * 40, "reason\n", "0abc"])
def test_reason_must_be_a_short_code(reason: str) -> None:
    with pytest.raises(ValueError, match="short code"):
        dead_letter(
            reason,
            "",
            topic="t",
            partition=0,
            offset=0,
            key=None,
            value=None,
            headers=[],
            timestamp_ms=None,
            now_ms=1,
        )


def test_decode_error_becomes_the_pipelines_dead_letter() -> None:
    """The path the pipeline takes: decode fails, the batch rejects, the DLQ record keeps
    the original bytes and carries the decode error's reason and detail."""
    from types import SimpleNamespace

    from ordercache.agents.batch import plan_batch
    from ordercache.agents.decode import is_tombstone
    from ordercache.agents.dlq import build_dead_letter
    from ordercache.agents.plan import plan

    value = b'{"op":"x","after":{},"source":{"table":"orders"}}'
    rec = SimpleNamespace(
        topic="orders.changes", partition=1, offset=7, timestamp=5, key=b"11", value=value,
        headers=[("trace", b"t")],
    )  # fmt: skip
    bp = plan_batch([rec], decode, plan, is_tombstone)
    [rejected] = bp.rejected
    key, val, headers = build_dead_letter(rejected)
    assert (key, val) == (b"11", value)
    assert ours(headers)[H_REASON] == "unknown_op"
    assert ours(headers)[H_DETAIL] == "op: expected one of c, u, d, r, t"  # the rule, not 'x'
    assert ("trace", b"t") in headers


def test_from_record_rejects_foreign_messages() -> None:
    with pytest.raises(ValueError, match="not an ordercache dead letter"):
        DeadLetter.from_record(b"k", b"v", [("id", b"1")])


# --------------------------------------------------------------------------- bounded
LIMIT = 64 * 1024


@pytest.mark.parametrize("size", [LIMIT - 100, LIMIT + 1, 5 * LIMIT, 3 * 1024 * 1024])
def test_bounded_letter_fits_and_identifies_the_original(size: int) -> None:
    import hashlib

    from ordercache.agents.dlq import bounded, record_size

    value = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    whole = build(value=value)
    key, cut, headers = bounded(whole, limit=LIMIT, cause="MessageSizeTooLargeError")
    assert record_size(key, cut, headers) <= LIMIT
    assert cut is not None and value.startswith(cut)
    assert len(cut) > LIMIT - 2048  # as much as fits: only the headers take room
    letter = DeadLetter.from_record(key, cut, headers)
    assert letter.bound is not None
    assert letter.bound.cause == "MessageSizeTooLargeError"
    assert letter.bound.value_size == size
    assert letter.bound.value_sha256 == hashlib.sha256(value).hexdigest()
    assert letter.bound.headers_dropped == 0 and letter.bound.key_size is None
    assert letter.key == b"\x00key\xff"
    assert letter.headers == tuple(ORIGINAL_HEADERS)
    # the context of the whole letter, unchanged
    whole_letter = DeadLetter.from_record(*whole)
    assert (letter.reason, letter.detail, letter.topic, letter.partition, letter.offset) == (
        whole_letter.reason, whole_letter.detail, whole_letter.topic, 3, 1234,
    )  # fmt: skip
    assert letter.failed_at_ms == whole_letter.failed_at_ms


def test_bounded_letter_cuts_a_huge_key_and_drops_headers_that_do_not_fit() -> None:
    import hashlib

    from ordercache.agents.dlq import bounded, record_size

    big_key = b"k" * (2 * LIMIT)
    many = [(f"h{i}", b"v" * 1000) for i in range(40)]
    whole = build(key=big_key, headers=many, value=b"x" * (2 * LIMIT))
    key, value, headers = bounded(whole, limit=LIMIT, cause="RecordListTooLargeError")
    assert record_size(key, value, headers) <= LIMIT
    letter = DeadLetter.from_record(key, value, headers)
    assert letter.bound is not None
    assert letter.bound.key_size == len(big_key)
    assert letter.bound.key_sha256 == hashlib.sha256(big_key).hexdigest()
    assert key is not None and big_key.startswith(key) and len(key) <= LIMIT // 4
    kept = len(letter.headers)
    assert 0 < kept < len(many) and letter.bound.headers_dropped == len(many) - kept
    assert list(letter.headers) == many[:kept]  # the first ones, in order
    assert value and len(value) > LIMIT // 4


def test_bounded_letter_without_payload_keeps_only_sizes_and_digests() -> None:
    from ordercache.agents.dlq import bounded

    whole = build(value=b"v" * 100_000)
    key, value, headers = bounded(
        whole, limit=LIMIT, cause="InvalidRecordError", keep_payload=False
    )
    assert (key, value) == (None, None)
    letter = DeadLetter.from_record(key, value, headers)
    assert letter.headers == ()
    assert letter.bound is not None and letter.bound.value_size == 100_000
    assert letter.bound.headers_dropped == len(ORIGINAL_HEADERS)
    assert letter.reason == "invalid_json"


def test_bounded_null_value_and_bad_inputs() -> None:
    from ordercache.agents.dlq import MIN_BOUNDED_LIMIT, bounded

    key, value, headers = bounded(build(value=None), limit=LIMIT, cause="KafkaError")
    letter = DeadLetter.from_record(key, value, headers)
    assert value is None and letter.bound is not None and letter.bound.value_size is None
    with pytest.raises(ValueError, match="at least"):
        bounded(build(), limit=MIN_BOUNDED_LIMIT - 1, cause="KafkaError")
    with pytest.raises(ValueError, match="error class name"):
        bounded(build(), limit=LIMIT, cause="not a\nclass")
    with pytest.raises(ValueError, match="not an ordercache dead letter"):
        bounded(DlqRecord(b"k", b"v", [("id", b"1")]), limit=LIMIT, cause="KafkaError")


# --------------------------------------------------------------------------- no echo
MARKER = "SECRET-a7f3c9"


def _env(table: str, after: dict[str, object], **top: object) -> bytes:
    doc: dict[str, object] = {"before": None, "after": after, "op": "u", "ts_ms": 1,
                              "source": {"table": table, "lsn": 1, "txId": 1, "ts_ms": 1}}  # fmt: skip
    doc.update(top)
    return orjson.dumps(doc)


_ORDER = {"id": 5, "customer_id": 6, "status": "paid", "total_cents": 1, "currency": "EUR",
          "created_at": "2026-03-01T10:00:00Z", "updated_at": "2026-03-01T10:00:00Z",
          "version": 1}  # fmt: skip
_TRACK = {"id": 1, "event_id": "e-1", "order_id": 5, "status": "in_transit",
          "occurred_at": "2026-03-01T10:00:00Z", "version": 1}  # fmt: skip

#: (topic, key, value, headers): each carries the marker in a field that fails a rule.
SECRET_RECORDS: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = [
    ("orders.changes", b"5", f'{{"{MARKER}": '.encode(), []),
    ("orders.changes", b"5", f"[1, 2, {MARKER}]".encode(), []),
    ("orders.changes", b"5", _env("orders", _ORDER, op=MARKER), []),
    ("orders.changes", b"5", _env(MARKER, _ORDER), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "id": MARKER}), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "customer_id": f"12{MARKER}"}), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "total_cents": MARKER}), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "status": {"x": MARKER}}), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "created_at": MARKER}), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "updated_at": [MARKER]}), []),
    ("orders.changes", b"5", _env("orders", {**_ORDER, "version": f"{MARKER}"}), []),
    ("orders.changes", b"5", _env("orders", _ORDER, ts_ms=MARKER), []),
    ("orders.changes", b"5", _env("orders", _ORDER, source={"table": "orders", "lsn": MARKER}), []),
    ("tracking.updates", b"5", _env("tracking_events", {**_TRACK, "status": f"{MARKER}\x00"}), []),
    ("tracking.updates", b"5", _env("tracking_events", {**_TRACK, "event_id": MARKER * 20}), []),
    ("tracking.updates", b"5", _env("tracking_events", {**_TRACK, "occurred_at": MARKER}), []),
    ("inventory.changes", b"5", orjson.dumps({"product_id": 1}),
     [("id", b"e-2"), ("aggregatetype", MARKER.encode())]),
    ("inventory.changes", b"5", orjson.dumps({"product_id": MARKER}), [("id", b"e-3")]),
    ("inventory.changes", b"5", orjson.dumps({"product_id": 1}), [("id", b"e-4"), ("op", MARKER.encode())]),
    ("inventory.changes", b"5", orjson.dumps(MARKER + "{"), [("id", b"e-5")]),
    ("inventory.changes", b"5", orjson.dumps({"product_id": 1}), [("id", MARKER.encode() * 20)]),
    ("inventory.changes", None, orjson.dumps({"product_id": 1}), [("id", MARKER.encode())]),
]  # fmt: skip


def test_dlq_details_name_the_field_and_rule_never_the_value() -> None:
    from types import SimpleNamespace

    from ordercache.agents.batch import plan_batch
    from ordercache.agents.decode import is_tombstone
    from ordercache.agents.dlq import build_dead_letter
    from ordercache.agents.plan import plan
    from ordercache.agents.tracking import tracking_record

    records = [
        SimpleNamespace(topic=t, partition=0, offset=i, timestamp=1, key=k, value=v, headers=h)
        for i, (t, k, v, h) in enumerate(SECRET_RECORDS)
    ]
    bp = plan_batch(records, decode, plan, is_tombstone, tracking=tracking_record)
    assert [r.record.offset for r in bp.rejected] == list(range(len(SECRET_RECORDS)))
    for rejected in bp.rejected:
        _, _, headers = build_dead_letter(rejected)
        context = ours(headers)
        assert context[H_DETAIL], rejected.reason
        for name, text in context.items():
            assert MARKER not in text, (name, text)
            assert MARKER[:6] not in text, (name, text)
