"""CDC: replica identities for the captured tables; the transactional outbox table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Replica identity decides what PostgreSQL writes to the WAL about the old row of an
UPDATE or DELETE, and so what a Debezium ``before`` image holds. Under ``DEFAULT``
only the primary key is real; Debezium fills the other NOT NULL columns with type
defaults (0, "", the epoch). Each captured table gets the identity the cache needs:

* ``orders``: FULL. A delete must name the customer (whose history lists the order)
  and the last version (the guard that rejects a fill of the deleted row); an update
  that moves an order must name the old customer.
* ``order_items``, ``shipments``, ``tracking_events``: USING INDEX on a unique
  ``(order_id, id)``. A delete must name its order (the view to invalidate, and the
  message key ``order_id`` that keeps every change of one order on one partition);
  the rest of the old row is not needed, so FULL would only add WAL volume.
* ``inventory``: DEFAULT. The primary key ``product_id`` is all a delete needs.
* ``outbox``: DEFAULT. Only inserts are relayed; deletes are the relay's clean-up.

``ordercache.db.replica_identity.REQUIRED`` states the same; the worker's readiness check
(``replica_identity_problems``) names any table that differs. Other databases have
no replica identity: nothing is done there.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHILDREN = ("order_items", "shipments", "tracking_events")


def _index(table: str) -> str:
    return f"ux_{table}_order_id_id"


def upgrade() -> None:
    for table in CHILDREN:
        op.create_index(_index(table), table, ["order_id", "id"], unique=True)
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("aggregatetype", sa.String(64), nullable=False),
        sa.Column("aggregateid", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox")),
        sa.UniqueConstraint("id", name=op.f("uq_outbox_id")),
    )  # fmt: skip
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        for table in CHILDREN:
            op.execute(f"ALTER TABLE {table} REPLICA IDENTITY USING INDEX {_index(table)}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("orders", *CHILDREN):
            op.execute(f"ALTER TABLE {table} REPLICA IDENTITY DEFAULT")
    op.drop_table("outbox")
    for table in CHILDREN:
        op.drop_index(_index(table), table_name=table)
