"""Stream processors: change events -> cache operations (and tracking -> streams)."""

from __future__ import annotations

import functools
import time
from typing import Any

import faust

from ordercache.agents.batch import Rejected
from ordercache.agents.decode import DecodeConfig, decode
from ordercache.agents.dlq import dead_letter
from ordercache.agents.metrics import PipelineMetrics
from ordercache.agents.pipeline import ChangePipeline, PipelineConfig
from ordercache.agents.plan import plan, tracking_update, unresolved
from ordercache.agents.tracking import record_of
from ordercache.app.context import AppContext
from ordercache.app.errors import DecodeError, OrderCacheError
from ordercache.models.events import Heartbeat, Tombstone


def build_dead_letter(r: Rejected) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The DLQ message of a rejected record: original bytes plus context headers."""
    rec = r.record
    dl = dead_letter(
        r.reason,
        r.detail,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        headers=list(rec.headers or ()),
        timestamp_ms=rec.timestamp,
        now_ms=int(time.time() * 1000),
    )
    return dl.key, dl.value, [(k, v if v is not None else b"") for k, v in dl.headers]


def is_tombstone(event: Any) -> bool | str:
    """The outcome of an event that plans nothing and is no error (else False)."""
    if isinstance(event, Tombstone):
        return "tombstone"
    if isinstance(event, Heartbeat):
        return "heartbeat"
    return False


def plan_checked(event: Any) -> list[Any]:
    """:func:`plan`, plus the tracking mirror's own checks, so that an update the
    mirror would refuse goes to the DLQ with its reason instead of stalling a batch."""
    update = tracking_update(event)
    if update is not None:
        try:
            record_of(update, "check", 0, 0)
        except (ValueError, OrderCacheError) as exc:
            raise DecodeError("schema_mismatch", f"tracking update: {exc}") from exc
    return plan(event)


def build_pipeline(ctx: AppContext, bootstrap: list[str], **kwargs: Any) -> ChangePipeline:
    """The change pipeline for ``ctx`` (also used by tests and benchmarks)."""
    s = ctx.settings
    config = PipelineConfig(
        bootstrap=bootstrap,
        topics=(s.topic_orders, s.topic_inventory, s.topic_tracking),
        group_id=f"{s.app_id}-changes",
        dlq_topic=s.topic_dlq,
        partitions=s.kafka_partitions,
    )
    dconf = DecodeConfig.from_settings(s, max_bytes=s.event_max_bytes)
    hooks = kwargs.pop("hooks", ctx.extras.get("batch_hooks", ()))
    return ChangePipeline(
        config,
        ctx.cache,
        PipelineMetrics.create(ctx.registry),
        decode=functools.partial(decode, config=dconf),
        plan=plan_checked,
        is_tombstone=is_tombstone,
        dead_letter=build_dead_letter,
        hooks=hooks,
        unresolved=unresolved,
        **kwargs,
    )


def register(app: faust.App, ctx: AppContext) -> None:
    """Start the change pipeline (with the tracking mirror) with the app."""
    from ordercache.agents.tracking import StreamGauges, build_mirror, mirror_hook

    mirror = build_mirror(ctx)
    pipeline = build_pipeline(ctx, ctx.extras["kafka_bootstrap"], hooks=[mirror_hook(mirror)])
    app.add_dependency(pipeline)
    app.add_dependency(StreamGauges(ctx, mirror))
    ctx.extras["pipeline"] = pipeline
    ctx.extras["mirror"] = mirror
