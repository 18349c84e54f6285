"""decode(): both event forms, every op, tombstones, and every error reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ordercache.agents.decode import REASONS, DecodeConfig, decode
from ordercache.errors import DecodeError
from ordercache.models.events import (
    ChangeEvent,
    Entity,
    InventoryRow,
    Op,
    OrderItemRow,
    OrderRow,
    ShipmentRow,
    Tombstone,
    TrackingEventRow,
    parse_timestamp,
)
from tests.conftest import make_settings

T0 = "2024-05-01T10:11:12.123456Z"
T0_DT = datetime(2024, 5, 1, 10, 11, 12, 123456, tzinfo=UTC)

ROWS: dict[str, dict[str, Any]] = {
    "orders": {
        "id": 11,
        "customer_id": 7,
        "status": "paid",
        "total_cents": 1299,
        "currency": "EUR",
        "created_at": T0,
        "updated_at": T0,
        "version": 3,
    },
    "order_items": {
        "id": 21,
        "order_id": 11,
        "product_id": 5,
        "quantity": 2,
        "unit_price_cents": 600,
        "version": 1,
    },
    "inventory": {
        "product_id": 5,
        "available": 40,
        "reserved": 2,
        "version": 9,
        "updated_at": T0,
    },
    "shipments": {
        "id": 31,
        "order_id": 11,
        "carrier": "DHL",
        "tracking_number": "JD0001",
        "status": "label_created",
        "created_at": T0,
        "updated_at": T0,
        "version": 1,
    },
    "tracking_events": {
        "id": 41,
        "event_id": "evt-41",
        "order_id": 11,
        "shipment_id": 31,
        "status": "in_transit",
        "location": "Leipzig",
        "carrier": "DHL",
        "occurred_at": T0,
        "version": 1,
    },
}
MODELS = {
    "orders": OrderRow,
    "order_items": OrderItemRow,
    "inventory": InventoryRow,
    "shipments": ShipmentRow,
    "tracking_events": TrackingEventRow,
}
PK = {"orders": 11, "order_items": 21, "inventory": 5, "shipments": 31, "tracking_events": 41}


def envelope(
    table: str | None,
    op: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "before": before,
        "after": after,
        "source": {
            "version": "2.7.0.Final",
            "connector": "postgresql",
            "name": "oc",
            "ts_ms": 1714558272000,
            "snapshot": "false",
            "db": "orders",
            "schema": "public",
            "table": table,
            "txId": 777,
            "lsn": 24023928,
            "xmin": None,
        },
        "op": op,
        "ts_ms": 1714558272123,
        "transaction": None,
    }
    doc.update(extra)
    return doc


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def with_row(table: str, **changes: Any) -> dict[str, Any]:
    return {**ROWS[table], **changes}


# --------------------------------------------------------------------------- envelope
@pytest.mark.parametrize("table", list(ROWS))
@pytest.mark.parametrize("op", ["c", "u", "r"])
@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "schema-wrapped"])
def test_envelope_upserts(table: str, op: str, wrapped: bool) -> None:
    doc = envelope(table, op, after=ROWS[table])
    if wrapped:
        doc = {"schema": {"type": "struct", "fields": [], "optional": False}, "payload": doc}
    ev = decode("orders.changes", b'{"id":11}', dumps(doc), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.entity is Entity(table)
    assert ev.op is Op(op)
    assert ev.entity_id == PK[table]
    assert ev.before is None
    assert ev.after == MODELS[table].model_validate(ROWS[table])
    assert ev.source.table == table
    assert (ev.source.lsn, ev.source.tx_id, ev.source.ts_ms) == (24023928, 777, 1714558272000)
    assert ev.ts_ms == 1714558272123
    assert ev.key == b'{"id":11}'
    assert ev.form == "envelope"
    assert ev.event_id is None


def test_envelope_update_with_full_before_image() -> None:
    before = with_row("orders", customer_id=6, version=2)
    ev = decode("t", b"11", dumps(envelope("orders", "u", before, ROWS["orders"])), [])
    assert isinstance(ev, ChangeEvent)
    assert isinstance(ev.before, OrderRow)
    assert ev.before.customer_id == 6
    assert isinstance(ev.after, OrderRow)
    assert ev.after.version == 3


@pytest.mark.parametrize("table", list(ROWS))
def test_delete_with_full_before_image(table: str) -> None:
    ev = decode("t", b"k", dumps(envelope(table, "d", before=ROWS[table])), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.op is Op.DELETE
    assert ev.after is None
    assert ev.before == MODELS[table].model_validate(ROWS[table])
    assert ev.entity_id == PK[table]


@pytest.mark.parametrize("table", list(ROWS))
def test_delete_with_key_only_before_image(table: str) -> None:
    """REPLICA IDENTITY DEFAULT: only the key columns are set in ``before``."""
    pk = "product_id" if table == "inventory" else "id"
    before = {k: (v if k == pk else None) for k, v in ROWS[table].items()}
    ev = decode("t", b"k", dumps(envelope(table, "d", before=before)), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.before is None
    assert ev.entity_id == PK[table]


def test_delete_then_tombstone() -> None:
    ev = decode("orders.changes", b"11", dumps(envelope("orders", "d", ROWS["orders"])), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.op is Op.DELETE
    tomb = decode("orders.changes", b"11", None, [])
    assert tomb == Tombstone("orders.changes", b"11")


def test_schema_wrapped_null_payload_is_a_tombstone() -> None:
    value = dumps({"schema": {"type": "struct"}, "payload": None})
    assert decode("t", b"11", value, []) == Tombstone("t", b"11")


@pytest.mark.parametrize("with_images", [False, True])
def test_truncate(with_images: bool) -> None:
    doc = envelope("inventory", "t")
    if not with_images:  # what Debezium emits: no before/after at all
        del doc["before"], doc["after"]
    ev = decode("t", None, dumps(doc), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.op is Op.TRUNCATE
    assert ev.entity is Entity.INVENTORY
    assert (ev.entity_id, ev.before, ev.after) == (None, None, None)


def test_envelope_event_id_header_is_kept() -> None:
    value = dumps(envelope("orders", "c", after=ROWS["orders"]))
    ev = decode("t", b"11", value, [("id", b"abc-1")])
    assert isinstance(ev, ChangeEvent)
    assert ev.event_id == "abc-1"
    assert ev.form == "envelope"


def test_envelope_without_id_header_has_no_event_id() -> None:
    value = dumps(envelope("orders", "c", after=ROWS["orders"]))
    ev = decode("t", b"11", value, [("traceparent", b"00-1-2-01"), ("id", None)])
    assert isinstance(ev, ChangeEvent)
    assert ev.event_id is None


def test_unknown_columns_are_ignored() -> None:
    after = with_row("orders", coupon_code="X1", shipping_notes=None)
    ev = decode("t", b"11", dumps(envelope("orders", "c", after=after)), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.entity_id == 11


def test_null_key_is_accepted_for_envelopes() -> None:
    ev = decode("t", None, dumps(envelope("orders", "c", after=ROWS["orders"])), [])
    assert isinstance(ev, ChangeEvent)
    assert ev.key is None


# --------------------------------------------------------------------------- timestamps
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T10:11:12.123456Z", T0_DT),
        ("2024-05-01T12:11:12.123456+02:00", T0_DT),
        ("2024-05-01T10:11:12.123456", T0_DT),  # naive: UTC
        ("2024-05-01T10:11:12.1Z", datetime(2024, 5, 1, 10, 11, 12, 100000, tzinfo=UTC)),
        (1714558272123, datetime(2024, 5, 1, 10, 11, 12, 123000, tzinfo=UTC)),  # millis
        (1714558272123456, T0_DT),  # micros
        (1714558272123456789, T0_DT),  # nanos (truncated to micros)
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamps(raw: object, expected: datetime) -> None:
    assert parse_timestamp(raw) == expected
    ev = decode(
        "t",
        b"5",
        dumps(envelope("inventory", "u", after=with_row("inventory", updated_at=raw))),
        [],
    )
    assert isinstance(ev, ChangeEvent)
    assert isinstance(ev.after, InventoryRow)
    assert ev.after.updated_at == expected
    assert ev.after.updated_at.tzinfo is not None


# --------------------------------------------------------------------------- outbox
ORDER_PAYLOAD = ROWS["orders"]


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (dumps(orjson.dumps(ORDER_PAYLOAD).decode()), "json-string payload (router default)"),
        (dumps(ORDER_PAYLOAD), "expanded payload (table.expand.json.payload)"),
        (
            dumps({"schema": {"type": "string"}, "payload": orjson.dumps(ORDER_PAYLOAD).decode()}),
            "schema-wrapped string",
        ),
        (
            dumps({"payload": ORDER_PAYLOAD, "eventType": "OrderUpdated"}),
            "additional fields in the envelope",
        ),
    ],
)
def test_outbox_forms(value: bytes, label: str) -> None:
    headers = [("id", b"4d47e190-0402-4048-bc2c-89dd54343cdc"), ("aggregatetype", b"Order")]
    ev = decode("outbox.event.Order", b'"11"', value, headers)
    assert isinstance(ev, ChangeEvent), label
    assert ev.form == "outbox"
    assert ev.entity is Entity.ORDER
    assert ev.op is Op.UPDATE
    assert ev.entity_id == 11
    assert ev.after == OrderRow.model_validate(ORDER_PAYLOAD)
    assert ev.before is None
    assert ev.event_id == "4d47e190-0402-4048-bc2c-89dd54343cdc"
    assert ev.key == b'"11"'
    assert ev.source.lsn is None


@pytest.mark.parametrize(
    ("topic", "headers", "entity"),
    [
        ("whatever", [("aggregatetype", b"order_items")], Entity.ORDER_ITEM),
        ("whatever", [("aggregateType", b'"OrderItem"')], Entity.ORDER_ITEM),
        ("outbox.event.inventory", [], Entity.INVENTORY),
        ("outbox.event.TrackingEvent", [], Entity.TRACKING_EVENT),
        ("outbox.event.shipments", [], Entity.SHIPMENT),
        ("orders.changes", [], Entity.ORDER),
        ("inventory.changes", [], Entity.INVENTORY),
        ("tracking.updates", [], Entity.TRACKING_EVENT),
    ],
)
def test_outbox_table_mapping(topic: str, headers: list[tuple[str, bytes]], entity: Entity) -> None:
    value = dumps(ROWS[entity.value])
    ev = decode(topic, b"1", value, [("id", b"e1"), *headers])
    assert isinstance(ev, ChangeEvent)
    assert ev.entity is entity
    assert ev.entity_id == PK[entity.value]


def test_outbox_topic_map_comes_from_settings() -> None:
    cfg = DecodeConfig.from_settings(make_settings(topic_inventory="stock.v2"))
    ev = decode("stock.v2", b"5", dumps(ROWS["inventory"]), [("id", b"e1")], cfg)
    assert isinstance(ev, ChangeEvent)
    assert ev.entity is Entity.INVENTORY


@pytest.mark.parametrize(
    ("headers", "op"),
    [
        ([("op", b"d")], Op.DELETE),
        ([("op", b"c")], Op.CREATE),
        ([("eventType", b"OrderCreated")], Op.CREATE),
        ([("eventType", b"order.deleted")], Op.DELETE),
        ([("eventType", b"OrderRemoved")], Op.DELETE),
        ([("eventType", b"OrderShipped")], Op.UPDATE),
        ([], Op.UPDATE),
    ],
)
def test_outbox_op(headers: list[tuple[str, bytes]], op: Op) -> None:
    ev = decode("orders.changes", b"11", dumps(ORDER_PAYLOAD), [("id", b"e1"), *headers])
    assert isinstance(ev, ChangeEvent)
    assert ev.op is op
    if op is Op.DELETE:
        assert (ev.before, ev.after) == (OrderRow.model_validate(ORDER_PAYLOAD), None)
    else:
        assert (ev.before, ev.after) == (None, OrderRow.model_validate(ORDER_PAYLOAD))


def test_outbox_tombstone() -> None:
    """route.tombstone.on.empty.payload: a null value under the aggregate id."""
    assert decode("outbox.event.Order", b'"11"', None, [("id", b"e1")]) == Tombstone(
        "outbox.event.Order", b'"11"'
    )


# --------------------------------------------------------------------------- errors
def bad_id_envelope(field: str, value: Any) -> bytes:
    table = "inventory" if field == "product_id" else "order_items"
    return dumps(envelope(table, "c", after=with_row(table, **{field: value})))


ERROR_CASES: list[tuple[str, str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
    ("oversized", "t", b"1", b"x" * 2001, []),
    ("invalid_json", "t", b"1", b"{not json", []),
    ("invalid_json", "t", b"1", b"", []),
    ("invalid_json", "t", b"1", b"\xff\xfe", []),
    ("schema_mismatch", "t", b"1", b"[1,2,3]", []),
    ("schema_mismatch", "t", b"1", b'"just a string"', []),
    ("schema_mismatch", "t", b"1", b'{"hello": "world"}', []),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(
            {
                k: v
                for k, v in envelope("orders", "c", after=ROWS["orders"]).items()
                if k != "source"
            }
        ),
        [],
    ),
    ("schema_mismatch", "t", b"1", dumps(envelope("orders", "c", after=None)), []),
    ("schema_mismatch", "t", b"1", dumps(envelope("orders", "u", after=[1, 2])), []),
    ("schema_mismatch", "t", b"1", dumps(envelope("orders", "d", before=None)), []),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(envelope("orders", "c", after=with_row("orders", status=None))),
        [],
    ),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(envelope("orders", "c", after=with_row("orders", version="3"))),
        [],
    ),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(envelope("orders", "c", after=with_row("orders", created_at="yesterday"))),
        [],
    ),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(envelope("orders", "c", after=with_row("orders", created_at=1.5e29))),
        [],
    ),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(envelope("orders", "c", after=with_row("orders", created_at=[1]))),
        [],
    ),
    ("schema_mismatch", "t", b"1", dumps(envelope("orders", "c", after={"id": 11})), []),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps(envelope("orders", "c", after=ROWS["orders"], ts_ms="now")),
        [],
    ),
    (
        "schema_mismatch",
        "t",
        b"1",
        dumps({**envelope("orders", "c", after=ROWS["orders"]), "source": "pg"}),
        [],
    ),
    ("unknown_op", "t", b"1", dumps(envelope("orders", "x", after=ROWS["orders"])), []),
    ("unknown_op", "t", b"1", dumps(envelope("orders", "m", after=ROWS["orders"])), []),
    ("unknown_op", "t", b"1", dumps(envelope("orders", 1, after=ROWS["orders"])), []),
    ("unknown_op", "orders.changes", b"1", dumps(ORDER_PAYLOAD), [("id", b"e"), ("op", b"t")]),
    ("unknown_op", "orders.changes", b"1", dumps(ORDER_PAYLOAD), [("id", b"e"), ("op", b"zz")]),
    ("unknown_table", "t", b"1", dumps(envelope("products", "c", after={"id": 1})), []),
    ("unknown_table", "t", b"1", dumps(envelope(None, "c", after=ROWS["orders"])), []),
    ("unknown_table", "somewhere", b"1", dumps(ORDER_PAYLOAD), [("id", b"e")]),
    (
        "unknown_table",
        "t",
        b"1",
        dumps(ORDER_PAYLOAD),
        [("id", b"e"), ("aggregatetype", b"Invoice")],
    ),
    ("missing_key", "t", None, None, []),
    ("missing_key", "orders.changes", None, dumps(ORDER_PAYLOAD), [("id", b"e")]),
    ("invalid_id", "t", b"1", bad_id_envelope("order_id", 0), []),
    ("invalid_id", "t", b"1", bad_id_envelope("order_id", -4), []),
    ("invalid_id", "t", b"1", bad_id_envelope("order_id", 2**64 - 1), []),
    ("invalid_id", "t", b"1", bad_id_envelope("order_id", "11"), []),
    ("invalid_id", "t", b"1", bad_id_envelope("order_id", True), []),
    ("invalid_id", "t", b"1", bad_id_envelope("order_id", 1.5), []),
    ("invalid_id", "t", b"1", bad_id_envelope("product_id", None), []),
    ("invalid_id", "t", b"1", bad_id_envelope("id", 0), []),
    (
        "invalid_id",
        "t",
        b"1",
        dumps(envelope("orders", "d", before={"id": -1, "status": None})),
        [],
    ),
    (
        "invalid_id",
        "t",
        b"1",
        dumps(envelope("orders", "d", before={"id": "1", "status": None})),
        [],
    ),
    ("schema_mismatch", "orders.changes", b"1", dumps(ORDER_PAYLOAD), [("id", b"")]),
    ("schema_mismatch", "orders.changes", b"1", dumps(ORDER_PAYLOAD), [("id", b"\xff")]),
    ("schema_mismatch", "orders.changes", b"1", dumps(ORDER_PAYLOAD), [("id", None)]),
    ("invalid_json", "orders.changes", b"1", dumps("{broken"), [("id", b"e")]),
]


@pytest.mark.parametrize(
    ("reason", "topic", "key", "value", "headers"),
    ERROR_CASES,
    ids=[f"{i}-{c[0]}" for i, c in enumerate(ERROR_CASES)],
)
def test_decode_errors(
    reason: str,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
) -> None:
    cfg = DecodeConfig(max_bytes=2000)
    with pytest.raises(DecodeError) as info:
        decode(topic, key, value, headers, cfg)
    assert info.value.reason == reason, info.value
    assert info.value.reason in REASONS


def test_every_reason_is_tested() -> None:
    assert {c[0] for c in ERROR_CASES} == REASONS


def test_oversized_is_checked_before_parsing() -> None:
    cfg = DecodeConfig(max_bytes=10)
    with pytest.raises(DecodeError) as info:
        decode("t", b"1", b"{" * 11, [], cfg)  # would be invalid_json if parsed
    assert info.value.reason == "oversized"
    # exactly at the limit is parsed
    with pytest.raises(DecodeError) as info:
        decode("t", b"1", b"{" * 10, [], cfg)
    assert info.value.reason == "invalid_json"


def test_error_detail_does_not_echo_values() -> None:
    secret = "hunter2-password"
    value = dumps(envelope("orders", "c", after=with_row("orders", total_cents=secret)))
    with pytest.raises(DecodeError) as info:
        decode("t", b"1", value, [])
    assert info.value.reason == "schema_mismatch"
    assert "orders.after.total_cents" in info.value.detail
    assert secret not in str(info.value)
