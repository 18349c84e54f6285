"""Change-event schemas: row images of the captured tables and the decoded event.

Row images follow the columns of :mod:`ordercache.models.orm`. Timestamps accept
what Debezium's PostgreSQL connector emits for ``timestamptz`` (ISO-8601 strings,
``io.debezium.time.ZonedTimestamp``) and epoch integers (``Timestamp`` millis,
``MicroTimestamp`` micros, ``NanoTimestamp`` nanos, told apart by magnitude).

:class:`ChangeEvent` and :class:`Tombstone` are named tuples, not pydantic models
(nor frozen dataclasses, whose ``__init__`` costs several microseconds): the
decoder validates the few envelope fields by hand and only the row images go
through pydantic (see :mod:`ordercache.agents.decode`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

#: Largest id a key accepts (see ordercache.cache.keys.validate_id).
MAX_ID = 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch integers are told apart by magnitude: below 1e14 they are milliseconds
# (up to the year 5138), below 1e17 microseconds (from 1973 on), else nanoseconds.
_MICROS_FROM = 10**14
_NANOS_FROM = 10**17


def _timestamp_error(message: str) -> PydanticCustomError:
    # A fixed message with its own error type: decode reports it as the rule broken.
    return PydanticCustomError("timestamp_parsing", message)


def parse_timestamp(raw: object) -> datetime:
    """An aware UTC-or-offset datetime from an ISO-8601 string or an epoch integer.

    Naive values are taken as UTC (Debezium's ``timestamp`` without time zone is
    emitted as epoch micros of the wall clock, which the database keeps in UTC here).
    """
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            # (fromisoformat's message quotes the string: never echo input)
            raise _timestamp_error("expected an ISO-8601 string") from None
    elif isinstance(raw, int) and not isinstance(raw, bool):
        if abs(raw) >= _NANOS_FROM:
            micros = raw // 1000
        elif abs(raw) >= _MICROS_FROM:
            micros = raw
        else:
            micros = raw * 1000
        try:
            value = _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise _timestamp_error("epoch timestamp out of range") from None
    else:
        # A ValueError (PydanticCustomError is one), not TypeError: pydantic turns
        # only ValueError into a validation error (a TypeError would escape the decoder).
        raise _timestamp_error("expected an ISO-8601 string or epoch milli/micro/nanoseconds")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


Id = Annotated[int, Field(strict=True, gt=0, le=MAX_ID)]
Version = Annotated[int, Field(strict=True, ge=0)]
Count = Annotated[int, Field(strict=True)]
Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]


class Entity(StrEnum):
    """A captured table; the value is the table name (Debezium ``source.table``)."""

    ORDER = "orders"
    ORDER_ITEM = "order_items"
    INVENTORY = "inventory"
    TRACKING_EVENT = "tracking_events"
    SHIPMENT = "shipments"
    #: Captured for ``orders_version``: the version of the customer's history view.
    CUSTOMER = "customers"


class Op(StrEnum):
    """Debezium operation codes."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # snapshot
    TRUNCATE = "t"


class _Row(BaseModel):
    # Unknown columns are ignored so that a column added upstream does not send
    # every event to the dead-letter topic.
    model_config = ConfigDict(frozen=True, extra="ignore")


class OrderRow(_Row):
    id: Id
    customer_id: Id
    status: str
    total_cents: Count
    currency: str
    created_at: Timestamp
    updated_at: Timestamp
    version: Version


class OrderItemRow(_Row):
    id: Id
    order_id: Id
    product_id: Id
    quantity: Count
    unit_price_cents: Count
    version: Version


class InventoryRow(_Row):
    product_id: Id
    available: Count
    reserved: Count
    version: Version
    updated_at: Timestamp
    #: Not a column of ``inventory``: an outbox payload may join it in from
    #: ``products``. With it the pipeline can write the view through; without it
    #: the entry is invalidated (see ordercache.agents.plan).
    sku: str | None = None


class ShipmentRow(_Row):
    id: Id
    order_id: Id
    carrier: str
    tracking_number: str
    status: str
    created_at: Timestamp
    updated_at: Timestamp
    version: Version


class TrackingEventRow(_Row):
    id: Id
    event_id: Annotated[str, Field(min_length=1, max_length=64)]
    order_id: Id
    shipment_id: Id | None = None
    status: str
    location: str | None = None
    carrier: str | None = None
    occurred_at: Timestamp
    version: Version


class CustomerRow(_Row):
    """The columns of ``customers`` the cache needs (the connector leaves out the rest)."""

    id: Id
    version: Version
    orders_version: Version


Row = OrderRow | OrderItemRow | InventoryRow | ShipmentRow | TrackingEventRow | CustomerRow

#: The row model of each table.
ROW_MODELS: dict[Entity, type[Row]] = {
    Entity.ORDER: OrderRow,
    Entity.ORDER_ITEM: OrderItemRow,
    Entity.INVENTORY: InventoryRow,
    Entity.SHIPMENT: ShipmentRow,
    Entity.TRACKING_EVENT: TrackingEventRow,
    Entity.CUSTOMER: CustomerRow,
}

#: The columns of each table that reference another row's id and are NOT NULL. A
#: delete's before image that lacks a real value in one of them (or a real version)
#: is an identity image, not a row (see :func:`ordercache.agents.decode.decode`).
REQUIRED_REFS: dict[Entity, tuple[str, ...]] = {
    Entity.ORDER: ("customer_id",),
    Entity.ORDER_ITEM: ("order_id", "product_id"),
    Entity.INVENTORY: (),
    Entity.SHIPMENT: ("order_id",),
    Entity.TRACKING_EVENT: ("order_id",),
    Entity.CUSTOMER: (),
}

#: The primary-key column of each table.
PRIMARY_KEY: dict[Entity, str] = {
    Entity.ORDER: "id",
    Entity.ORDER_ITEM: "id",
    Entity.INVENTORY: "product_id",
    Entity.SHIPMENT: "id",
    Entity.TRACKING_EVENT: "id",
    Entity.CUSTOMER: "id",
}


class SourceInfo(NamedTuple):
    """Where a change came from. Outbox events have no LSN or transaction id."""

    table: str
    lsn: int | None = None
    tx_id: int | None = None
    ts_ms: int | None = None


class ChangeEvent(NamedTuple):
    """One decoded row change.

    ``entity_id`` is the changed row's primary key; it is set even when the before
    image is only an identity image (a delete under ``REPLICA IDENTITY DEFAULT`` or
    ``USING INDEX`` carries real values only for the replica-identity columns;
    Debezium fills the others with type defaults: ``0``, ``""``, the epoch). Such a
    ``before`` is ``None`` and ``identity`` holds the ids it does carry (the primary
    key, and e.g. ``order_id`` under an index identity that includes it). A truncate
    has neither image and no ``entity_id``.
    """

    topic: str
    entity: Entity
    op: Op
    entity_id: int | None
    before: Row | None
    after: Row | None
    source: SourceInfo
    ts_ms: int | None = None
    event_id: str | None = None
    key: bytes | None = None
    form: Literal["envelope", "outbox"] = "envelope"
    #: Ids of an identity-only before image (column -> id); ``None`` otherwise.
    identity: Mapping[str, int] | None = None


class Heartbeat(NamedTuple):
    """A Debezium heartbeat (``{"ts_ms": ...}``): proof of life, no change. Not an error."""

    topic: str
    ts_ms: int


class Tombstone(NamedTuple):
    """A null-valued message (log compaction marker after a delete). Not an error."""

    topic: str
    key: bytes


@dataclass(frozen=True, slots=True)
class RowChange:
    """A committed row change before encoding (producer input; images are column -> value)."""

    entity: Entity
    op: Op
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None


class TrackingUpdate(BaseModel):
    """A tracking scan as mirrored into Redis Streams (one entry per ``event_id``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    order_id: int
    status: str
    location: str | None = None
    carrier: str | None = None
    occurred_at: datetime
    shipment_id: int | None = None

    @classmethod
    def from_row(cls, row: TrackingEventRow) -> TrackingUpdate:
        """The mirror record of a ``tracking_events`` row image (validated)."""
        return cls(
            event_id=row.event_id,
            order_id=row.order_id,
            status=row.status,
            location=row.location,
            carrier=row.carrier,
            occurred_at=row.occurred_at,
            shipment_id=row.shipment_id,
        )
