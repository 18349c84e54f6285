"""``ordercache.Reader``: the three views for other Python services, through the cache.

::

    import ordercache

    async with ordercache.Reader.from_env() as r:
        read = await r.order(42)          # Read(value=OrderDetails | None, cache="hit")
        page = await r.history(7, limit=20, offset=0)
        stock = await r.inventory(1001)

It is built from the same ``ORDERCACHE_*`` settings as the worker, in one call, by the
same :class:`~ordercache.app.context.AppContext`, so it reads with the worker's
guarantees: cache-aside with the database as fallback, version-guarded fills, the
per-process single-flight and cross-process fill lease against stampedes, the circuit
breaker that bypasses a failing Redis (``cache="bypass"``), and whatever else the
context's cache service does (a near-cache when enabled). The worker's HTTP read API
reads through the same :class:`~ordercache.read.ViewReader`.

Nothing connects until the first read. With ``ORDERCACHE_NEAR_CACHE`` on, the
first read also starts the near-cache's invalidation listener (Redis ``CLIENT
TRACKING``): the in-process copy serves only while that listener is subscribed.
:meth:`Reader.aclose` (or leaving the ``async with`` block) stops it and closes the
Redis pools and the database engine.
"""

from __future__ import annotations

from collections.abc import Mapping

from ordercache.app.context import AppContext
from ordercache.config.settings import Settings, load_settings
from ordercache.db.loaders import DbLoaders
from ordercache.local import discovery
from ordercache.models.views import OrderDetails, ProductInventory
from ordercache.read import DEFAULT_LIMIT, HistoryPage, Read, ViewReader


class Reader:
    """Reads order details, order history pages and inventory through the cache."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._views = ViewReader(ctx.cache, DbLoaders(ctx.sessions))
        self._closed = False
        self._listening = False

    async def _first_read(self) -> None:
        """Start the near-cache's listener, once (a task: the read does not wait)."""
        tracking = self._ctx.tracking
        if tracking is not None and not self._listening and not self._closed:
            self._listening = True
            await tracking.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> Reader:
        """A reader over the Redis and database ``settings`` name (no I/O yet)."""
        return cls(AppContext.build(settings))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Reader:
        """A reader from ``ORDERCACHE_*`` variables (``environ``, default the process's).

        With no Redis configured it reads through a running local-default worker's
        (``$ORDERCACHE_DATA_DIR/local.json``); a bad or missing setting raises
        :class:`~ordercache.errors.ConfigError` naming the variable.
        """
        settings = load_settings(environ)
        found = discovery.read(settings.data_dir) if settings.redis_is_local else None
        return cls.from_settings(found.apply(settings) if found is not None else settings)

    @property
    def settings(self) -> Settings:
        return self._ctx.settings

    @property
    def degraded(self) -> bool:
        """True while Redis is treated as down (reads go to the database)."""
        return self._ctx.cache.degraded

    async def order(self, order_id: int | str) -> Read[OrderDetails]:
        """An order with its items and latest tracking status (``value`` None: unknown)."""
        await self._first_read()
        return await self._views.order(order_id)

    async def inventory(self, product_id: int | str) -> Read[ProductInventory]:
        """Available and reserved stock of a product (``value`` None: unknown)."""
        await self._first_read()
        return await self._views.inventory(product_id)

    async def history(
        self, customer_id: int | str, *, limit: int = DEFAULT_LIMIT, offset: int = 0
    ) -> Read[HistoryPage]:
        """A page of the customer's orders, newest first (pages past 100: ``bypass``)."""
        await self._first_read()
        return await self._views.history(customer_id, limit=limit, offset=offset)

    async def aclose(self) -> None:
        """Stop the near-cache's listener; close the Redis pools and the database
        engine (idempotent)."""
        if not self._closed:
            self._closed = True
            if self._listening and self._ctx.tracking is not None:
                await self._ctx.tracking.stop()
            await self._ctx.aclose()

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
