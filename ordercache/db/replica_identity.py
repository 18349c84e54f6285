"""Replica identity of the captured tables on PostgreSQL: what each needs, and a check.

What a Debezium delete (or re-keying update) carries about the old row depends on
the table's replica identity (docs/events.md#replica-identity; migration 0002 sets
it). :data:`REQUIRED` states, per captured table, the columns the old row must name
for the cache to be invalidated completely; :func:`replica_identity_problems` reads
the catalogue and names every table that falls short. Other databases have no
replica identity (and no CDC): the check returns nothing there.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

#: "full" (every column), else the columns the identity must include. A table that
#: needs only its primary key is satisfied by anything but NOTHING.
REQUIRED: Mapping[str, str | frozenset[str]] = MappingProxyType(
    {
        "orders": "full",  # the customer (history) and the last version (delete guard)
        "order_items": frozenset({"order_id"}),  # the order to invalidate; the message key
        "shipments": frozenset({"order_id"}),  # the message key (partition of the order)
        "tracking_events": frozenset({"order_id"}),  # the order to invalidate; the key
        "inventory": frozenset(),  # the primary key product_id
        "outbox": frozenset(),  # insert-only for the relay
    }
)

#: The statements that give the tables the identities migration 0002 sets (for a schema
#: made by ``create_schema`` rather than by the migrations).
IDENTITY_DDL: tuple[str, ...] = (
    "ALTER TABLE orders REPLICA IDENTITY FULL",
    "ALTER TABLE order_items REPLICA IDENTITY USING INDEX ux_order_items_order_id_id",
    "ALTER TABLE shipments REPLICA IDENTITY USING INDEX ux_shipments_order_id_id",
    "ALTER TABLE tracking_events REPLICA IDENTITY USING INDEX ux_tracking_events_order_id_id",
)

_IDENTITY = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}

_QUERY = text(
    """
    SELECT c.relname, c.relreplident,
           COALESCE(array_agg(a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}')
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_index x ON x.indrelid = c.oid
         AND ((c.relreplident = 'i' AND x.indisreplident)
              OR (c.relreplident = 'd' AND x.indisprimary))
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(x.indkey)
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
      AND c.relname = ANY(:tables)
    GROUP BY c.relname, c.relreplident
    """
)


def problems_of(
    found: Mapping[str, tuple[str, frozenset[str]]],
    required: Mapping[str, str | frozenset[str]] = REQUIRED,
) -> list[str]:
    """Pure part: ``found`` maps table -> (relreplident code, identity key columns)."""
    out: list[str] = []
    for table, need in required.items():
        if table not in found:
            continue  # a table that does not exist is the migrations' business
        code, columns = found[table]
        have = _IDENTITY.get(code, code)
        if code == "f":
            continue
        if need == "full":
            out.append(f"{table}: REPLICA IDENTITY {have}, needs FULL")
        elif code == "n":
            out.append(f"{table}: REPLICA IDENTITY NOTHING, needs at least DEFAULT")
        elif isinstance(need, frozenset) and not need <= columns:
            missing = ", ".join(sorted(need - columns))
            out.append(
                f"{table}: REPLICA IDENTITY {have} lacks {missing}"
                " (needs FULL or USING INDEX on a unique index with it)"
            )
    return out


def _code(raw: object) -> str:
    # pg_class.relreplident is a "char": asyncpg returns it as bytes.
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def replica_identity_problems(engine: AsyncEngine) -> list[str]:
    """One line per captured table whose replica identity is short of :data:`REQUIRED`.

    Empty on databases other than PostgreSQL. The lines name tables and identities
    only (no URL, no data).
    """
    if engine.dialect.name != "postgresql":
        return []
    async with engine.connect() as conn:
        rows = (await conn.execute(_QUERY, {"tables": list(REQUIRED)})).all()
    found = {str(name): (_code(code), frozenset(cols)) for name, code, cols in rows}
    return problems_of(found)
