"""Dead letters of the change pipeline: their format, how they are built, how they count.

Format (the Kafka Connect convention, ``errors.deadletterqueue.context.headers``):
the DLQ message keeps the **original key and value bytes unchanged** and the
original headers in their order; the failure context is added as headers named
``ordercache.dlq.*``. Operators see the payload as it arrived (any console
consumer prints it), and replaying is a copy of key, value and headers back to
``ordercache.dlq.topic`` — no base64, no re-encoding. See docs/events.md.

A dead letter that cannot be sent whole — larger than the DLQ producer's request
limit, or refused by the broker for any permanent reason — is sent **bounded**
(:func:`bounded`): the same context headers, the original size and SHA-256, the
original headers and key as far as they fit, and the longest prefix of the value
that fits. No record can then hold its partition: the offset moves on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ordercache.agents.batch import Rejected

HEADER_PREFIX = "ordercache.dlq."
H_REASON = HEADER_PREFIX + "reason"
H_DETAIL = HEADER_PREFIX + "detail"
H_TOPIC = HEADER_PREFIX + "topic"
H_PARTITION = HEADER_PREFIX + "partition"
H_OFFSET = HEADER_PREFIX + "offset"
H_TIMESTAMP = HEADER_PREFIX + "timestamp_ms"
H_FAILED_AT = HEADER_PREFIX + "failed_at_ms"
H_ATTEMPTS = HEADER_PREFIX + "attempts"
H_FORMAT = HEADER_PREFIX + "format"
# Present only on a bounded dead letter (see bounded()).
H_BOUNDED = HEADER_PREFIX + "bounded"
H_ORIGINAL_SIZE = HEADER_PREFIX + "original_size"
H_ORIGINAL_SHA256 = HEADER_PREFIX + "original_sha256"
H_KEY_SIZE = HEADER_PREFIX + "original_key_size"
H_KEY_SHA256 = HEADER_PREFIX + "original_key_sha256"
H_HEADERS_DROPPED = HEADER_PREFIX + "headers_dropped"

FORMAT_VERSION = "1"
#: Longest ``detail`` kept, characters (the reason code is the machine-readable part).
MAX_DETAIL = 500

_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CAUSE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class DlqRecord(NamedTuple):
    """What to send to the DLQ topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class Bounded:
    """What a bounded dead letter left out, so the original can be identified.

    ``cause`` names why the whole letter was not sent (the Kafka error class, e.g.
    ``MessageSizeTooLargeError``); sizes and SHA-256 digests are of the original
    value (and of the key, when the key had to be cut); ``headers_dropped`` counts
    original headers that did not fit (the first ones are kept, in order).
    """

    cause: str
    value_size: int | None
    value_sha256: str | None
    key_size: int | None = None
    key_sha256: str | None = None
    headers_dropped: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, with where it came from and why.

    ``timestamp_ms`` is the original message's Kafka timestamp; ``failed_at_ms``
    when it was dead-lettered; ``attempts`` counts how often this message (or its
    replays) reached the DLQ.
    """

    reason: str
    detail: str
    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int | None
    failed_at_ms: int
    attempts: int = 1
    #: Set on a bounded dead letter: the value is then a prefix of the original.
    bound: Bounded | None = None

    def to_record(self) -> DlqRecord:
        """Key, value and headers of the DLQ message (original bytes unchanged)."""
        if not _REASON_RE.fullmatch(self.reason):
            raise ValueError(f"DLQ reason must be a short code, got {self.reason[:40]!r}")
        headers: list[tuple[str, bytes | None]] = list(self.headers)
        ctx: list[tuple[str, str]] = [
            (H_REASON, self.reason),
            (H_DETAIL, _clip(self.detail)),
            (H_TOPIC, self.topic),
        ]
        if self.partition is not None:
            ctx.append((H_PARTITION, str(self.partition)))
        if self.offset is not None:
            ctx.append((H_OFFSET, str(self.offset)))
        if self.timestamp_ms is not None:
            ctx.append((H_TIMESTAMP, str(self.timestamp_ms)))
        ctx += [
            (H_FAILED_AT, str(self.failed_at_ms)),
            (H_ATTEMPTS, str(self.attempts)),
            (H_FORMAT, FORMAT_VERSION),
        ]
        if self.bound is not None:
            ctx += _bound_headers(self.bound)
        headers += [(name, text.encode("utf-8")) for name, text in ctx]
        return DlqRecord(self.key, self.value, headers)

    @classmethod
    def from_record(
        cls, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> DeadLetter:
        """Read a DLQ message back (tools, replays, tests). Raises ValueError."""
        ours: dict[str, str] = {}
        original: list[tuple[str, bytes | None]] = []
        for name, raw in headers:
            if name.startswith(HEADER_PREFIX):
                ours[name] = (raw or b"").decode("utf-8")
            else:
                original.append((name, raw))
        if H_REASON not in ours or H_TOPIC not in ours or H_FAILED_AT not in ours:
            raise ValueError("not an ordercache dead letter (context headers missing)")
        return cls(
            reason=ours[H_REASON],
            detail=ours.get(H_DETAIL, ""),
            topic=ours[H_TOPIC],
            partition=_opt_int(ours.get(H_PARTITION)),
            offset=_opt_int(ours.get(H_OFFSET)),
            key=key,
            value=value,
            headers=tuple(original),
            timestamp_ms=_opt_int(ours.get(H_TIMESTAMP)),
            failed_at_ms=int(ours[H_FAILED_AT]),
            attempts=int(ours.get(H_ATTEMPTS, "1")),
            bound=_read_bound(ours),
        )


def _bound_headers(b: Bounded) -> list[tuple[str, str]]:
    if not _CAUSE_RE.fullmatch(b.cause):
        raise ValueError(f"bounded cause must be an error class name, got {b.cause[:40]!r}")
    out = [(H_BOUNDED, b.cause)]
    if b.value_size is not None and b.value_sha256 is not None:
        out += [(H_ORIGINAL_SIZE, str(b.value_size)), (H_ORIGINAL_SHA256, b.value_sha256)]
    if b.key_size is not None and b.key_sha256 is not None:
        out += [(H_KEY_SIZE, str(b.key_size)), (H_KEY_SHA256, b.key_sha256)]
    if b.headers_dropped:
        out.append((H_HEADERS_DROPPED, str(b.headers_dropped)))
    return out


def _read_bound(ours: dict[str, str]) -> Bounded | None:
    cause = ours.get(H_BOUNDED)
    if cause is None:
        return None
    return Bounded(
        cause=cause,
        value_size=_opt_int(ours.get(H_ORIGINAL_SIZE)),
        value_sha256=ours.get(H_ORIGINAL_SHA256),
        key_size=_opt_int(ours.get(H_KEY_SIZE)),
        key_sha256=ours.get(H_KEY_SHA256),
        headers_dropped=_opt_int(ours.get(H_HEADERS_DROPPED), default=0) or 0,
    )


#: Smallest limit a bounded letter can be built for (the context headers must fit).
MIN_BOUNDED_LIMIT = 4096


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> int:
    """The size aiokafka's producer checks against ``max_request_size`` (its own estimate)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


def bounded(record: DlqRecord, *, limit: int, cause: str, keep_payload: bool = True) -> DlqRecord:
    """The dead letter ``record`` cut down to at most ``limit`` bytes (:func:`record_size`).

    The context headers are kept whole; original headers and the key keep at most a
    quarter of the room each (headers in order, whole or not at all; the key as a
    prefix); the value gets the rest, as a prefix. ``keep_payload=False`` keeps
    nothing of the original but its sizes and digests (the last resort when even a
    bounded letter is refused). Pure; raises ValueError if ``record`` is not a dead
    letter or ``limit`` < :data:`MIN_BOUNDED_LIMIT`.
    """
    if limit < MIN_BOUNDED_LIMIT:
        raise ValueError(f"limit must be at least {MIN_BOUNDED_LIMIT} bytes")
    letter = DeadLetter.from_record(record.key, record.value, record.headers)
    value, key = letter.value, letter.key
    # Room left by the context, counted with every optional header present (worst case).
    worst = Bounded(cause, 2**62, "0" * 64, 2**62, "0" * 64, 2**31)
    base = _replace(letter, key=None, value=b"", headers=(), bound=worst).to_record()
    room = limit - record_size(*base)
    quarter = max(0, room // 4) if keep_payload else 0
    kept: list[tuple[str, bytes | None]] = []
    used = 0
    for h in letter.headers:
        size = record_size(None, None, [h]) - record_size(None, None, [])
        if used + size > quarter:
            break
        kept.append(h)
        used += size
    cut_key = key is not None and len(key) > quarter
    bound = Bounded(
        cause=cause,
        value_size=None if value is None else len(value),
        value_sha256=None if value is None else hashlib.sha256(value).hexdigest(),
        key_size=len(key) if cut_key and key is not None else None,
        key_sha256=hashlib.sha256(key).hexdigest() if cut_key and key is not None else None,
        headers_dropped=len(letter.headers) - len(kept),
    )
    new_key = key[:quarter] if key is not None and keep_payload else None
    shell = _replace(letter, key=new_key, value=b"", headers=tuple(kept), bound=bound)
    if value is None or not keep_payload:
        return _replace(shell, value=None).to_record()
    empty = record_size(*shell.to_record())
    n = min(len(value), max(0, limit - empty))
    # The length prefix of the value grows with it: at most a few bytes to give back.
    while (
        n > 0 and (over := record_size(*_replace(shell, value=value[:n]).to_record()) - limit) > 0
    ):
        n -= over
    return _replace(shell, value=value[: max(0, n)]).to_record()


def _replace(letter: DeadLetter, **changes: Any) -> DeadLetter:
    return dataclasses.replace(letter, **changes)


def dead_letter(
    reason: str,
    detail: str,
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    timestamp_ms: int | None,
    now_ms: int,
) -> DlqRecord:
    """Build the DLQ message for a failed message (pure: the caller passes the clock).

    Context headers of an earlier dead-lettering (a replayed message that failed
    again) are replaced, and the attempt count goes up by one.
    """
    previous = 0
    kept: list[tuple[str, bytes | None]] = []
    for name, raw in headers:
        if name.startswith(HEADER_PREFIX):
            if name == H_ATTEMPTS and raw is not None:
                previous = _opt_int(raw.decode("utf-8", "replace"), default=0) or 0
            continue
        kept.append((name, raw))
    letter = DeadLetter(
        reason=reason,
        detail=detail,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=tuple(kept),
        timestamp_ms=timestamp_ms,
        failed_at_ms=now_ms,
        attempts=previous + 1,
    )
    return letter.to_record()


def _clip(text: str) -> str:
    # One line, bounded: details end up in headers, logs and dashboards.
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_DETAIL else flat[: MAX_DETAIL - 1] + "…"


def _opt_int(text: str | None, default: int | None = None) -> int | None:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        return default


def build_dead_letter(r: Rejected) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The DLQ message of a rejected record: original bytes plus context headers."""
    rec = r.record
    dl = dead_letter(
        r.reason,
        r.detail,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        headers=list(rec.headers or ()),
        timestamp_ms=rec.timestamp,
        now_ms=int(time.time() * 1000),
    )
    return dl.key, dl.value, [(k, v if v is not None else b"") for k, v in dl.headers]


# ----------------------------------------------------------------------- counting
def dlq_key(headers: Any, partition: int) -> str:
    """``"{source topic}|{reason}|{dlq partition}"`` from a DLQ message's headers.

    The DLQ partition is part of the key so that each key lives in exactly one
    changelog partition of the counting table (:mod:`ordercache.tables.dlq_stats`).
    """
    found: dict[str, bytes] = {}
    items = headers.items() if isinstance(headers, dict) else headers or ()
    for name, raw in items:
        if name in (H_REASON, H_TOPIC):
            found[name] = raw if isinstance(raw, bytes) else str(raw).encode()
    reason = found.get(H_REASON, b"unknown").decode("utf-8", "replace")
    topic = found.get(H_TOPIC, b"unknown").decode("utf-8", "replace")
    return f"{topic}|{reason}|{partition}"


def summarize(items: Iterable[tuple[Any, Any]]) -> dict[str, dict[str, int]]:
    """Counting-table items -> ``{source topic: {reason: count}}`` summed over partitions."""
    out: dict[str, dict[str, int]] = {}
    for key, count in items:
        topic, reason, _ = str(key).split("|", 2)
        per = out.setdefault(topic, {})
        per[reason] = per.get(reason, 0) + int(count)
    return out
