"""Tracking updates from the change pipeline into Redis Streams.

:func:`tracking_record` builds (and so validates) the mirror record of each tracking
event once, while the batch is planned: a record the mirror would refuse goes to the
DLQ with its reason instead of stalling the batch. :func:`mirror_hook` is a batch
hook of :class:`~ordercache.agents.pipeline.ChangePipeline`: after a batch's cache
operations applied, its records are mirrored in one call. Both run before the offset
commit, so a Redis error holds the partition and a redelivered batch adds nothing
twice (the mirror's per-partition offset watermark).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import mode
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from ordercache.agents.batch import BatchPlan, RecordLike
from ordercache.agents.plan import tracking_update
from ordercache.errors import DecodeError, OrderCacheError
from ordercache.redisconn.client import AnyRedis
from ordercache.streams import StreamLayout, StreamMetrics, StreamMirror, TrackingRecord
from ordercache.streams.metrics import refresh_group_gauges

log = logging.getLogger(__name__)


def tracking_record(rec: RecordLike, event: Any) -> TrackingRecord | None:
    """The mirror record of a tracking event read at ``rec``'s position; None for others.

    Raises :class:`DecodeError` (``schema_mismatch``) for an update the mirror refuses.
    """
    update = tracking_update(event)
    if update is None:
        return None
    try:
        return TrackingRecord(
            event_id=update.event_id,
            order_id=update.order_id,
            status=update.status,
            location=update.location,
            carrier=update.carrier,
            occurred_at=update.occurred_at,
            shipment_id=update.shipment_id,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
        )
    except (ValueError, TypeError, OrderCacheError) as exc:
        raise DecodeError("schema_mismatch", f"tracking update: {exc}") from exc


def mirror_hook(mirror: StreamMirror) -> Callable[[BatchPlan], Awaitable[None]]:
    """A pipeline batch hook that mirrors the batch's tracking updates."""

    async def hook(bp: BatchPlan) -> None:
        if bp.tracking:
            await mirror.mirror(bp.tracking)

    return hook


class StreamGauges(mode.Service):
    """Refreshes stream length / group lag / pending gauges of the global streams."""

    def __init__(
        self,
        client: AnyRedis,
        layout: StreamLayout,
        registry: CollectorRegistry,
        interval: float = 10.0,
    ) -> None:
        super().__init__()
        self.client = client
        self.layout = layout
        self.interval = interval
        self.metrics = StreamMetrics.for_registry(registry)
        #: Groups reported per stream label at the last refresh (to forget vanished ones).
        self._groups: dict[str, set[str]] = {}

    @mode.Service.task
    async def _refresh(self) -> None:
        while not self.should_stop:
            await self.refresh()
            await self.sleep(self.interval)

    async def refresh(self) -> None:
        """One pass over the shard streams; a group or stream that disappeared since the
        last pass has its gauges removed."""
        client = self.client
        for shard in range(self.layout.shards):
            stream = self.layout.shard_stream(shard)
            label = f"tracking:{shard}"
            try:
                groups = await _group_names(client, stream)
                if not groups:
                    self.metrics.length.labels(label).set(await client.xlen(stream))
                for group in groups:
                    await refresh_group_gauges(
                        client, self.metrics, stream=stream, label=label, group=group
                    )
            except Exception as exc:  # noqa: BLE001 - gauges are best effort
                log.debug("stream gauges not refreshed: %s", exc)
                continue
            for gone in self._groups.get(label, set()) - groups:
                self.metrics.forget_group(label, gone)
            self._groups[label] = groups


async def _group_names(client: AnyRedis, stream: str) -> set[str]:
    """The stream's consumer groups; none when the stream does not exist."""
    try:
        infos = await client.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return set()
        raise
    names = (g["name"] for g in infos)
    return {n.decode() if isinstance(n, bytes) else str(n) for n in names}
