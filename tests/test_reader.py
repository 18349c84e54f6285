"""``ordercache.Reader``: the public read entry point, against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update

import ordercache
from ordercache.app.context import AppContext
from ordercache.cache.views import View
from ordercache.config.settings import Settings
from ordercache.errors import ConfigError, InvalidIdError
from ordercache.local.services import ManagedProcess
from ordercache.models.orm import Customer, Order
from ordercache.read import InvalidParamError
from tests.conftest import make_settings, unique

NOW = datetime(2026, 3, 1, tzinfo=UTC)


async def _customer_with_orders(reader: ordercache.Reader, n: int) -> tuple[int, list[int]]:
    sessions = reader._ctx.sessions
    async with sessions() as s, s.begin():
        cust = Customer(email=f"{unique('c')}@example.com", name="Ada")
        s.add(cust)
        await s.flush()
        rows = [
            {
                "customer_id": cust.id,
                "status": "paid",
                "total_cents": 100 + i,
                "currency": "EUR",
                "created_at": NOW + timedelta(minutes=i),
                "updated_at": NOW + timedelta(minutes=i),
                "version": 1,
            }
            for i in range(n)
        ]
        ids = list((await s.execute(insert(Order).returning(Order.id), rows)).scalars())
        return cust.id, ids


async def test_reader_reads_the_three_views_through_the_cache(
    settings: Settings, redis_raw: Any
) -> None:
    async with ordercache.Reader.from_settings(settings) as r:
        customer, orders = await _customer_with_orders(r, 105)
        first = await r.order(orders[0])
        assert first.cache == "miss" and first.value is not None
        assert first.value.order_id == orders[0]
        again = await r.order(str(orders[0]))
        assert again.cache == "hit" and again.value == first.value

        page = await r.history(customer, limit=10)
        assert page.cache == "miss" and page.value is not None
        assert page.value.total_orders == 105 and len(page.value.orders) == 10
        assert page.value.orders[0].order_id == orders[-1]  # newest first
        assert (await r.history(customer, limit=10, offset=90)).cache == "hit"
        beyond = await r.history(customer, limit=10, offset=100)  # past the cached 100
        assert beyond.cache == "bypass" and beyond.value is not None
        assert [o.order_id for o in beyond.value.orders] == sorted(orders[:5], reverse=True)

        unknown = await r.inventory(10**15)
        assert unknown.value is None and unknown.cache == "miss"
        with pytest.raises(InvalidIdError):
            await r.order("0x10")
        with pytest.raises(InvalidParamError):
            await r.history(customer, limit=0)
    # closed: the pools are gone
    assert r._closed


async def test_reader_bypasses_a_dead_redis(
    settings: Settings, private_redis: ManagedProcess
) -> None:
    s = make_settings(
        redis_url=f"redis://{private_redis.url}/0",
        redis_key_prefix=settings.redis_key_prefix,
        database_url=settings.database_dsn,
        data_dir=settings.data_dir,
        redis_connect_timeout=0.2,
        redis_read_timeout=0.2,
        redis_retry_attempts=0,
    )
    async with ordercache.Reader.from_settings(s) as r:
        _, orders = await _customer_with_orders(r, 1)
        assert (await r.order(orders[0])).cache == "miss"
        private_redis.kill()
        read = await r.order(orders[0])
        assert read.cache == "bypass" and read.value is not None


async def test_reader_serves_from_its_near_cache_and_keeps_it_coherent(
    settings: Settings, redis_raw: Any
) -> None:
    # Only a subscribed invalidation listener lets the near-cache serve: the Reader
    # starts one on its first read (it used to build the near-cache and never start
    # the listener, so it never served from it).
    own = settings.model_copy(update={"near_cache": True})
    async with ordercache.Reader.from_settings(own) as r:
        _, (oid,) = await _customer_with_orders(r, 1)
        cache = r._ctx.cache
        assert cache.near is not None
        key = cache.keys.entry(View.ORDER, oid)
        deadline = time.monotonic() + 10
        while key not in cache.near:  # the fill's own writes are broadcast: read on
            assert time.monotonic() < deadline, "the near-cache never kept the entry"
            assert (await r.order(oid)).value is not None
            await asyncio.sleep(0.01)
        near_hits = cache.metrics.near_hits
        before = near_hits.total("order")
        read = await r.order(oid)
        assert read.cache == "hit" and read.value is not None and read.value.status == "paid"
        assert near_hits.total("order") == before + 1

        # Another process commits and invalidates: the copy is dropped, the next read
        # is the new row.
        async with r._ctx.sessions() as s, s.begin():
            await s.execute(
                update(Order).where(Order.id == oid).values(status="shipped", version=2)
            )
        other = AppContext.build(settings)
        try:
            await other.cache.invalidate(View.ORDER, oid, version=2)
        finally:
            await other.aclose()
        while key in cache.near:
            assert time.monotonic() < deadline + 10, "the invalidation never reached the reader"
            await asyncio.sleep(0.01)
        fresh = await r.order(oid)
        assert fresh.value is not None and fresh.value.status == "shipped"
    assert cache.near is not None and not cache.near.live  # the listener stopped


def test_from_env_names_a_bad_variable() -> None:
    with pytest.raises(ConfigError, match="ORDERCACHE_REDIS_PORT"):
        ordercache.Reader.from_env({"ORDERCACHE_REDIS_PORT": "x"})
