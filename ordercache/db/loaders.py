"""The database side of the read API: each loader opens one session for one query.

A thin adapter over :mod:`ordercache.db.repository` so that the views depend on
three callables, not on sessions (the cache service calls them on a miss).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ordercache.db import repository
from ordercache.models.views import (
    HISTORY_CACHED_ORDERS,
    CustomerOrderHistory,
    OrderDetails,
    ProductInventory,
)


class DbLoaders:
    """Loaders of the three views over a session factory."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def order(self, order_id: int) -> OrderDetails | None:
        """Order details, or ``None`` for an unknown order."""
        async with self.sessions() as session:
            return await repository.load_order_details(session, order_id)

    async def history(
        self, customer_id: int, *, limit: int = HISTORY_CACHED_ORDERS, offset: int = 0
    ) -> CustomerOrderHistory | None:
        """A page of the customer's orders (newest first), or ``None`` for an unknown one."""
        async with self.sessions() as session:
            return await repository.load_customer_history(
                session, customer_id, limit=limit, offset=offset
            )

    async def cached_history(self, customer_id: int) -> CustomerOrderHistory | None:
        """The cached form of the history: its first ``HISTORY_CACHED_ORDERS`` orders."""
        return await self.history(customer_id)

    async def inventory(self, product_id: int) -> ProductInventory | None:
        """Stock of one product, or ``None`` when it has no inventory row."""
        async with self.sessions() as session:
            return await repository.load_inventory(session, product_id)
