"""Faust tables (changelog-backed state)."""

from __future__ import annotations

import faust

from ordercache.app.context import AppContext


def register(app: faust.App, ctx: AppContext) -> None:
    from ordercache.tables import dlq_stats

    dlq_stats.register(app, ctx)
