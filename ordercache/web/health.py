"""``GET /health/live`` and ``GET /health/ready`` (the checks: :mod:`ordercache.health`)."""

from __future__ import annotations

import faust
from faust import web

from ordercache.health.readiness import HealthChecker


def register(app: faust.App, checker: HealthChecker) -> None:
    """Serve ``/health/live`` and ``/health/ready``."""
    no_store = {"Cache-Control": "no-store"}

    @app.page("/health/live", name="ordercache_health_live")
    async def live(self: web.View, request: web.Request) -> web.Response:
        """200 while the process runs and its event loop answers."""
        return self.json({"status": "ok"}, headers=dict(no_store))

    @app.page("/health/ready", name="ordercache_health_ready")
    async def ready(self: web.View, request: web.Request) -> web.Response:
        """200 ok/degraded, 503 when the database or the broker is down."""
        report = await checker.ready()
        return self.json(report.as_dict(), status=report.http_status, headers=dict(no_store))
