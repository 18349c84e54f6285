"""The process-wide resources, built once from settings and passed in.

Building a context does no I/O (clients connect lazily); :meth:`AppContext.aclose`
closes everything it owns. The cache service, agents and web views receive the
context instead of reaching for globals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ordercache.app.cache.breaker import CircuitBreaker
from ordercache.app.cache.metrics import CacheMetrics
from ordercache.app.cache.service import CacheConfig, CacheService, build_cache_service
from ordercache.app.db import engine_from_settings, session_factory
from ordercache.app.keys import KeySpace, TtlPolicy
from ordercache.app.redis_conn import RedisHandle, create_redis
from ordercache.app.settings import Settings


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
    #: Filled by the subsystems that register themselves (cache, pipeline, streams).
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        redis_url: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> AppContext:
        engine = engine_from_settings(settings)
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        redis = create_redis(settings, url=redis_url)
        keys = KeySpace(settings.redis_key_prefix)
        ttls = TtlPolicy.from_settings(settings)
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
                lease_ms=settings.lease_ttl_ms, max_fill_age=min(60.0, settings.tombstone_ttl / 2)
            ),
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
        )

    async def aclose(self) -> None:
        await self.redis.close()
        await self.engine.dispose()
