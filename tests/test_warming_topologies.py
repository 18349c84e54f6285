"""Cache warming on each topology (standalone, Sentinel, Cluster): the hot set is
filled through the guarded fill, with its rate limit and chunk leases, wherever the
keys live (tests/topologies.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from ordercache.app.context import AppContext
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.service import CacheService, build_cache_service
from ordercache.redisconn.client import create_redis
from ordercache.sample.seed import SeedSpec, run_seed
from ordercache.warming import Warming
from tests.conftest import make_settings, unique
from tests.test_warming import hot_keys, until, warmer_for
from tests.topologies import Topology, unlink_prefix


@pytest.fixture
async def seeded(ctx: AppContext) -> AppContext:
    await run_seed(ctx.engine, SeedSpec(customers=15, products=30, orders=60))
    return ctx


@pytest.fixture
async def cache(topology: Topology) -> AsyncIterator[CacheService]:
    prefix = unique("wt")
    settings = make_settings(
        **topology.env, redis_key_prefix=prefix, kafka_broker="127.0.0.1:9", app_id=prefix
    )
    handle = create_redis(settings)
    yield build_cache_service(
        handle.client, KeySpace(prefix), TtlPolicy(jitter=0.0),
        CacheMetrics.create(CollectorRegistry()), timeout=2.0,
    )  # fmt: skip
    await handle.close()
    inspector = topology.inspector()
    await unlink_prefix(inspector, prefix)
    await inspector.aclose()


async def test_warming_fills_the_hot_set_on_each_topology(
    seeded: AppContext, cache: CacheService
) -> None:
    warmer = warmer_for(cache, seeded)
    warming = Warming(warmer)
    warming.start()
    try:
        await until(lambda: warmer.progress.state == "done")
    finally:
        await warming.stop()
    keys = await hot_keys(cache, seeded, warmer.config)
    assert keys and warmer.progress.filled == len(keys)
    client = cache.backend.client
    # one key per call: the entries spread over the cluster's slots
    present = [bool(await client.exists(key)) for key in keys]
    assert all(present), f"{present.count(False)} of {len(keys)} hot entries missing"
