"""Tracking update → stream entry, and back. Pure functions, no I/O.

Entries are flat field/value pairs (schema in docs/streams.md); optional values that
are ``None`` are left out rather than written as empty strings, so "absent" and
"empty" stay distinct. ``v`` is the schema version: readers reject versions they do
not know instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ordercache.cache.keys import validate_id
from ordercache.errors import DecodeError

#: Version of the entry schema, written as field ``v``.
ENTRY_SCHEMA_VERSION = "1"

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_MAX_EVENT_ID = 200
_MAX_TEXT = 256


def _check_text(name: str, value: str | None, *, required: bool, limit: int) -> None:
    if value is None:
        if required:
            raise ValueError(f"{name}: required")
        return
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise ValueError(f"{name}: expected 1-{limit} printable characters")


@dataclass(frozen=True, slots=True)
class TrackingRecord:
    """One tracking update to mirror, with the Kafka position it was read from.

    The Kafka position (``topic``, ``partition``, ``offset``) is what makes mirroring
    idempotent under redelivery. A naive ``occurred_at`` is taken as UTC.
    Construction validates every field, so a bad update fails where it is decoded.
    """

    event_id: str
    order_id: int
    status: str
    location: str | None
    carrier: str | None
    occurred_at: datetime
    shipment_id: int | None
    topic: str
    partition: int
    offset: int

    def __post_init__(self) -> None:
        _check_text("event_id", self.event_id, required=True, limit=_MAX_EVENT_ID)
        validate_id(self.order_id)
        if self.shipment_id is not None:
            validate_id(self.shipment_id)
        _check_text("status", self.status, required=True, limit=64)
        _check_text("location", self.location, required=False, limit=_MAX_TEXT)
        _check_text("carrier", self.carrier, required=False, limit=_MAX_TEXT)
        if not isinstance(self.occurred_at, datetime):
            raise TypeError("occurred_at: expected a datetime")
        if not _TOPIC_RE.match(self.topic):
            raise ValueError("topic: expected a Kafka topic name")
        if isinstance(self.partition, bool) or not 0 <= self.partition < 2**31:
            raise ValueError("partition: expected 0 .. 2**31-1")
        # Offsets travel through Lua numbers (doubles): exact up to 2**53.
        if isinstance(self.offset, bool) or not 0 <= self.offset < 2**53:
            raise ValueError("offset: expected 0 .. 2**53-1")

    @property
    def source(self) -> str:
        """``topic:partition`` — the unit whose offsets are monotonic."""
        return f"{self.topic}:{self.partition}"


def iso_utc(value: datetime) -> str:
    """ISO-8601 in UTC with an explicit offset (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC).isoformat()
    return value.astimezone(UTC).isoformat()


def encode_fields(record: TrackingRecord) -> list[str]:
    """The flat ``[field, value, ...]`` list of a record's stream entry."""
    out = [
        "v", ENTRY_SCHEMA_VERSION,
        "event_id", record.event_id,
        "order_id", str(record.order_id),
        "status", record.status,
        "occurred_at", iso_utc(record.occurred_at),
    ]  # fmt: skip
    if record.location is not None:
        out += ("location", record.location)
    if record.carrier is not None:
        out += ("carrier", record.carrier)
    if record.shipment_id is not None:
        out += ("shipment_id", str(record.shipment_id))
    out += ("source", f"{record.topic}:{record.partition}:{record.offset}")
    return out


def decode_text(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """Field map as text (entries we write are UTF-8; anything else is replaced)."""
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry as read from a stream: its id and its fields as text."""

    id: str
    fields: Mapping[str, str]

    def tracking(self) -> TrackingEntry:
        """Decode as a tracking update (raises :class:`DecodeError`)."""
        return decode_entry(self.id, self.fields)


@dataclass(frozen=True, slots=True)
class TrackingEntry:
    """A tracking update decoded from a stream entry."""

    entry_id: str
    event_id: str
    order_id: int
    status: str
    occurred_at: datetime
    location: str | None = None
    carrier: str | None = None
    shipment_id: int | None = None
    source: str | None = None


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if value is None or value == "":
        raise DecodeError("missing_field", name)
    return value


def decode_entry(entry_id: str, fields: Mapping[str, str]) -> TrackingEntry:
    """Turn an entry's fields into a :class:`TrackingEntry` or raise :class:`DecodeError`."""
    version = fields.get("v")
    if version != ENTRY_SCHEMA_VERSION:
        raise DecodeError("schema_version", f"unknown entry schema version {version!r}")
    try:
        order_id = validate_id(_required(fields, "order_id"))
        raw_shipment = fields.get("shipment_id")
        shipment_id = None if raw_shipment is None else validate_id(raw_shipment)
    except ValueError as exc:
        raise DecodeError("bad_id", str(exc)) from None
    try:
        occurred_at = datetime.fromisoformat(_required(fields, "occurred_at"))
    except ValueError:
        raise DecodeError("bad_timestamp", "occurred_at is not ISO-8601") from None
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return TrackingEntry(
        entry_id=entry_id,
        event_id=_required(fields, "event_id"),
        order_id=order_id,
        status=_required(fields, "status"),
        occurred_at=occurred_at,
        location=fields.get("location"),
        carrier=fields.get("carrier"),
        shipment_id=shipment_id,
        source=fields.get("source"),
    )
