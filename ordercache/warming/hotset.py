"""What to warm: the ids of the hot set, read from the system of record.

* orders: in-flight orders (not delivered or cancelled) and the most recently
  updated ones, newest first;
* histories: the customers with the most orders updated recently;
* inventory: every product's (or the ``products`` most recently updated).

Each is one indexed query; the ids come back in a stable order so that several
workers cut the same chunks (and their chunk leases meet).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ordercache.models.orm import Inventory, Order

#: Order states after which an order is no longer "in flight".
DONE_STATES = ("delivered", "cancelled", "canceled", "returned")


async def hot_orders(session: AsyncSession, n: int) -> list[int]:
    if n <= 0:
        return []
    in_flight = (
        await session.execute(
            select(Order.id)
            .where(Order.status.not_in(DONE_STATES))
            .order_by(Order.updated_at.desc(), Order.id.desc())
            .limit(n)
        )
    ).scalars()
    ids = list(dict.fromkeys(in_flight))
    if len(ids) < n:
        recent = (
            await session.execute(
                select(Order.id).order_by(Order.updated_at.desc(), Order.id.desc()).limit(n)
            )
        ).scalars()
        ids = list(dict.fromkeys([*ids, *recent]))[:n]
    return ids


async def hot_customers(session: AsyncSession, n: int) -> list[int]:
    if n <= 0:
        return []
    rows = await session.execute(
        select(Order.customer_id)
        .group_by(Order.customer_id)
        .order_by(func.max(Order.updated_at).desc(), Order.customer_id.desc())
        .limit(n)
    )
    return list(rows.scalars())


async def hot_products(session: AsyncSession, n: int) -> list[int]:
    """``n`` most recently updated products' ids; every product's when ``n`` is 0."""
    query = select(Inventory.product_id).order_by(
        Inventory.updated_at.desc(), Inventory.product_id.desc()
    )
    if n > 0:
        query = query.limit(n)
    return list((await session.execute(query)).scalars())
