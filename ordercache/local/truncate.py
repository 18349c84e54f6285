"""Keeps the local default's broker small: empties the change topics once consumed.

The bundled Tansu broker (memory storage engine) keeps every record in memory and
has no retention: ``retention.ms`` is not enforced, DeleteRecords is not
implemented by that engine, and each fetch lists every stored batch of the
partition, so its cost (and the broker's memory) grows with everything ever
produced. Only DeleteTopics frees records. So on the local default, once a change
topic's partition holds ``local_truncate_records`` records, this service

1. skips the round unless the pipeline is nearly caught up;
2. pauses the producers it was given (the local default's sample traffic), which
   flush what they have sent;
3. waits until the pipeline has committed every record (committed offset == high
   watermark for every partition) and the high watermarks have stood still for half
   a second (a producer it does not control shows up here: the round is abandoned);
4. pauses the pipeline's partitions of those topics, deletes and recreates the
   topics (same partition count), and lets the pipeline read them from offset 0;
5. resumes the producers.

Nothing unconsumed is deleted: the round only proceeds when the committed offsets
equal the high watermarks. Production brokers (Apache Kafka) are never touched: the
worker only runs this for the broker it started itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import mode
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

from ordercache.agents.pipeline import ChangePipeline, ensure_topics
from ordercache.config.settings import Settings

log = logging.getLogger(__name__)


class Pausable(Protocol):
    """A producer the truncation can hold still."""

    async def pause(self) -> bool:
        """Stop sending and flush what was sent; False if it has nothing more to send."""
        ...

    async def resume(self) -> None: ...


class TopicTruncation(mode.Service):
    """Deletes and recreates fully consumed change topics (local default only)."""

    def __init__(
        self,
        pipeline: ChangePipeline,
        bootstrap: list[str],
        topics: Sequence[str],
        partitions: int,
        *,
        producers: Sequence[Pausable] = (),
        max_records: int = 5_000,
        interval: float = 2.0,
        drain_timeout: float = 10.0,
        settle: float = 0.5,
        registry: CollectorRegistry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self.partitions = partitions
        self.producers = list(producers)
        self.max_records = max_records
        self.interval = interval
        self.drain_timeout = drain_timeout
        self.settle = settle
        self.truncations = 0
        self.records_freed = 0
        self._tps = [TopicPartition(t, p) for t in self.topics for p in range(partitions)]
        self._counter = Counter(
            "ordercache_local_truncations",
            "Local default: times the consumed change topics were emptied.",
            registry=registry if registry is not None else CollectorRegistry(),
        )

    async def on_start(self) -> None:
        self.add_future(self._rounds())

    async def _rounds(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            if self.should_stop:
                return
            try:
                await self.maybe_truncate()
            except KafkaError as exc:
                log.warning("local default: topic truncation skipped: %s", exc)

    async def maybe_truncate(self) -> bool:
        """One round (see the module docstring); True if the topics were emptied."""
        progress = await self.pipeline.fetched_positions(self.topics)
        if not progress or max(hw for hw, _ in progress.values()) < self.max_records:
            return False
        if sum(max(0, hw - done) for hw, done in progress.values()) > self.max_records // 2:
            return False  # a backlog: try again when the pipeline has nearly caught up
        paused = [p for p in self.producers if await p.pause()]
        try:
            drained = await self._drained(time.time() * 1000)
            if drained is None:
                log.info("local default: change topics not drained; truncation postponed")
                return False
            await self._recreate(drained)
            return True
        finally:
            for p in paused:
                await p.resume()

    async def _drained(self, since_ms: float) -> int | None:
        """Records consumed, once every partition's committed offset equals its high
        watermark (as fetched after ``since_ms``) and the high watermarks have stood
        still for ``settle`` seconds; None if that does not happen in time.

        The high watermarks come from the pipeline's fetch responses: ListOffsets of
        the bundled broker answers the last batch's base offset + 1, not its end."""
        deadline = time.monotonic() + self.drain_timeout
        previous: dict[TopicPartition, tuple[int, int]] | None = None
        since = 0.0
        while time.monotonic() < deadline:
            progress = await self.pipeline.fetched_positions(self.topics, since_ms)
            now = time.monotonic()
            if (
                progress is None
                or len(progress) < len(self._tps)
                or any(done < hw for hw, done in progress.values())
            ):
                previous = None
            elif previous != progress:
                previous, since = progress, now
            elif now - since >= self.settle:
                return sum(hw for hw, _ in progress.values())
            await asyncio.sleep(0.1)
        return None

    async def _recreate(self, records: int) -> None:
        held = self.pipeline.pause_topics(self.topics)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            await admin.start()
            await admin.delete_topics(list(self.topics))
        finally:
            await admin.close()
            try:
                await ensure_topics(self.bootstrap, self.topics, self.partitions)
            finally:
                await self.pipeline.resume_from_start(held)
        self.truncations += 1
        self.records_freed += records
        self._counter.inc()
        log.info("local default: emptied the consumed change topics (%d records freed)", records)


def local_truncation(
    settings: Settings,
    registry: CollectorRegistry,
    pipeline: ChangePipeline,
    producers: Sequence[Pausable],
) -> TopicTruncation | None:
    """The truncation as the local default runs it (None when switched off)."""
    s = settings
    if s.local_truncate_records == 0:
        return None
    return TopicTruncation(
        pipeline,
        s.kafka_bootstrap,
        (s.topic_orders, s.topic_inventory, s.topic_tracking),
        s.kafka_partitions,
        producers=producers,
        max_records=s.local_truncate_records,
        registry=registry,
    )
