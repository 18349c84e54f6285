"""Pure batch logic of the change pipeline: records in, cache ops and dead letters out.

No I/O here. The pipeline service decodes each Kafka record with the project's one
decode function, plans its cache operations, and collects what goes to the DLQ —
keeping the operations in record order, so per-key order is the partition's order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ordercache.cache.ops import CacheOp, Invalidate
from ordercache.errors import DecodeError, InvalidIdError
from ordercache.streams.entry import TrackingRecord

Headers = Sequence[tuple[str, bytes]]


class RecordLike(Protocol):
    """What we use of an aiokafka ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


Decoder = Callable[[str, bytes | None, bytes | None, Headers], Any]
Planner = Callable[[Any], list[CacheOp]]
#: True (or an outcome name such as ``"heartbeat"``) for an event that plans nothing
#: and is not an error: counted under that outcome (``"tombstone"`` for ``True``).
IsTombstone = Callable[[Any], bool | str | None]
#: Why an event's plan cannot cover everything its change affected (or ``None``).
Unresolved = Callable[[Any], str | None]
#: The stream-mirror record of a decoded event read at a record's position, or None
#: for events the mirror does not take; raises DecodeError for a record it refuses.
TrackingExtractor = Callable[["RecordLike", Any], TrackingRecord | None]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be applied and goes to the DLQ with its reason."""

    record: RecordLike
    reason: str
    detail: str


@dataclass
class BatchPlan:
    """Everything one batch asks for, in record order."""

    ops: list[CacheOp] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    #: Decoded events, in order, for side consumers.
    events: list[tuple[RecordLike, Any]] = field(default_factory=list)
    #: Tracking updates to mirror into Redis Streams, built (and validated) once, in order.
    tracking: list[TrackingRecord] = field(default_factory=list)
    #: (topic, outcome) -> count; outcomes: applied, tombstone, heartbeat, dlq.
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Applied events whose plan could not name every affected entry, with the reason.
    unresolved: list[tuple[RecordLike, Any, str]] = field(default_factory=list)
    #: Highest offset seen per (topic, partition): what to commit after applying.
    last_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Produce timestamps (ms) of applied records, for the lag histogram.
    timestamps: list[int] = field(default_factory=list)


def plan_batch(
    records: Iterable[RecordLike],
    decode: Decoder,
    plan: Planner,
    is_tombstone: IsTombstone,
    unresolved: Unresolved | None = None,
    *,
    tracking: TrackingExtractor | None = None,
) -> BatchPlan:
    """Decode and plan a batch. Bad records become :class:`Rejected`, never exceptions."""
    out = BatchPlan()
    seen: set[Invalidate] = set()
    for rec in records:
        out.last_offsets[(rec.topic, rec.partition)] = rec.offset
        try:
            event = decode(rec.topic, rec.key, rec.value, rec.headers)
            skipped = is_tombstone(event)
            if skipped:
                outcome = skipped if isinstance(skipped, str) else "tombstone"
                out.outcomes[(rec.topic, outcome)] += 1
                continue
            ops = plan(event)
            mirrored = tracking(rec, event) if tracking is not None else None
        except DecodeError as exc:
            out.rejected.append(Rejected(rec, exc.reason, exc.detail))
            out.outcomes[(rec.topic, "dlq")] += 1
            continue
        except InvalidIdError as exc:
            out.rejected.append(Rejected(rec, "invalid_id", str(exc)))
            out.outcomes[(rec.topic, "dlq")] += 1
            continue
        for op in ops:
            # An identical invalidation twice in one batch (a duplicate) runs once.
            if isinstance(op, Invalidate):
                if op in seen:
                    continue
                seen.add(op)
            out.ops.append(op)
        out.events.append((rec, event))
        if mirrored is not None:
            out.tracking.append(mirrored)
        out.outcomes[(rec.topic, "applied")] += 1
        reason = None if unresolved is None else unresolved(event)
        if reason is not None:
            out.unresolved.append((rec, event, reason))
        out.timestamps.append(rec.timestamp)
    return out
