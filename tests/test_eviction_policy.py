"""The maxmemory-policy check: which policies can evict version guards or dedupe state,
read from a real redis-server (also as an ACL user denied CONFIG) and reported by
readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ordercache.app.context import AppContext
from ordercache.app.wiring import health_checker
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.ops import Refresh
from ordercache.cache.service import build_cache_service
from ordercache.cache.views import INVENTORY, View
from ordercache.config.settings import Settings
from ordercache.health.eviction import EvictionPolicy, eviction_risk, read_policies
from ordercache.local.services import ManagedProcess
from ordercache.models.views import ProductInventory
from ordercache.web.metrics import WebMetrics
from tests.conftest import unique

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "maxmemory", "unsafe"),
    [
        ("noeviction", 256 << 20, False),
        ("noeviction", 0, False),
        ("allkeys-lru", 0, False),  # no limit: nothing is ever evicted
        ("volatile-lru", 0, False),
        ("volatile-lru", 256 << 20, True),
        ("volatile-lfu", 256 << 20, True),
        ("volatile-ttl", 256 << 20, True),
        ("volatile-random", 256 << 20, True),
        ("allkeys-lru", 256 << 20, True),
        ("allkeys-lfu", 256 << 20, True),
        ("allkeys-random", 256 << 20, True),
        ("some-future-policy", 256 << 20, True),
    ],
)
def test_which_policies_can_evict_guards(policy: str, maxmemory: int, unsafe: bool) -> None:
    risk = eviction_risk([EvictionPolicy(policy, maxmemory)])
    assert (risk is not None) == unsafe
    if risk:
        assert policy in risk


def test_one_unsafe_cluster_node_is_enough() -> None:
    nodes = [EvictionPolicy("noeviction", 1 << 30), EvictionPolicy("allkeys-lru", 1 << 30)]
    assert eviction_risk(nodes) == (
        "maxmemory-policy allkeys-lru can evict version guards, stream dedupe state and streams"
    )


@pytest.fixture
async def private_client(private_redis: ManagedProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(f"redis://{private_redis.url}/0")
    yield client
    await client.aclose()


async def test_policy_read_from_info_even_when_config_is_denied(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    await private_client.config_set("maxmemory", "64mb")
    await private_client.config_set("maxmemory-policy", "volatile-lru")
    await private_client.execute_command(
        "ACL", "SETUSER", "probe", "on", ">pw-probe", "-@all", "+info", "+ping"
    )
    limited = aioredis.Redis.from_url(f"redis://probe:pw-probe@{private_redis.url}/0")
    try:
        with pytest.raises(aioredis.ResponseError, match="no permissions"):
            await limited.config_get("maxmemory-policy")
        assert await read_policies(limited, timeout=2.0) == [
            EvictionPolicy("volatile-lru", 64 << 20)
        ]
    finally:
        await limited.aclose()


async def test_readiness_is_degraded_while_the_policy_can_evict_guards(
    settings: Settings, private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    own = settings.model_copy(update={"redis_url": SecretStr(f"redis://{private_redis.url}/0")})
    ctx = AppContext.build(own)
    try:
        checker = health_checker(ctx, WebMetrics.create(ctx.registry))
        report = await checker.ready()  # the private server's default: no maxmemory
        assert report.status == "ok", report.as_dict()
        assert report.components["eviction"].status == "ok"

        await private_client.config_set("maxmemory", "64mb")
        await private_client.config_set("maxmemory-policy", "allkeys-lru")
        report = await checker.ready()
        assert (report.status, report.http_status) == ("degraded", 200)
        body = report.as_dict()
        assert body["failed"] == ["eviction"]
        assert body["components"]["eviction"]["error"] == (
            "maxmemory-policy allkeys-lru can evict version guards, stream dedupe state and streams"
        )
        assert body["components"]["eviction"]["policy"] == ["allkeys-lru"]

        await private_client.config_set("maxmemory-policy", "noeviction")
        report = await checker.ready()
        assert report.status == "ok", report.as_dict()

        private_redis.kill()  # the redis component reports an outage; eviction is skipped
        report = await checker.ready()
        assert report.components["eviction"].status == "skipped"
        assert report.components["redis"].status == "down"
    finally:
        await ctx.aclose()


async def test_at_the_cap_under_noeviction_invalidations_apply_and_fills_are_refused(
    private_redis: ManagedProcess, private_client: aioredis.Redis
) -> None:
    """noeviction is the safe policy: at maxmemory nothing is evicted, a fill (which
    only adds memory) is refused, and the pipeline's invalidations and refreshes still
    apply (their scripts are flagged allow-oom) instead of holding the partition."""
    cache = build_cache_service(
        private_client,
        KeySpace(unique("ev")),
        TtlPolicy(jitter=0.0),
        CacheMetrics.create(CollectorRegistry()),
        timeout=2.0,
    )
    old = ProductInventory(
        product_id=5, sku="S", available=1, reserved=0, version=1, updated_at=NOW
    )
    await cache.set(INVENTORY, old)
    await private_client.config_set("maxmemory-policy", "noeviction")
    await private_client.config_set("maxmemory", "4mb")
    refused: Exception | None = None
    for junk in range(10_000):  # fill memory until Redis refuses writes
        try:
            await private_client.set(f"junk:{junk}", b"x" * 10_000)
        except aioredis.ResponseError as exc:
            refused = exc
            break
    assert refused is not None and "used memory > 'maxmemory'" in str(refused)

    assert await cache.invalidate(View.INVENTORY, 5, version=2) is True
    assert await cache.get(INVENTORY, 5) is None
    newer = old.model_copy(update={"version": 3})
    assert await cache.apply([Refresh(View.INVENTORY, 5, 3, newer)]) == [1]
    assert await cache.get(INVENTORY, 5) == newer

    async def load(pid: int) -> ProductInventory:
        return old.model_copy(update={"product_id": pid, "version": 1})

    got = await cache.get_or_load(INVENTORY, 6, load)  # served, but not cached
    assert got.value is not None
    assert await private_client.exists(cache.keys.entry(View.INVENTORY, 6)) == 0
    info = await private_client.info("stats")
    assert info["evicted_keys"] == 0
