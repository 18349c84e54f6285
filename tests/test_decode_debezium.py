"""decode() + plan() on genuine Debezium output (pure table tests, no services).

The fixtures under tests/data/debezium/ are records the Debezium 3.6 PostgreSQL
connector emitted with the shipped connector file (deploy/debezium/), captured
through the embedded engine (tests/debezium.py) for one scripted sequence of
statements under three replica-identity settings, and once with JSON schemas on.
Each file says what it holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ordercache.agents.decode import decode
from ordercache.agents.plan import plan, unresolved
from ordercache.cache.ops import CacheOp, Invalidate
from ordercache.cache.views import View
from ordercache.models.events import ChangeEvent, Heartbeat, Tombstone

DATA = Path(__file__).parent / "data" / "debezium"
VO, VH, VI = View.ORDER, View.HISTORY, View.INVENTORY

Outcome = tuple[str, str, list[CacheOp], str | None]


def outcomes(name: str) -> list[Outcome]:
    """(table, op, plan, unresolved) of every record of a fixture, in order."""
    doc = json.loads((DATA / f"{name}.json").read_text())
    out: list[Outcome] = []
    for rec in doc["records"]:
        key = None if rec["key"] is None else rec["key"].encode()
        value = None if rec["value"] is None else rec["value"].encode()
        headers = [(k, v.encode()) for k, v in rec["headers"]]
        event = decode(rec["dest"], key, value, headers)  # raises on anything it rejects
        if isinstance(event, Tombstone):
            out.append(("-", "tombstone", plan(event), unresolved(event)))
        elif isinstance(event, Heartbeat):
            out.append(("-", "heartbeat", plan(event), unresolved(event)))
        else:
            assert isinstance(event, ChangeEvent)
            table = f"outbox:{event.entity.value}" if event.form == "outbox" else event.entity.value
            out.append((table, event.op.value, plan(event), unresolved(event)))
    return out


def deletes(name: str) -> list[tuple[str, list[CacheOp], str | None]]:
    return [(t, p, u) for t, op, p, u in outcomes(name) if op == "d"]


FIXTURES = ["default-schemaless", "default-schemas", "schema-schemaless", "full-schemaless"]


@pytest.mark.parametrize("name", FIXTURES)
def test_every_genuine_record_decodes(name: str) -> None:
    got = outcomes(name)
    kinds = {(t, op) for t, op, _, _ in got}
    assert {("orders", "r"), ("inventory", "r"), ("customers", "r"), ("order_items", "c"),
            ("shipments", "c"), ("tracking_events", "c"), ("orders", "u"), ("customers", "u"),
            ("order_items", "d"), ("orders", "d"), ("shipments", "d"), ("tracking_events", "d"),
            ("inventory", "d"), ("inventory", "t"), ("outbox:orders", "u"), ("-", "tombstone"),
            ("-", "heartbeat")} <= kinds  # fmt: skip


def test_schemas_on_and_off_decode_to_the_same_plans() -> None:
    assert outcomes("default-schemas") == outcomes("default-schemaless")


@pytest.mark.parametrize("name", FIXTURES)
def test_snapshot_truncate_outbox_and_customers(name: str) -> None:
    got = outcomes(name)
    assert ("orders", "r", [Invalidate(VO, 1, 1), Invalidate(VH, 1)], None) in got
    assert ("customers", "u", [Invalidate(VH, 1, 2)], None) in got
    assert ("inventory", "t", [], "truncate") in got
    # the outbox router's event: header id, aggregate type and event type, JSON payload
    assert ("outbox:orders", "u", [Invalidate(VO, 1, 2), Invalidate(VH, 1)], None) in got


def test_default_identity_deletes_are_identity_images_never_rows() -> None:
    """Debezium fills the non-key columns with 0, "" and the epoch: recognised, not validated."""
    assert deletes("default-schemaless") == [
        ("order_items", [], "parent_unknown"),  # the lone item delete: no order_id
        ("orders", [Invalidate(VO, 1, None)], "history_unknown"),
        ("order_items", [], "parent_unknown"),  # cascaded
        ("shipments", [], None),
        ("tracking_events", [], "parent_unknown"),
        ("inventory", [Invalidate(VI, 2, None)], None),
    ]


def test_schema_identities_name_every_parent() -> None:
    assert deletes("schema-schemaless") == [
        ("order_items", [Invalidate(VO, 1)], None),
        ("orders", [Invalidate(VO, 1, 3), Invalidate(VH, 1)], None),
        ("order_items", [Invalidate(VO, 1)], None),
        ("shipments", [], None),
        ("tracking_events", [Invalidate(VO, 1)], None),
        ("inventory", [Invalidate(VI, 2, None)], None),
    ]


def test_full_identity_carries_versions_everywhere() -> None:
    assert deletes("full-schemaless") == [
        ("order_items", [Invalidate(VO, 1)], None),
        ("orders", [Invalidate(VO, 1, 3), Invalidate(VH, 1)], None),
        ("order_items", [Invalidate(VO, 1)], None),
        ("shipments", [], None),
        ("tracking_events", [Invalidate(VO, 1)], None),
        ("inventory", [Invalidate(VI, 2, 2)], None),
    ]


def _keys(name: str) -> list[tuple[str, Any]]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    return [(r["dest"], r["key"]) for r in doc["records"] if r["dest"] == "orders.changes"]


def test_message_keys_keep_an_order_on_one_partition_under_the_schema_identities() -> None:
    # Every record of order 1 (its row, items, shipment, outbox event, tombstones) has key "1".
    assert {k for _, k in _keys("schema-schemaless")} == {"1"}
    # Under DEFAULT the child deletes and their tombstones carry the placeholder 0.
    assert "0" in {k for _, k in _keys("default-schemaless")}


def test_identity_image_with_a_bad_key_is_still_an_error() -> None:
    from ordercache.errors import DecodeError

    value = json.dumps({"before": {"id": 0, "order_id": 0, "version": 0}, "after": None,
                        "op": "d", "source": {"table": "order_items"}}).encode()  # fmt: skip
    with pytest.raises(DecodeError) as info:
        decode("orders.changes", b"0", value)
    assert info.value.reason == "invalid_id"
