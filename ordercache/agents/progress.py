"""How far behind the change pipeline is, and whether it has stopped moving.

One mechanism serves the lag gauges, the stall gauge, readiness and ``/stats``:

* A timer (:class:`ProgressWatch`, run by the pipeline every ``progress_interval``)
  reads the broker's end offset of **every assigned partition** — also those that
  had no traffic — and compares it with the pipeline's own committed position.
  It does not depend on batches or commits happening, so the lag grows while Redis
  is down and the pipeline holds its batch.
* :class:`ProgressTracker` keeps, per partition, the last committed position, the
  end offset, the lag and since when the partition has been behind without its
  committed offset moving; and the run of consecutive failed apply attempts.
* :func:`stall_verdict` turns those facts into a reason ("stalled: no commit for
  45 s with lag 1234", "apply failing: CacheError(NoPermissionError) …") or None.

The end offset is ``max(ListOffsets(latest), fetch high watermark)``: on Apache
Kafka both are the log end. The bundled Tansu broker answers ListOffsets with the
last batch's base offset + 1, so after a multi-record batch it reads low; the
high watermark of the consumer's last fetch is exact but only moves when the
partition is fetched. The maximum is exact on Kafka and a lower bound on Tansu
that still grows with every produced batch (tests/test_progress.py shows both).

Everything here except :class:`ProgressWatch` is pure (a clock is passed in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Gauge

log = logging.getLogger(__name__)

#: A (topic, partition) pair; aiokafka's ``TopicPartition`` is one.
Partition = tuple[str, int]

#: Consecutive failures of a non-retriable kind (a batch re-read after an unexpected
#: error) after which the pipeline counts as failing at once: such errors do not go
#: away by waiting, and three in a row rule out a one-off.
HARD_FAILURES = 3


def lag_of(end: int | None, position: int | None) -> int | None:
    """Records between the committed ``position`` and the log ``end`` (None: unknown)."""
    if end is None or position is None:
        return None
    return max(0, end - position)


def end_offset(listed: int | None, highwater: int | None) -> int | None:
    """The log end from ListOffsets and the last fetch's high watermark (see above)."""
    known = [x for x in (listed, highwater) if x is not None]
    return max(known) if known else None


def describe_failure(exc: BaseException) -> str:
    """A secret-free name for an apply failure: the class, and its cause's class."""
    cause = exc.__cause__
    name = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    return f"{name}({type(cause).__name__})" if cause is not None else name


@dataclass(frozen=True, slots=True)
class ApplyFailure:
    """A run of consecutive failed attempts to apply (or dead-letter) a batch."""

    first_at: float
    attempts: int
    error: str
    retriable: bool


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    end: int | None
    committed: int | None
    lag: int | None
    #: Seconds behind (lag > 0) without the committed offset moving.
    stalled_seconds: float


@dataclass(frozen=True, slots=True)
class ProgressFacts:
    """What the stall verdict is decided from."""

    connected: bool
    connect_error: str | None
    connect_attempts: int
    lag: int
    stalled_seconds: float
    failure: ApplyFailure | None
    now: float


@dataclass(frozen=True, slots=True)
class StallPolicy:
    #: No commit for this long while behind, or retriable failures for this long.
    stall_seconds: float = 45.0
    hard_failures: int = HARD_FAILURES


def stall_verdict(f: ProgressFacts, policy: StallPolicy) -> str | None:
    """Why the pipeline does not keep the cache true, or None when it does. Pure."""
    if not f.connected:
        err = f" ({f.connect_error})" if f.connect_error else ""
        return f"not connected to the broker{err}, attempt {f.connect_attempts}"
    fail = f.failure
    if fail is not None:
        failing_for = f.now - fail.first_at
        if (not fail.retriable and fail.attempts >= policy.hard_failures) or (
            failing_for >= policy.stall_seconds
        ):
            return (
                f"apply failing: {fail.error}, {fail.attempts} attempts "
                f"in {failing_for:.0f} s, lag {f.lag}"
            )
    if f.lag > 0 and f.stalled_seconds >= policy.stall_seconds:
        return f"stalled: no commit for {f.stalled_seconds:.0f} s with lag {f.lag}"
    return None


@dataclass(slots=True)
class _State:
    committed: int | None = None
    end: int | None = None
    #: When the committed offset last moved (or the partition was first seen).
    moved_at: float = 0.0
    #: When the lag was first seen > 0 since it was last 0.
    behind_since: float | None = None

    def lag(self) -> int | None:
        return lag_of(self.end, self.committed)

    def stalled(self, now: float) -> float:
        lag = self.lag()
        if not lag or self.behind_since is None:
            return 0.0
        return max(0.0, now - max(self.moved_at, self.behind_since))


class ProgressTracker:
    """Per-partition positions, ends and stall clocks; apply failures. No I/O."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._parts: dict[Partition, _State] = {}
        self._failure: ApplyFailure | None = None

    # ---------------------------------------------------------------- inputs
    def retain(self, assigned: Iterable[Partition]) -> list[Partition]:
        """Forget partitions no longer assigned; returns the forgotten ones."""
        keep = {(tp[0], tp[1]) for tp in assigned}
        gone = [tp for tp in self._parts if tp not in keep]
        for tp in gone:
            del self._parts[tp]
        return gone

    def needs_position(self, tp: Partition) -> bool:
        state = self._parts.get((tp[0], tp[1]))
        return state is None or state.committed is None

    def committed(self, offsets: Mapping[Any, int]) -> None:
        """The pipeline committed these next offsets (only what applied)."""
        now = self.clock()
        for tp, offset in offsets.items():
            key = (tp[0], tp[1])
            state = self._parts.setdefault(key, _State(moved_at=now))
            if state.committed != offset:
                state.committed = offset
                state.moved_at = now
            self._settle(state, now)

    def observe(self, tp: Partition, *, end: int | None, position: int | None = None) -> None:
        """A timer reading: the log end, and (first time only) the committed position."""
        now = self.clock()
        key = (tp[0], tp[1])
        state = self._parts.setdefault(key, _State(moved_at=now))
        if position is not None and state.committed is None:
            state.committed = position
            state.moved_at = now
        if end is not None:
            state.end = end
        self._settle(state, now)

    def apply_failed(self, error: str, *, retriable: bool) -> None:
        now = self.clock()
        prev = self._failure
        self._failure = ApplyFailure(
            prev.first_at if prev else now, (prev.attempts if prev else 0) + 1, error, retriable
        )

    def apply_succeeded(self) -> None:
        self._failure = None

    @staticmethod
    def _settle(state: _State, now: float) -> None:
        if state.lag():
            if state.behind_since is None:
                state.behind_since = now
        else:
            state.behind_since = None

    # --------------------------------------------------------------- outputs
    def partitions(self) -> list[PartitionLag]:
        now = self.clock()
        return [
            PartitionLag(t, p, s.end, s.committed, s.lag(), round(s.stalled(now), 1))
            for (t, p), s in sorted(self._parts.items())
        ]

    def topic_lag(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (topic, _), s in self._parts.items():
            out[topic] = out.get(topic, 0) + (s.lag() or 0)
        return out

    def facts(self, *, connected: bool, connect_error: str | None, attempts: int) -> ProgressFacts:
        now = self.clock()
        states = self._parts.values()
        return ProgressFacts(
            connected=connected,
            connect_error=connect_error,
            connect_attempts=attempts,
            lag=sum(s.lag() or 0 for s in states),
            stalled_seconds=max((s.stalled(now) for s in states), default=0.0),
            failure=self._failure,
            now=now,
        )


class OffsetSource(Protocol):
    """The part of aiokafka's consumer the timer reads (``AIOKafkaConsumer``)."""

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...
    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...
    async def committed(self, partition: Any) -> int | None: ...
    def highwater(self, partition: Any) -> int | None: ...


@dataclass(frozen=True)
class ProgressGauges:
    topic_lag: Gauge
    partition_lag: Gauge
    stalled: Gauge


class ProgressWatch:
    """One timer reading: end offsets and positions of the assigned partitions, then
    the gauges. Reading may fail (broker away): the stall clock keeps running."""

    def __init__(self, tracker: ProgressTracker, gauges: ProgressGauges, timeout: float) -> None:
        self.tracker = tracker
        self.gauges = gauges
        self.timeout = timeout
        self._topics: set[str] = set()
        self.last_error: str | None = None

    async def tick(self, consumer: OffsetSource | None, assigned: Iterable[Any]) -> None:
        tps = sorted(assigned)
        for topic, partition in self.tracker.retain(tps):
            self._remove(self.gauges.partition_lag, topic, str(partition))
        if consumer is not None and tps:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._read(consumer, tps)
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the timer must outlive any failure
                error = describe_failure(exc)
                if error != self.last_error:
                    log.warning("consumer lag not read: %s", error)
                self.last_error = error
        self.publish()

    async def _read(self, consumer: OffsetSource, tps: list[Any]) -> None:
        ends = await consumer.end_offsets(tps)
        unknown = [tp for tp in tps if self.tracker.needs_position(tp)]
        positions: dict[Any, int | None] = {tp: await consumer.committed(tp) for tp in unknown}
        # Nothing committed yet: the group starts at the log start (auto_offset_reset).
        fresh = [tp for tp, pos in positions.items() if pos is None]
        if fresh:
            positions.update(await consumer.beginning_offsets(fresh))
        for tp in tps:
            self.tracker.observe(
                tp,
                end=end_offset(ends.get(tp), consumer.highwater(tp)),
                position=positions.get(tp),
            )

    def publish(self) -> None:
        """Set the gauges from the tracker (topics no longer held lose their series)."""
        for p in self.tracker.partitions():
            if p.lag is not None:
                self.gauges.partition_lag.labels(p.topic, str(p.partition)).set(p.lag)
        lags = self.tracker.topic_lag()
        for topic in self._topics - set(lags):
            self._remove(self.gauges.topic_lag, topic)
        for topic, lag in lags.items():
            self.gauges.topic_lag.labels(topic).set(lag)
        self._topics = set(lags)
        self.gauges.stalled.set(
            self.tracker.facts(connected=True, connect_error=None, attempts=0).stalled_seconds
        )

    @staticmethod
    def _remove(gauge: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
