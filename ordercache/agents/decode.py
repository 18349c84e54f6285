"""Raw Kafka message -> :class:`ChangeEvent` or :class:`Tombstone`, or a DecodeError.

One function, :func:`decode`, accepts both change-event forms (docs/events.md):

* the **Debezium envelope** of the PostgreSQL connector, ``{"before", "after", "op",
  "source": {"table", "lsn", "txId", "ts_ms", ...}, "ts_ms"}``, optionally wrapped
  in ``{"schema", "payload"}`` (JSON converter with schemas enabled);
* the **outbox** form of the Debezium outbox event router: key = aggregate id,
  header ``id`` = event id, value = the row image, often as a JSON-encoded string.

A null value is a :class:`Tombstone`; a Debezium heartbeat (``{"ts_ms": N}``) is a
:class:`Heartbeat`. A delete's before image that is only the replica identity
(Debezium's type-default placeholders in the other columns) is recognised as such and
never validated as a row (:func:`_before`). Anything else raises
:class:`~ordercache.errors.DecodeError` with a short ``reason`` (see
:data:`REASONS`); the agent sends the message to the dead-letter topic and goes on.

Hot path (runs per event): one ``orjson.loads``, hand-checked envelope fields and
one pydantic validation per row image; no model for the envelope itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from pydantic import ValidationError

from ordercache.config.settings import Settings
from ordercache.errors import DecodeError
from ordercache.models.events import (
    MAX_ID,
    PRIMARY_KEY,
    REQUIRED_REFS,
    ROW_MODELS,
    ChangeEvent,
    Entity,
    Heartbeat,
    Op,
    Row,
    SourceInfo,
    Tombstone,
)

#: Every reason code decode() raises.
REASONS = frozenset(
    {
        "oversized",  # value larger than DecodeConfig.max_bytes (checked before parsing)
        "invalid_json",  # not JSON (also: an outbox payload string that is not JSON)
        "schema_mismatch",  # JSON, but not an envelope/outbox event of the expected shape
        "unknown_op",  # op is not one of c, u, d, r, t
        "unknown_table",  # source.table / aggregate type / topic maps to no captured table
        "missing_key",  # null key where one is needed (tombstone, outbox)
        "invalid_id",  # an id column is not a positive 64-bit integer
    }
)

#: Kafka headers as aiokafka delivers them (a header value may be null).
Headers = Sequence[tuple[str, bytes | None]]

#: Default largest accepted value, bytes.
DEFAULT_MAX_BYTES = 1 << 20

_OPS: dict[str, Op] = {op.value: op for op in Op}
_TABLES: dict[str, Entity] = {e.value: e for e in Entity}
_ID_FIELDS = frozenset({"id", "order_id", "customer_id", "product_id", "shipment_id"})
_ROW_KEYS = frozenset({"id", "product_id"})
_OUTBOX_TOPIC_PREFIX = "outbox.event."
#: pydantic error types whose message is a validator's own text (may quote the input).
_FREE_TEXT_ERRORS = frozenset({"value_error", "assertion_error"})


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


#: Outbox aggregate types (compared lower-case, letters and digits only).
AGGREGATE_TYPES: Mapping[str, Entity] = MappingProxyType(
    {
        "order": Entity.ORDER,
        "orders": Entity.ORDER,
        "orderitem": Entity.ORDER_ITEM,
        "orderitems": Entity.ORDER_ITEM,
        "inventory": Entity.INVENTORY,
        "productinventory": Entity.INVENTORY,
        "shipment": Entity.SHIPMENT,
        "shipments": Entity.SHIPMENT,
        "trackingevent": Entity.TRACKING_EVENT,
        "trackingevents": Entity.TRACKING_EVENT,
        "trackingupdate": Entity.TRACKING_EVENT,
        "tracking": Entity.TRACKING_EVENT,
        "customer": Entity.CUSTOMER,
        "customers": Entity.CUSTOMER,
    }
)


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    """What decode() needs besides the message: the size limit and the topic map.

    ``topic_tables`` gives the table of an outbox event that names no aggregate type
    (neither a header nor an ``outbox.event.<type>`` topic).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    topic_tables: Mapping[str, Entity] = field(
        default_factory=lambda: {
            "orders.changes": Entity.ORDER,
            "inventory.changes": Entity.INVENTORY,
            "tracking.updates": Entity.TRACKING_EVENT,
        }
    )

    @classmethod
    def from_settings(cls, settings: Settings, max_bytes: int = DEFAULT_MAX_BYTES) -> DecodeConfig:
        return cls(
            max_bytes=max_bytes,
            topic_tables={
                settings.topic_orders: Entity.ORDER,
                settings.topic_inventory: Entity.INVENTORY,
                settings.topic_tracking: Entity.TRACKING_EVENT,
            },
        )


DEFAULT_CONFIG = DecodeConfig()


def decode(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers = (),
    config: DecodeConfig = DEFAULT_CONFIG,
) -> ChangeEvent | Tombstone | Heartbeat:
    """Decode one Kafka message. Raises :class:`DecodeError` (``reason`` in REASONS).

    One message is one change (Debezium never batches rows into a message, and
    the tombstone after a delete is a message of its own), so this returns one
    object rather than a list.
    """
    if value is None:
        return _tombstone(topic, key)
    if len(value) > config.max_bytes:
        raise DecodeError("oversized", f"{len(value)} bytes > limit {config.max_bytes}")
    doc = _loads(value)
    if type(doc) is dict and "schema" in doc and "payload" in doc and len(doc) == 2:
        doc = doc["payload"]  # JSON converter with schemas.enable=true
        if doc is None:
            return _tombstone(topic, key)
    if type(doc) is dict and len(doc) == 1 and type(doc.get("ts_ms")) is int:
        return Heartbeat(topic, doc["ts_ms"])  # routed here by a misconfigured connector
    if type(doc) is dict and "op" in doc and ("source" in doc or "after" in doc or "before" in doc):
        # (a truncate event has neither before nor after, only op and source)
        return _envelope(topic, key, doc, headers)
    hdrs = _header_map(headers)
    if "id" in hdrs:
        return _outbox(topic, key, doc, hdrs, config)
    raise DecodeError(
        "schema_mismatch",
        "neither a Debezium envelope (op, source/before/after) nor an outbox event (header 'id')",
    )


# --------------------------------------------------------------------------- envelope
def _envelope(topic: str, key: bytes | None, doc: dict[str, Any], headers: Headers) -> ChangeEvent:
    op = _OPS.get(doc["op"]) if isinstance(doc["op"], str) else None
    if op is None:
        raise DecodeError("unknown_op", "op: expected one of c, u, d, r, t")
    source = doc.get("source")
    if type(source) is not dict:
        raise DecodeError("schema_mismatch", "envelope without a source block")
    table = source.get("table")
    entity = _TABLES.get(table) if isinstance(table, str) else None
    if entity is None:
        raise DecodeError("unknown_table", "source.table: not a captured table")
    src = SourceInfo(
        entity.value,
        _opt_int(source.get("lsn"), "source.lsn"),
        _opt_int(source.get("txId"), "source.txId"),
        _opt_int(source.get("ts_ms"), "source.ts_ms"),
    )
    ts_ms = _opt_int(doc.get("ts_ms"), "ts_ms")
    raw_id = _header_map(headers).get("id") if headers else None
    event_id = None if raw_id is None else _header_text(raw_id)
    raw_before, raw_after = doc.get("before"), doc.get("after")

    if op is Op.TRUNCATE:
        return ChangeEvent(topic, entity, op, None, None, None, src, ts_ms, event_id, key)
    if op is Op.DELETE:
        if raw_before is None:
            raise DecodeError("schema_mismatch", f"{entity.value}: delete without a before image")
        before, deleted_id, ident = _before(entity, raw_before)
        return ChangeEvent(
            topic, entity, op, deleted_id, before, None, src, ts_ms, event_id, key,
            identity=ident,
        )  # fmt: skip
    if raw_after is None:
        raise DecodeError("schema_mismatch", f"{entity.value}: op {op.value} without after image")
    after = _row(entity, raw_after, "after")
    before, ident = None, None
    if raw_before is not None:
        before, _, ident = _before(entity, raw_before)
    entity_id: int = getattr(after, PRIMARY_KEY[entity])
    return ChangeEvent(
        topic, entity, op, entity_id, before, after, src, ts_ms, event_id, key, identity=ident
    )


def _real_id(value: object) -> bool:
    return type(value) is int and 0 < value <= MAX_ID


def _before(entity: Entity, raw: object) -> tuple[Row | None, int, dict[str, int] | None]:
    """``(row, primary key, None)``, or ``(None, primary key, ids)`` for an identity image.

    PostgreSQL logs only the replica-identity columns of a deleted (or re-keyed) row
    unless the table is ``REPLICA IDENTITY FULL``: the primary key under ``DEFAULT``,
    the index columns under ``USING INDEX``. Debezium fills every other NOT NULL
    column with its type's default (``0``, ``""``, ``1970-01-01T00:00:00Z``) and the
    nullable ones with null. Such an image is not a row: every row of this schema has
    ``version >= 1`` and real ids in its NOT NULL references, so an image with a
    version or a required reference that is not a real value is an identity image.
    Its ids that are real (the primary key, and any reference the identity covers)
    are returned; nothing else of it is trusted.
    """
    if type(raw) is not dict:
        raise DecodeError("schema_mismatch", f"{entity.value}.before: expected an object")
    pk = PRIMARY_KEY[entity]
    refs = REQUIRED_REFS[entity]
    version = raw.get("version")
    full = type(version) is int and version > 0 and all(_real_id(raw.get(c)) for c in refs)
    if not full:
        key = _id(raw.get(pk), f"{entity.value}.before.{pk}")
        ids = {c: raw[c] for c in refs if _real_id(raw.get(c))}
        ids[pk] = key
        return None, key, ids
    row = _row(entity, raw, "before")
    return row, getattr(row, pk), None


# --------------------------------------------------------------------------- outbox
def _outbox(
    topic: str, key: bytes | None, doc: Any, headers: dict[str, bytes | None], config: DecodeConfig
) -> ChangeEvent:
    if key is None:
        raise DecodeError("missing_key", "outbox event without an aggregate id key")
    event_id = _header_text(headers["id"])
    extras: dict[str, Any] = {}
    if type(doc) is dict and "payload" in doc and not (_ROW_KEYS & doc.keys()):
        # additional fields placed in the envelope: {"payload": ..., "<field>": ...}
        extras = doc
        doc = doc["payload"]
    if isinstance(doc, str):
        doc = _loads(doc)  # the router's default: the payload column as a JSON string
    entity = _outbox_entity(topic, headers, extras, config)
    op = _outbox_op(headers, extras)
    if op is Op.TRUNCATE:
        raise DecodeError("unknown_op", "truncate is not an outbox operation")
    row = _row(entity, doc, "payload")
    entity_id: int = getattr(row, PRIMARY_KEY[entity])
    before, after = (row, None) if op is Op.DELETE else (None, row)
    src = SourceInfo(table=entity.value)
    return ChangeEvent(
        topic, entity, op, entity_id, before, after, src, None, event_id, key, "outbox"
    )


def _outbox_entity(
    topic: str, headers: dict[str, bytes | None], extras: dict[str, Any], config: DecodeConfig
) -> Entity:
    raw = headers.get("aggregatetype")
    name = _header_text(raw) if raw is not None else extras.get("aggregatetype")
    if name is None and topic.startswith(_OUTBOX_TOPIC_PREFIX):
        name = topic.removeprefix(_OUTBOX_TOPIC_PREFIX)
    if name is None:
        entity = config.topic_tables.get(topic)
        if entity is None:
            raise DecodeError(
                "unknown_table", "aggregatetype: none in the headers, the payload or the topic name"
            )
        return entity
    entity = AGGREGATE_TYPES.get(_norm(str(name)))
    if entity is None:
        raise DecodeError("unknown_table", "aggregatetype: not a captured table")
    return entity


def _outbox_op(headers: dict[str, bytes | None], extras: dict[str, Any]) -> Op:
    raw = headers.get("op")
    if raw is not None:
        op = _OPS.get(_header_text(raw))
        if op is None:
            raise DecodeError("unknown_op", "header op")
        return op
    kind = headers.get("eventtype")
    text = _header_text(kind) if kind is not None else extras.get("eventtype", extras.get("type"))
    if isinstance(text, str):
        lowered = text.lower()
        if lowered.endswith(("deleted", "removed")):
            return Op.DELETE
        if lowered.endswith("created"):
            return Op.CREATE
    return Op.UPDATE  # an outbox event carries the aggregate's current state


# --------------------------------------------------------------------------- helpers
def _tombstone(topic: str, key: bytes | None) -> Tombstone:
    if key is None:
        raise DecodeError("missing_key", "null value and null key")
    return Tombstone(topic, key)


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson's message is fixed text; the position says where, never what.
        raise DecodeError(
            "invalid_json", f"{exc.msg[:80]} at line {exc.lineno} column {exc.colno}"
        ) from None


def _row(entity: Entity, raw: object, where: str) -> Row:
    if type(raw) is not dict:
        raise DecodeError("schema_mismatch", f"{entity.value}.{where}: expected an object")
    try:
        return ROW_MODELS[entity].model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        reason = (
            "invalid_id"
            if err["loc"] and err["loc"][0] in _ID_FIELDS and err["type"] != "missing"
            else "schema_mismatch"
        )
        # The rule, never the value: pydantic's own messages are templates of the
        # constraint; a validator's free text (value_error) might quote its input.
        rule = err["type"]
        text = "invalid value" if rule in _FREE_TEXT_ERRORS else err["msg"]
        raise DecodeError(reason, f"{entity.value}.{where}.{loc}: {text} ({rule})") from None


def _id(raw: object, where: str) -> int:
    if type(raw) is not int or not 0 < raw <= MAX_ID:
        raise DecodeError("invalid_id", f"{where}: expected a positive 64-bit integer")
    return raw


def _opt_int(raw: object, where: str) -> int | None:
    if raw is None or type(raw) is int:
        return raw
    raise DecodeError("schema_mismatch", f"{where}: expected an integer")


def _header_map(headers: Headers) -> dict[str, bytes | None]:
    """Header names lower-cased (first occurrence wins), ``_``/``-`` dropped."""
    out: dict[str, bytes | None] = {}
    for name, raw in headers:
        out.setdefault(name.lower().replace("_", "").replace("-", ""), raw)
    return out


def _header_text(raw: bytes | None) -> str:
    """A header value as text; one pair of JSON quotes is removed if present."""
    if raw is None:
        raise DecodeError("schema_mismatch", "header without a value")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("schema_mismatch", "header is not UTF-8") from None
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    if not text or len(text) > 200:
        raise DecodeError("schema_mismatch", "header value empty or longer than 200 characters")
    return text


def is_tombstone(event: object) -> bool | str:
    """The outcome of a record that plans nothing and is no error, else False:
    ``"tombstone"`` (null value) or ``"heartbeat"`` (a Debezium heartbeat)."""
    if isinstance(event, Tombstone):
        return "tombstone"
    if isinstance(event, Heartbeat):
        return "heartbeat"
    return False
