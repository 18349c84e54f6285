"""Dead-letter records: original bytes kept, context in headers, round trip."""

from __future__ import annotations

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
    assert "'x'" in ours(headers)[H_DETAIL]
    assert ("trace", b"t") in headers


def test_from_record_rejects_foreign_messages() -> None:
    with pytest.raises(ValueError, match="not an ordercache dead letter"):
        DeadLetter.from_record(b"k", b"v", [("id", b"1")])
