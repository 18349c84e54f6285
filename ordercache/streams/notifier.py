"""Example downstream service: notify when an order is out for delivery or delivered.

One :class:`StreamConsumer` per global shard, all in one consumer group, so several
notifier processes share the work and take over each other's entries after a crash.
Run it with ``python -m ordercache.streams.notifier`` (settings from ``ORDERCACHE_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, start_http_server

from ordercache.cache.keys import KeySpace
from ordercache.config.settings import Settings, load_settings
from ordercache.errors import ConfigError, DecodeError
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


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ordercache.streams.notifier",
        description="Log a line when an order is out for delivery or delivered.",
    )
    parser.add_argument("--group", default="notifier", help="Consumer group (default: notifier).")
    parser.add_argument("--consumer", default=None, help="Consumer name (default: host-pid).")
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="A new group starts at the oldest retained entry instead of new ones only.",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="Serve the consumer's Prometheus metrics (dead letters, claims, lag, pending) "
        "on this port (default: off).",
    )
    return parser.parse_args(argv)


def _blocking_settings(settings: Settings, block_ms: int) -> Settings:
    """Settings whose socket timeout outlasts a blocking read of ``block_ms``."""
    floor = block_ms / 1000.0 + 1.0
    return settings.model_copy(
        update={
            "redis_read_timeout": max(settings.redis_read_timeout, floor),
            "redis_write_timeout": max(settings.redis_write_timeout, floor),
        }
    )


async def run(settings: Settings, args: argparse.Namespace) -> None:
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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m ordercache.streams.notifier``."""
    args = _parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"notifier: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.redis_is_local:
        print(
            "notifier: set ORDERCACHE_REDIS_URL or ORDERCACHE_REDIS_HOST "
            "(the Redis the worker mirrors into)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    asyncio.run(run(settings, args))


if __name__ == "__main__":
    main()
