"""The web layer's background work, so that no request handler or metric collector
waits on the network for figures it only reports.

Every few seconds: refresh the Redis INFO snapshot (``ordercache_redis_*`` gauges,
``/stats``); every ``sample_interval``: snapshot the counters for ``/stats``'s
window; every ``health_interval``: re-evaluate readiness so that
``ordercache_health_status`` stays current between probes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mode

from ordercache.health.readiness import HealthChecker
from ordercache.health.redis_info import RedisMonitor
from ordercache.web.stats import StatsReporter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Intervals in seconds."""

    redis_interval: float = 5.0
    sample_interval: float = 10.0
    health_interval: float = 15.0


class WebMonitor(mode.Service):
    """Runs the refresh loops for as long as the worker runs."""

    def __init__(
        self,
        redis: RedisMonitor,
        reporter: StatsReporter,
        checker: HealthChecker,
        config: MonitorConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.redis = redis
        self.reporter = reporter
        self.checker = checker
        self.config = config or MonitorConfig()

    async def on_start(self) -> None:
        self.reporter.sample()  # the window's zero point
        c = self.config
        self.add_future(self._every(c.redis_interval, self.redis.refresh, now=True))
        self.add_future(self._every(c.sample_interval, self._sample))
        self.add_future(self._every(c.health_interval, self.checker.ready, now=True))

    async def _sample(self) -> None:
        self.reporter.sample()

    async def _every(
        self, interval: float, fn: Callable[[], Awaitable[object]], *, now: bool = False
    ) -> None:
        if not now:
            await self.sleep(interval)
        while not self.should_stop:
            try:
                await fn()
            except Exception:  # a refresh loop must outlive any one failure
                log.exception("web monitor: %s failed", getattr(fn, "__name__", fn))
            await self.sleep(interval)
