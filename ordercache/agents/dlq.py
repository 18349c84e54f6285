"""Dead letters of the change pipeline: their format, how they are built, how they count.

Format (the Kafka Connect convention, ``errors.deadletterqueue.context.headers``):
the DLQ message keeps the **original key and value bytes unchanged** and the
original headers in their order; the failure context is added as headers named
``ordercache.dlq.*``. Operators see the payload as it arrived (any console
consumer prints it), and replaying is a copy of key, value and headers back to
``ordercache.dlq.topic`` — no base64, no re-encoding. See docs/events.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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

FORMAT_VERSION = "1"
#: Longest ``detail`` kept, characters (the reason code is the machine-readable part).
MAX_DETAIL = 500

_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class DlqRecord(NamedTuple):
    """What to send to the DLQ topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


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
        )


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
