"""The process-wide resources, built once from settings and passed in.

Building a context does no I/O (clients connect lazily); :meth:`AppContext.aclose`
closes everything it owns. Subsystems never receive the context itself: the wiring
(:mod:`ordercache.app.wiring`) hands each one the typed parts it uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ordercache.cache.breaker import CircuitBreaker
from ordercache.cache.keys import KeySpace, TtlPolicy
from ordercache.cache.metrics import CacheMetrics
from ordercache.cache.near import NearCache, NearConfig
from ordercache.cache.service import CacheConfig, CacheService, build_cache_service
from ordercache.cache.tracking import TrackingListener
from ordercache.config.settings import Settings
from ordercache.db.engine import create_engine, engine_from_settings, session_factory
from ordercache.redisconn.client import RedisHandle, create_health_redis, create_redis


@dataclass
class AppContext:
    """Everything a worker process shares: settings, Redis, database, metrics."""

    settings: Settings
    redis: RedisHandle
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    registry: CollectorRegistry
    keys: KeySpace
    ttls: TtlPolicy
    cache: CacheService
    #: The readiness probe's own small client (never waits behind the read path).
    health_redis: RedisHandle
    #: The readiness check's own engine (one connection, one spare): at 100
    #: concurrent reads the shared pool is busy, and ``SELECT 1`` must not queue.
    health_engine: AsyncEngine
    #: The near-cache's invalidation listener (None: ORDERCACHE_NEAR_CACHE is off).
    tracking: TrackingListener | None = None
    #: True when this process started the local default's broker and Redis.
    local_default: bool = False
    #: Endpoints ("broker", "redis") neither configured nor found in a running local
    #: worker's record: placeholders stand in (the app needs a broker address to be
    #: built), and a command that needs one of them refuses to start.
    unconfigured: frozenset[str] = frozenset()
    #: True when this process started the broker itself (the bundled Tansu).
    local_broker: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        local_default: bool = False,
        unconfigured: frozenset[str] = frozenset(),
        local_broker: bool = False,
    ) -> AppContext:
        engine = engine_from_settings(settings)
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        redis = create_redis(settings)
        keys = KeySpace(settings.redis_key_prefix)
        ttls = TtlPolicy.from_settings(settings)
        near, tracking = None, None
        if settings.near_cache:
            near = NearCache(NearConfig(settings.near_cache_max_entries, settings.near_cache_ttl))
            tracking = TrackingListener(redis.client, near, keys.prefix)
        cache = build_cache_service(
            redis.client,
            keys,
            ttls,
            CacheMetrics.create(reg),
            timeout=max(settings.redis_read_timeout, settings.redis_write_timeout),
            breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds),
            # A load slower than half the tombstone's life is not filled: the guard
            # it was checked against may have expired meanwhile.
            config=CacheConfig(
                lease_ms=settings.lease_ttl_ms,
                max_fill_age=min(60.0, settings.tombstone_ttl / 2),
                xfetch_beta=settings.xfetch_beta,
            ),
            near=near,
        )
        return cls(
            settings=settings,
            redis=redis,
            engine=engine,
            sessions=session_factory(engine),
            registry=reg,
            keys=keys,
            ttls=ttls,
            cache=cache,
            tracking=tracking,
            health_redis=create_health_redis(settings),
            health_engine=create_engine(settings.database_dsn, pool_size=1),
            local_default=local_default,
            unconfigured=unconfigured,
            local_broker=local_broker,
        )

    async def aclose(self) -> None:
        await self.redis.close()
        await self.health_redis.close()
        await self.engine.dispose()
        await self.health_engine.dispose()
