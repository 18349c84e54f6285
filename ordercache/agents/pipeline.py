"""The change-event agent: Kafka change events -> cache invalidations and refreshes.

It runs inside the Faust worker as a service (started and stopped with the app)
and consumes with aiokafka directly — ``getmany`` batches, one Redis pipeline per
batch, a manual commit after the batch applied. Why not a ``@app.agent`` with
``stream.take``: Faust acks an event once the agent moves past it, even when the
processing raised (faust-streaming #315), and its per-event machinery caps a worker
at a few thousand events per second (a reference run: about 4.3k/s, docs/pipeline.md), far from
the target. Owning the commit gives at-least-once by construction:

* the committed offset never passes a record whose cache operation did not apply —
  Redis errors are retried with backoff while the partition waits;
* bad records go to the DLQ (reason, original key/value/headers, source position)
  before the offset moves past them; a tombstone is counted, not an error; a dead
  letter the DLQ refuses for good (too large, or any non-retriable broker error) is
  sent bounded instead (``dlq.bounded``), so no record can hold a partition;
* duplicates and replays are harmless: every cache operation is version-guarded
  and idempotent.

After a Redis restart or failover (a new ``run_id``), the operations applied in the
last ``reapply_window`` seconds are applied again, and the tracking records of that
window are given to the batch hooks again (the stream mirror): asynchronous
replication may have dropped the newest writes. The mirror's dedupe state makes the
replay add only what the new server lacks.

Starting needs no broker: the service connects in the background, retrying with
backoff, so a worker started while the broker is down reports not ready and begins
consuming when the broker appears. Lag and stalls: :mod:`ordercache.agents.progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from aiokafka.structs import RecordMetadata

from ordercache.agents.batch import (
    BatchPlan,
    Decoder,
    IsTombstone,
    Planner,
    Rejected,
    TrackingExtractor,
    Unresolved,
    plan_batch,
)
from ordercache.agents.dlq import DlqRecord, bounded
from ordercache.agents.kafka_clients import start_or_close
from ordercache.agents.metrics import PipelineMetrics
from ordercache.agents.progress import (
    ProgressGauges,
    ProgressTracker,
    ProgressWatch,
    StallPolicy,
    describe_failure,
    stall_verdict,
)
from ordercache.agents.recent import RecentWindow
from ordercache.cache.interface import Cache
from ordercache.cache.ops import CacheOp
from ordercache.errors import OrderCacheError
from ordercache.retry import Backoff
from ordercache.streams.entry import TrackingRecord

log = logging.getLogger(__name__)

#: Operations per pipeline when re-applying after a failover.
REAPPLY_CHUNK = 2000

DeadLetterBuilder = Callable[[Rejected], tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
#: Side effect run after the cache ops of a batch applied (e.g. the tracking mirror).
BatchHook = Callable[[BatchPlan], Awaitable[None]]


@dataclass(frozen=True)
class PipelineConfig:
    bootstrap: list[str]
    topics: tuple[str, ...]
    group_id: str
    dlq_topic: str
    max_records: int = 2000
    poll_ms: int = 20
    #: Retry delays of a batch that did not apply: first delay and cap, seconds.
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    reapply_window: float = 30.0
    failover_check_interval: float = 2.0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    rebalance_timeout_ms: int = 5_000
    #: How long the broker may hold a fetch that has no data: bounds invalidation lag
    #: at low traffic (aiokafka's default, 500 ms, would dominate the p99).
    fetch_max_wait_ms: int = 10
    #: Partitions of the topics created when missing (production creates them ahead).
    partitions: int = 4
    #: How often the consumer refreshes topic metadata. A changed partition count
    #: (topics re-created after a memory-only broker restarted empty, or partitions
    #: added) triggers a rebalance only on a refresh; aiokafka's default is 5 min.
    metadata_max_age_ms: int = 5_000
    #: Delays between attempts to reach the broker at start: first delay and cap, seconds.
    connect_backoff_base: float = 0.5
    connect_backoff_cap: float = 10.0
    #: Time budget of one attempt to reach the broker (topics, clients), seconds.
    connect_timeout: float = 15.0
    #: How often the end offsets of the assigned partitions are read (lag, stalls).
    progress_interval: float = 5.0
    #: Behind without a commit (or failing to apply) this long counts as stalled.
    stall_seconds: float = 45.0
    #: The DLQ producer's ``max_request_size`` (aiokafka's default): larger dead letters
    #: are sent bounded. Keep it at or below the broker's ``message.max.bytes``.
    dlq_max_bytes: int = 1024 * 1024


class ChangePipeline(mode.Service):
    """Consumes change topics and keeps the cache true (see the module docstring)."""

    def __init__(
        self,
        config: PipelineConfig,
        cache: Cache,
        metrics: PipelineMetrics,
        *,
        decode: Decoder,
        plan: Planner,
        is_tombstone: IsTombstone,
        dead_letter: DeadLetterBuilder,
        tracking: TrackingExtractor | None = None,
        hooks: Sequence[BatchHook] = (),
        unresolved: Unresolved | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.cache = cache
        self.metrics = metrics
        self._decode = decode
        self._plan = plan
        self._is_tombstone = is_tombstone
        self._unresolved = unresolved
        self._dead_letter = dead_letter
        self._tracking = tracking
        self._hooks = list(hooks)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._recent = RecentWindow[CacheOp](config.reapply_window)
        self._recent_tracking = RecentWindow[TrackingRecord](config.reapply_window)
        self._run_id: bytes | None = None
        self.batches = 0
        self.assigned: set[TopicPartition] = set()
        self.progress = ProgressTracker()
        self.stall_policy = StallPolicy(config.stall_seconds)
        self._watch = ProgressWatch(
            self.progress,
            ProgressGauges(metrics.consumer_lag, metrics.partition_lag, metrics.stalled),
            timeout=max(2.0, config.progress_interval),
        )
        #: Connected to the broker (clients started); until then, why not.
        self.connected = False
        self.connect_error: str | None = None
        self.connect_attempts = 0

    # ---------------------------------------------------------------- lifecycle
    async def on_start(self) -> None:
        # One attempt now, so that a reachable broker is connected (and the topics
        # exist) once the service has started; a broker that is down must not fail
        # the worker: then the attempts go on in the background.
        connected = await self._try_connect()
        self.add_future(self._main(connected))
        self.add_future(self._watch_progress())

    async def _try_connect(self) -> bool:
        self.connect_attempts += 1
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await self._connect()
        except (KafkaError, OSError, TimeoutError) as exc:
            self.connect_error = describe_failure(exc)
            return False
        self.connected, self.connect_error = True, None
        return True

    async def _main(self, connected: bool) -> None:
        c = self.config
        backoff = Backoff(c.connect_backoff_base, c.connect_backoff_cap)
        while not connected and not self.should_stop:
            delay = backoff.next_delay()
            log.warning(
                "broker not reachable (%s); connect attempt %d failed, next in %.1fs",
                self.connect_error, self.connect_attempts, delay,
            )  # fmt: skip
            await self.sleep(delay)
            if not self.should_stop:
                connected = await self._try_connect()
        if not connected:
            return
        log.info("pipeline connected to the broker")
        self.add_future(self._watch_failover())
        await self._run()

    async def _connect(self) -> None:
        c = self.config
        await ensure_topics(c.bootstrap, [*c.topics, c.dlq_topic], c.partitions)
        if self._run_id is None:
            self._run_id = await self.cache.server_identity()
        producer = AIOKafkaProducer(
            bootstrap_servers=c.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=5,
            max_request_size=c.dlq_max_bytes,
        )
        consumer = AIOKafkaConsumer(
            *c.topics,
            bootstrap_servers=c.bootstrap,
            group_id=c.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=c.max_records,
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            rebalance_timeout_ms=c.rebalance_timeout_ms,
            fetch_max_wait_ms=c.fetch_max_wait_ms,
            metadata_max_age_ms=c.metadata_max_age_ms,
        )
        # A start cut short is closed by start_or_close (aiokafka's bootstrap leaks
        # its connection when cancelled half-way, so it is never cancelled).
        await start_or_close(producer.start(), producer.stop)
        try:
            await start_or_close(consumer.start(), consumer.stop)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer, self._consumer = producer, consumer

    async def on_stop(self) -> None:
        # Each client is closed even if the other fails to (a dead broker makes
        # aiokafka's stop raise); nothing uncommitted is lost either way.
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                await client.stop()
            except KafkaError as exc:
                log.warning("closing a Kafka client failed: %s", exc)

    # ------------------------------------------------------------------- loop
    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self.should_stop:
            try:
                batches = await consumer.getmany(
                    timeout_ms=self.config.poll_ms, max_records=self.config.max_records
                )
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", exc)
                await self.sleep(0.5)
                continue
            assigned = set(consumer.assignment())
            if assigned != self.assigned:
                self.assigned = assigned
                log.info(
                    "pipeline assigned partitions: %s",
                    ",".join(sorted(f"{tp.topic}/{tp.partition}" for tp in assigned)) or "-",
                )
            if not batches:
                continue
            records = [r for recs in batches.values() for r in recs]
            try:
                applied = await self.process(records)
            except Exception as exc:
                # A bug, not bad input (that goes to the DLQ): keep the offsets where
                # they are and read the batch again from the last commit.
                log.exception("batch failed unexpectedly; re-reading it from the last commit")
                self.progress.apply_failed(describe_failure(exc), retriable=False)
                await self._rewind(consumer, batches)
                await self.sleep(1.0)
                continue
            if not applied:
                return  # stopping: nothing committed past what applied
            await self._commit(consumer, batches)

    async def process(self, records: Sequence[Any]) -> bool:
        """Apply one batch; False if the service stopped before it applied."""
        bp = plan_batch(
            records, self._decode, self._plan, self._is_tombstone, self._unresolved,
            tracking=self._tracking,
        )  # fmt: skip
        if not await self._retrying(lambda: self._apply(bp)):
            return False
        if bp.rejected and not await self._retrying(lambda: self._send_dead_letters(bp.rejected)):
            return False
        now_ms = time.time() * 1000
        observe = self.metrics.lag.observe
        for ts in bp.timestamps:
            observe(max(0.0, (now_ms - ts) / 1000))
        for (topic, outcome), n in bp.outcomes.items():
            self.metrics.events.labels(topic, outcome).inc(n)
        for rec, event, reason in bp.unresolved:
            self.metrics.unresolved.labels(rec.topic, reason).inc()
            log.warning(
                "change applied only in part (%s): table=%s op=%s id=%s at %s[%d]@%d;"
                " the entries it cannot name expire with their TTL (docs/events.md)",
                reason, getattr(event, "entity", "?"), getattr(event, "op", "?"),
                getattr(event, "entity_id", None), rec.topic, rec.partition, rec.offset,
            )  # fmt: skip
        self.metrics.batch_size.observe(len(records))
        self.batches += 1
        return True

    async def _apply(self, bp: BatchPlan) -> None:
        if bp.ops:
            await self.cache.apply(bp.ops)
            self._recent.add(bp.ops)
        for hook in self._hooks:
            await hook(bp)
        if bp.tracking and self._hooks:
            self._recent_tracking.add(bp.tracking)

    async def _retrying(self, fn: Callable[[], Awaitable[object]]) -> bool:
        """Run ``fn`` until it succeeds; back off on retriable errors; False if stopping."""
        backoff = Backoff(self.config.backoff_base, self.config.backoff_cap)
        while True:
            try:
                await fn()
                self.progress.apply_succeeded()
                return True
            except (OrderCacheError, KafkaError) as exc:
                if isinstance(exc, OrderCacheError) and not exc.retriable:
                    raise
                self.progress.apply_failed(describe_failure(exc), retriable=True)
                delay = backoff.next_delay()
                self.metrics.retries.inc()
                log.warning(
                    "batch not applied (%s); retry %d in %.2fs", exc, backoff.attempt, delay
                )
                if self.should_stop:
                    return False
                await self.sleep(delay)
                if self.should_stop:
                    return False

    async def _send_dead_letters(self, rejected: Sequence[Rejected]) -> None:
        """Send each rejected record's dead letter; a retriable error raises (the whole
        step is retried, duplicates in the DLQ are harmless), a permanent one makes the
        letter bounded (see :meth:`_send_bounded`)."""
        pending = []
        for r in rejected:
            key, value, headers = self._dead_letter(r)
            record = DlqRecord(key, value, list(headers))
            pending.append((r, record, await self._start_send(record)))
        for r, record, sent in pending:
            try:
                await sent
            except KafkaError as exc:
                if exc.retriable:
                    raise
                await self._send_bounded(r, record, exc)
            self.metrics.dlq.labels(r.record.topic, r.reason).inc()
            log.warning(
                "dead letter: %s[%d]@%d: %s",
                r.record.topic, r.record.partition, r.record.offset, r.reason,
            )  # fmt: skip

    async def _start_send(self, record: DlqRecord) -> asyncio.Future[RecordMetadata]:
        """The send's delivery future; a refusal before sending (aiokafka checks the size
        itself) comes back as a failed future, as the broker's refusals do."""
        assert self._producer is not None
        try:
            fut: asyncio.Future[RecordMetadata] = await self._producer.send(
                self.config.dlq_topic, value=record.value, key=record.key, headers=record.headers
            )
        except KafkaError as exc:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        return fut

    async def _send_bounded(self, r: Rejected, record: DlqRecord, cause: KafkaError) -> None:
        """Send the letter cut to the DLQ limit; if that is refused for good too, one
        without any original bytes (sizes and digests only). A refusal of that last one
        is not the record's fault but the DLQ topic's: it raises and the step retries."""
        name = type(cause).__name__
        last: KafkaError = cause
        for keep_payload in (True, False):
            small = bounded(
                record, limit=self.config.dlq_max_bytes, cause=name, keep_payload=keep_payload
            )
            log.warning(
                "dead letter of %s[%d]@%d refused (%s): sending it bounded (%s)",
                r.record.topic, r.record.partition, r.record.offset, name,
                "value prefix" if keep_payload else "no payload",
            )  # fmt: skip
            try:
                await (await self._start_send(small))
                return
            except KafkaError as exc:
                if exc.retriable:
                    raise
                last = exc
        raise last

    async def _rewind(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        for tp, recs in batches.items():
            if recs:
                consumer.seek(tp, recs[0].offset)

    async def _commit(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batches.items() if recs}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: their new owner re-reads from the last
            # commit and re-applies (idempotent), so nothing is lost.
            log.info("commit skipped (%s); records will be re-applied by the new owner", exc)
            return
        self.progress.committed(offsets)

    # ------------------------------------------------------------ lag, stalls
    async def _watch_progress(self) -> None:
        """Read every assigned partition's end offset on a timer (agents/progress.py)."""
        while not self.should_stop:
            await self._watch.tick(self._consumer, self.assigned)
            await self.sleep(self.config.progress_interval)

    def stall_reason(self) -> str | None:
        """Why this pipeline does not keep the cache true now, or None (no I/O)."""
        facts = self.progress.facts(
            connected=self.connected,
            connect_error=self.connect_error,
            attempts=self.connect_attempts,
        )
        return stall_verdict(facts, self.stall_policy)

    # ------------------------------------------------ emptied topics (local default)
    async def fetched_positions(
        self, topics: Collection[str], since_ms: float = 0
    ) -> dict[TopicPartition, tuple[int, int]] | None:
        """(high watermark, committed offset) of each assigned partition of ``topics``,
        the high watermark from a fetch answered after ``since_ms`` (epoch ms); None
        while some partition has had no such answer."""
        consumer = self._consumer
        if consumer is None:
            return None
        out: dict[TopicPartition, tuple[int, int]] = {}
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            hw = consumer.highwater(tp)
            at = consumer.last_poll_timestamp(tp)
            if hw is None or at is None or at < since_ms:
                return None
            out[tp] = (hw, (await consumer.committed(tp)) or 0)
        return out

    def pause_topics(self, topics: Collection[str]) -> list[TopicPartition]:
        """Stop fetching the assigned partitions of ``topics``; returns them."""
        assert self._consumer is not None
        tps = [tp for tp in self._consumer.assignment() if tp.topic in topics]
        self._consumer.pause(*tps)
        return tps

    async def resume_from_start(self, tps: Sequence[TopicPartition]) -> None:
        """``tps`` were emptied and recreated (offsets start at 0 again): read them
        from offset 0 and commit that, then fetch again."""
        assert self._consumer is not None
        consumer = self._consumer
        for tp in tps:
            consumer.seek(tp, 0)
        try:
            if tps:
                await consumer.commit({tp: 0 for tp in tps})
        except (CommitFailedError, KafkaError) as exc:
            # the broker dropped the old commits with the topics: a restart reads from 0
            log.info("commit of offset 0 skipped (%s)", exc)
        finally:
            consumer.resume(*tps)

    # --------------------------------------------------------- failover replay
    async def _watch_failover(self) -> None:
        """Re-apply recent operations when Redis's identity changes (restart/failover)."""
        while not self.should_stop:
            await self.sleep(self.config.failover_check_interval)
            run_id = await self.cache.server_identity()
            if run_id is None:
                continue
            # The first identity seen counts as a change when operations were applied
            # before it (they may have gone to a server that is gone now); re-applying
            # is idempotent, so erring this way is cheap.
            remembered = bool(self._recent or self._recent_tracking)
            if run_id != self._run_id and (self._run_id is not None or remembered):
                await self.reapply_recent()
                await self.remirror_recent()
            self._run_id = run_id

    async def reapply_recent(self) -> int:
        """Apply the operations of the last ``reapply_window`` seconds again, in chunks
        (one pipeline each, retried like a batch); returns how many."""
        ops = self._recent.items()
        if ops:
            log.warning("Redis changed identity: re-applying %d recent cache operations", len(ops))
            for start in range(0, len(ops), REAPPLY_CHUNK):
                chunk = ops[start : start + REAPPLY_CHUNK]
                if not await self._retrying(functools.partial(self.cache.apply, chunk)):
                    return start  # stopping
                self.metrics.reapplied.inc(len(chunk))
        return len(ops)

    async def remirror_recent(self) -> int:
        """Give the tracking records of the last ``reapply_window`` seconds to the batch
        hooks again, in chunks (retried like a batch); returns how many.

        Each partition's records go in offset order, once (a redelivered batch is
        remembered twice): the mirror skips what the new server still has (watermark,
        event-id dedupe) and appends what it lost, so each event stays in the streams
        exactly once.
        """
        unique = {(r.source, r.offset): r for r in self._recent_tracking.items()}
        records = [unique[k] for k in sorted(unique)]
        if not records:
            return 0
        log.warning("Redis changed identity: re-mirroring %d recent tracking records", len(records))
        for start in range(0, len(records), REAPPLY_CHUNK):
            chunk = BatchPlan(tracking=records[start : start + REAPPLY_CHUNK])
            for hook in self._hooks:
                if not await self._retrying(functools.partial(hook, chunk)):
                    return start  # stopping
            self.metrics.remirrored.inc(len(chunk.tracking))
        return len(records)


async def ensure_topics(bootstrap: list[str], topics: Sequence[str], partitions: int) -> None:
    """Create missing topics (idempotent; existing topics are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await start_or_close(admin.start(), admin.close)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            # Another worker may create them concurrently: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
    finally:
        await admin.close()
