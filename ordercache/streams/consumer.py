"""A consumer-group worker for one Redis stream: at-least-once, never stuck, never dead.

Life of a :class:`StreamConsumer`:

1. create the group (``XGROUP CREATE … MKSTREAM``; BUSYGROUP means it exists);
2. work through its *own* pending entries first (``XREADGROUP … 0``): what it read
   but did not acknowledge before a crash or an error;
3. loop: ``XREADGROUP … >`` with BLOCK and COUNT, call the handler per entry,
   ``XACK`` on success; a failing entry stays pending;
4. every ``claim_interval_s``: ``XAUTOCLAIM`` entries idle longer than
   ``claim_idle_ms`` (from crashed consumers, or its own failed ones) and process
   them; an entry delivered more than ``max_deliveries`` times is moved to the
   dead-letter stream and acknowledged, in one MULTI;
5. NOGROUP (group or stream deleted, Redis restarted empty): re-create the group
   from ``recover_id`` and carry on; connection errors and timeouts: back off and
   retry, then re-read its own pending entries (a read may have been delivered
   server-side while the reply was lost).

``stop()`` lets the current entry finish and be acknowledged; entries read but not
yet handled stay in this consumer's pending list for its next start (or a claim).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from ordercache.errors import OrderCacheError
from ordercache.redisconn.client import AnyRedis
from ordercache.retry import Backoff
from ordercache.streams._redis import TRANSIENT_ERRORS, is_nogroup, safe_block_ms
from ordercache.streams.config import ConsumerConfig
from ordercache.streams.deadletter import dead_letter_fields, move_to_dead_letters
from ordercache.streams.entry import StreamEntry, decode_text
from ordercache.streams.layout import dead_letter_key
from ordercache.streams.metrics import StreamMetrics, refresh_group_gauges
from ordercache.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Failure reasons remembered for dead letters (bounded: entries of one consumer).
_MAX_REMEMBERED_ERRORS = 10_000

RawEntries = list[tuple[bytes, dict[bytes, bytes]]]


class RejectEntry(OrderCacheError):
    """Raised by a handler for an entry that can never succeed: dead-letter it now."""


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One delivery of a stream entry to a handler."""

    stream: str
    entry: StreamEntry
    raw: Mapping[bytes, bytes]
    #: Times the group has delivered this entry, this delivery included.
    deliveries: int

    @property
    def id(self) -> str:
        return self.entry.id


#: The work to do per entry; raising leaves the entry pending for a retry.
Handler = Callable[[StreamMessage], Awaitable[None]]


@dataclass
class ConsumerStats:
    """Counters of one consumer's life (for tests, logs and ``/stats``)."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    groups_created: int = 0
    redis_errors: int = 0
    loop_errors: int = 0


@dataclass
class _Timers:
    next_claim: float = 0.0
    next_metrics: float = 0.0
    claim_cursor: str = "0-0"
    errors: dict[str, str] = field(default_factory=dict)


class StreamConsumer:
    """Consume ``stream`` as ``consumer_name`` in ``group``, handing entries to ``handler``."""

    def __init__(
        self,
        redis: AnyRedis,
        stream: str,
        group: str,
        consumer_name: str,
        handler: Handler,
        config: ConsumerConfig | None = None,
        *,
        metrics: StreamMetrics | None = None,
        label: str | None = None,
        dead_letter_stream: str | None = None,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.name = consumer_name
        self.handler = handler
        self.config = config or ConsumerConfig()
        self.metrics = metrics
        #: Metric label of the stream: its name without the deployment prefix.
        self.label = label or stream.split(":stream:", 1)[-1]
        if metrics is not None:
            # at 0 from the start, so increase() sees the first dead letter and an
            # alert on it does not vanish when this process stops
            metrics.dead_letters.labels(self.label, group)
            metrics.claims.labels(self.label, group)
        #: Same hash tag as the stream, so dead-lettering is one MULTI in one slot.
        self.dead_letter_stream = dead_letter_stream or dead_letter_key(stream)
        self.stats = ConsumerStats()
        self._block_ms = safe_block_ms(redis, self.config.block_ms)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._t = _Timers()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` in a task (kept here, so :meth:`stop` can wait for it)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name=f"stream-consumer:{self.label}")
        return self._task

    async def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the current entry, then return; cancel only after ``timeout``."""
        self._stopping.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            log.warning("stream consumer %s did not stop in %ss; cancelling", self.name, timeout)
            await cancel_and_wait(task)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Consume until :meth:`stop`. Redis errors are retried; nothing escapes but
        cancellation."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        backoff = Backoff(cfg.backoff_base_s, cfg.backoff_cap_s)
        start_id = cfg.start_id
        need_group = need_pending = True
        while not self.stopping:
            try:
                if need_group:
                    await self.ensure_group(start_id)
                    need_group = False
                if need_pending:
                    await self._drain_own_pending()
                    need_pending = False
                now = loop.time()
                if now >= self._t.next_claim:
                    await self._autoclaim()
                    self._t.next_claim = loop.time() + cfg.claim_interval_s
                if now >= self._t.next_metrics:
                    await self.refresh_metrics()
                    self._t.next_metrics = loop.time() + cfg.metrics_interval_s
                if self.stopping:
                    break  # read nothing new once asked to stop
                await self._process(await self._read(">", block=True), fresh=True)
                backoff.reset()
            except ResponseError as exc:
                if not is_nogroup(exc):
                    self.stats.redis_errors += 1
                    log.error("stream %s: Redis refused a command: %s", self.label, exc)
                    await backoff.sleep(self._stopping)
                    continue
                log.warning(
                    "stream %s: group %s is missing; re-creating it from %s",
                    self.label,
                    self.group,
                    cfg.recover_id,
                )
                start_id = cfg.recover_id
                need_group = need_pending = True
                if backoff.attempt:  # repeated NOGROUP: do not spin
                    await backoff.sleep(self._stopping)
                else:
                    backoff.attempt = 1
            except TRANSIENT_ERRORS as exc:
                self.stats.redis_errors += 1
                log.warning("stream %s: Redis unavailable (%s); retrying", self.label, exc)
                need_pending = True
                await backoff.sleep(self._stopping)
            except Exception:  # the worker loop must outlive any bug: log it, go on
                self.stats.loop_errors += 1
                log.exception("stream %s: unexpected error in the consumer loop", self.label)
                need_pending = True
                await backoff.sleep(self._stopping)

    # ------------------------------------------------------------------ group
    async def ensure_group(self, start_id: str | None = None) -> bool:
        """Create the group (and the stream); ``False`` if it already existed."""
        try:
            await self.redis.xgroup_create(
                self.stream, self.group, id=start_id or self.config.start_id, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        self.stats.groups_created += 1
        return True

    # ------------------------------------------------------------------ reading
    async def _read(self, cursor: str, *, block: bool) -> RawEntries:
        resp: Any = await self.redis.xreadgroup(
            self.group,
            self.name,
            {self.stream: cursor},
            count=self.config.count,
            block=self._block_ms if block else None,
        )
        if not resp:
            return []
        entries: RawEntries = resp[0][1]
        return entries

    async def _drain_own_pending(self) -> None:
        """Handle what this consumer read earlier but never acknowledged."""
        cursor = "0"
        while not self.stopping:
            entries = await self._read(cursor, block=False)
            if not entries:
                return
            await self._process(entries, fresh=False)
            cursor = entries[-1][0].decode()

    async def _autoclaim(self) -> None:
        """Take over entries idle longer than ``claim_idle_ms`` and process them."""
        cfg = self.config
        budget = cfg.count * 10  # bounded per sweep: new entries must not starve
        cursor = self._t.claim_cursor
        while budget > 0 and not self.stopping:
            resp: Any = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.name,
                min_idle_time=cfg.claim_idle_ms,
                start_id=cursor,
                count=cfg.count,
            )
            cursor = resp[0].decode() if isinstance(resp[0], bytes) else str(resp[0])
            entries: RawEntries = [e for e in resp[1] if e is not None]
            if entries:
                self.stats.claimed += len(entries)
                if self.metrics is not None:
                    self.metrics.claims.labels(self.label, self.group).inc(len(entries))
                await self._process(entries, fresh=False)
            budget -= max(len(entries), 1)
            if cursor == "0-0":
                break
        self._t.claim_cursor = cursor

    async def _delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1, self.name)
        out: dict[bytes, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                out[row["message_id"]] = int(row["times_delivered"])
        return out

    # ------------------------------------------------------------------ processing
    async def _process(self, entries: RawEntries, *, fresh: bool) -> None:
        if not entries:
            return
        # New entries were delivered once; re-read or claimed ones carry a count.
        counts = {} if fresh else await self._delivery_counts([e[0] for e in entries])
        for raw_id, raw in entries:
            if self.stopping:
                return
            await self._handle(raw_id, raw, counts.get(raw_id, 1))

    async def _handle(self, raw_id: bytes, raw: dict[bytes, bytes], deliveries: int) -> None:
        entry_id = raw_id.decode()
        if not raw:
            # Trimmed away while pending: nothing left to handle.
            log.info("stream %s: pending entry %s was trimmed; acknowledging", self.label, entry_id)
            await self._ack(entry_id)
            return
        msg = StreamMessage(self.stream, StreamEntry(entry_id, decode_text(raw)), raw, deliveries)
        if deliveries > self.config.max_deliveries:
            await self._dead_letter(msg)
            return
        try:
            await self.handler(msg)
        except RejectEntry as exc:
            # The handler knows retrying cannot help (e.g. an undecodable entry).
            self._t.errors.pop(entry_id, None)
            await self._dead_letter(msg, f"rejected: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a failing entry must not stop the stream
            self.stats.failed += 1
            errors = self._t.errors
            if len(errors) >= _MAX_REMEMBERED_ERRORS:  # forget the oldest (claimed away?)
                errors.pop(next(iter(errors)))
            errors[entry_id] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning(
                "stream %s: handler failed on %s (delivery %d): %s",
                self.label,
                entry_id,
                deliveries,
                exc,
            )
            return
        await self._ack(entry_id)
        self._t.errors.pop(entry_id, None)
        self.stats.processed += 1

    async def _ack(self, entry_id: str) -> None:
        """XACK, retried: a handled entry left pending would be handled again."""
        backoff = Backoff(self.config.backoff_base_s, self.config.backoff_cap_s)
        attempts = 0
        while True:
            try:
                await self.redis.xack(self.stream, self.group, entry_id)
                return
            except TRANSIENT_ERRORS as exc:
                attempts += 1
                if self.stopping and attempts >= 3:
                    log.warning("stream %s: giving up ack of %s: %s", self.label, entry_id, exc)
                    return
                await backoff.sleep()

    async def _dead_letter(self, msg: StreamMessage, reason: str | None = None) -> None:
        """Move ``msg`` to the dead-letter stream and acknowledge it, atomically."""
        if reason is None:
            last_error = self._t.errors.pop(msg.id, None)
            reason = f"delivered {msg.deliveries} times (max {self.config.max_deliveries})"
            if last_error:
                reason += f"; last error: {last_error}"
        fields = dead_letter_fields(
            msg.raw,
            reason=reason,
            entry_id=msg.id,
            deliveries=msg.deliveries,
            group=self.group,
            stream=self.stream,
            consumer=self.name,
        )
        await move_to_dead_letters(
            self.redis,
            stream=self.stream,
            group=self.group,
            entry_id=msg.id,
            dead_letter_stream=self.dead_letter_stream,
            fields=fields,
            maxlen=self.config.dead_letter_maxlen,
        )
        self.stats.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.dead_letters.labels(self.label, self.group).inc()
        log.error(
            "stream %s: entry %s moved to %s: %s",
            self.label,
            msg.id,
            self.dead_letter_stream,
            reason,
        )

    # ------------------------------------------------------------------ metrics
    async def refresh_metrics(self) -> None:
        """Update the length, lag, pending and oldest-idle gauges (one round trip)."""
        if self.metrics is None:
            return
        await refresh_group_gauges(
            self.redis, self.metrics, stream=self.stream, label=self.label, group=self.group
        )
