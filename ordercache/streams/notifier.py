"""Example downstream service: notify when an order is out for delivery or delivered.

One :class:`StreamConsumer` per global shard, all in one consumer group, so several
notifier processes share the work and take over each other's entries after a crash.
Run it with ``ordercache notify`` (settings from ``ORDERCACHE_*``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server

from ordercache.cache.keys import KeySpace
from ordercache.config.settings import Settings
from ordercache.errors import DecodeError
from ordercache.redisconn.client import AnyRedis, create_redis
from ordercache.streams.config import ConsumerConfig
from ordercache.streams.consumer import RejectEntry, StreamConsumer, StreamMessage
from ordercache.streams.entry import TrackingEntry
from ordercache.streams.layout import StreamLayout
from ordercache.streams.metrics import StreamMetrics

log = logging.getLogger("ordercache.notifier")

#: Statuses worth a notification, and what to say.
_MESSAGES = {
    "out_for_delivery": "order {order_id} is out for delivery",
    "delivered": "order {order_id} was delivered",
}


def notification_text(entry: TrackingEntry) -> str | None:
    """The notification for an update, or ``None`` when the status needs none."""
    template = _MESSAGES.get(entry.status)
    return None if template is None else template.format(order_id=entry.order_id)


class Notifier:
    """Consumes every tracking shard in ``group`` and emits notifications to ``sink``."""

    def __init__(
        self,
        redis: AnyRedis,
        layout: StreamLayout,
        *,
        group: str = "notifier",
        consumer_name: str | None = None,
        config: ConsumerConfig | None = None,
        metrics: StreamMetrics | None = None,
        sink: Callable[[str], None] | None = None,
    ) -> None:
        self.sink = sink or log.info
        name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self.consumers = [
            StreamConsumer(
                redis,
                layout.shard_stream(shard),
                group,
                name,
                self.handle,
                config,
                metrics=metrics,
                label=f"tracking:{shard}",
            )
            for shard in range(layout.shards)
        ]

    async def handle(self, msg: StreamMessage) -> None:
        """Notify for one entry; an undecodable entry goes straight to dead letters."""
        try:
            entry = msg.entry.tracking()
        except DecodeError as exc:
            raise RejectEntry(str(exc)) from exc
        text = notification_text(entry)
        if text is not None:
            self.sink(text)

    def start(self) -> None:
        for consumer in self.consumers:
            consumer.start()

    async def stop(self, timeout: float = 10.0) -> None:
        await asyncio.gather(*(c.stop(timeout) for c in self.consumers))


@dataclass(frozen=True, slots=True)
class NotifierOptions:
    """The ``ordercache notify`` options."""

    group: str = "notifier"
    consumer: str | None = None
    #: A new group starts at the oldest retained entry instead of new ones only.
    from_start: bool = False
    #: Serve the consumer's Prometheus metrics on this port (0: off).
    metrics_port: int = 0


def _blocking_settings(settings: Settings, block_ms: int) -> Settings:
    """Settings whose socket timeout outlasts a blocking read of ``block_ms``."""
    floor = block_ms / 1000.0 + 1.0
    return settings.model_copy(
        update={
            "redis_read_timeout": max(settings.redis_read_timeout, floor),
            "redis_write_timeout": max(settings.redis_write_timeout, floor),
        }
    )


async def run(settings: Settings, args: NotifierOptions) -> None:
    """Run the notifier until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    config = ConsumerConfig.from_settings(settings, start_id="0" if args.from_start else "$")
    handle = create_redis(_blocking_settings(settings, config.block_ms))
    layout = StreamLayout(KeySpace(settings.redis_key_prefix), settings.stream_shards)
    notifier = Notifier(
        handle.client,
        layout,
        group=args.group,
        consumer_name=args.consumer,
        config=config,
        metrics=StreamMetrics.for_registry(registry),
    )
    if args.metrics_port:
        # prometheus-client's own exporter (a daemon thread), scraped like the worker
        start_http_server(args.metrics_port, addr=settings.web_host, registry=registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    notifier.start()
    log.info("notifier consuming %d tracking shards as group %r", layout.shards, args.group)
    try:
        await stop.wait()
    finally:
        await notifier.stop()
        await handle.close()
