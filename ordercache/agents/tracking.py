"""Tracking updates from the change pipeline into Redis Streams.

A batch hook of :class:`~ordercache.agents.pipeline.ChangePipeline`: after a batch's
cache operations applied, its tracking events are mirrored in one call. Both run in
the pipeline's retry loop before the offset commit, so a Redis error holds the
partition and a redelivered batch adds nothing twice (the mirror's per-partition
offset watermark).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import mode

from ordercache.agents.batch import BatchPlan
from ordercache.agents.plan import tracking_update
from ordercache.app.context import AppContext
from ordercache.app.settings import Settings
from ordercache.models.events import TrackingUpdate
from ordercache.streams import (
    ConsumerConfig,
    MirrorConfig,
    StreamMetrics,
    StreamMirror,
    TrackingRecord,
)
from ordercache.streams.metrics import refresh_group_gauges

log = logging.getLogger(__name__)


def mirror_config(s: Settings) -> MirrorConfig:
    """The mirror's tunables from ``ORDERCACHE_STREAM_*``."""
    return MirrorConfig(
        shards=s.stream_shards,
        global_maxlen=s.stream_maxlen,
        global_max_age_ms=s.stream_max_age * 1000,
        order_maxlen=s.stream_order_maxlen,
        order_ttl_ms=s.stream_order_ttl * 1000,
        dedupe_window_ms=s.stream_dedupe_window * 1000,
    )


def consumer_config(s: Settings, **overrides: Any) -> ConsumerConfig:
    """Consumer-group tunables from ``ORDERCACHE_STREAM_*``."""
    return ConsumerConfig(
        max_deliveries=s.stream_max_deliveries,
        claim_idle_ms=int(s.stream_claim_idle * 1000),
        **overrides,
    )


def record_of(update: TrackingUpdate, topic: str, partition: int, offset: int) -> TrackingRecord:
    """The mirror record of a tracking update read at a Kafka position (validates it)."""
    return TrackingRecord(
        event_id=update.event_id,
        order_id=update.order_id,
        status=update.status,
        location=update.location,
        carrier=update.carrier,
        occurred_at=update.occurred_at,
        shipment_id=update.shipment_id,
        topic=topic,
        partition=partition,
        offset=offset,
    )


def tracking_records(bp: BatchPlan) -> list[TrackingRecord]:
    """The batch's tracking events as mirror records, in batch (offset) order."""
    out: list[TrackingRecord] = []
    for rec, event in bp.events:
        update = tracking_update(event)
        if update is not None:
            out.append(record_of(update, rec.topic, rec.partition, rec.offset))
    return out


def mirror_hook(mirror: StreamMirror) -> Callable[[BatchPlan], Awaitable[None]]:
    """A pipeline batch hook that mirrors the batch's tracking updates."""

    async def hook(bp: BatchPlan) -> None:
        records = tracking_records(bp)
        if records:
            await mirror.mirror(records)

    return hook


class StreamGauges(mode.Service):
    """Refreshes stream length / group lag / pending gauges of the global streams."""

    def __init__(self, ctx: AppContext, mirror: StreamMirror, interval: float = 10.0) -> None:
        super().__init__()
        self.ctx = ctx
        self.mirror = mirror
        self.interval = interval
        self.metrics = StreamMetrics.for_registry(ctx.registry)

    @mode.Service.task
    async def _refresh(self) -> None:
        client = self.ctx.redis.client
        layout = self.mirror.layout
        while not self.should_stop:
            for shard in range(layout.shards):
                stream = layout.shard_stream(shard)
                label = f"tracking:{shard}"
                try:
                    groups = await client.xinfo_groups(stream)
                    if not groups:
                        self.metrics.length.labels(label).set(await client.xlen(stream))
                    for g in groups:
                        name = g["name"]
                        group = name.decode() if isinstance(name, bytes) else str(name)
                        await refresh_group_gauges(
                            client, self.metrics, stream=stream, label=label, group=group
                        )
                except Exception as exc:  # noqa: BLE001 - gauges are best effort
                    log.debug("stream gauges not refreshed: %s", exc)
            await self.sleep(self.interval)


def build_mirror(ctx: AppContext) -> StreamMirror:
    return StreamMirror(
        ctx.redis.client,
        ctx.keys,
        mirror_config(ctx.settings),
        metrics=StreamMetrics.for_registry(ctx.registry),
    )
