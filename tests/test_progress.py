"""Consumer lag and stall detection: the pure parts as table tests
(ordercache/agents/progress.py), and the end-offset reading against the real broker.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from ordercache.agents.metrics import PipelineMetrics
from ordercache.agents.pipeline import ensure_topics
from ordercache.agents.progress import (
    ApplyFailure,
    ProgressFacts,
    ProgressGauges,
    ProgressTracker,
    ProgressWatch,
    StallPolicy,
    describe_failure,
    end_offset,
    lag_of,
    stall_verdict,
)
from ordercache.errors import CacheError
from ordercache.health.readiness import Component, overall_status, pipeline_status
from tests.conftest import unique


# --------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("end", "position", "lag"),
    [
        (100, 40, 60),
        (100, 100, 0),
        (0, 0, 0),
        # Tansu's ListOffsets after a multi-record batch can read below our position
        (1, 10, 0),
        (None, 5, None),
        (5, None, None),
    ],
)
def test_lag_of(end: int | None, position: int | None, lag: int | None) -> None:
    assert lag_of(end, position) == lag


@pytest.mark.parametrize(
    ("listed", "highwater", "end"),
    [(11, 11, 11), (1, 10, 10), (12, 10, 12), (7, None, 7), (None, 3, 3), (None, None, None)],
)
def test_end_offset_takes_the_larger(listed: int | None, highwater: int | None, end: int) -> None:
    assert end_offset(listed, highwater) == end


def test_describe_failure_names_classes_only() -> None:
    exc = CacheError("Redis call failed: hunter2")
    exc.__cause__ = PermissionError("user secret-user password hunter2")
    assert describe_failure(exc) == "CacheError(PermissionError)"
    assert describe_failure(TimeoutError()) == "timeout"
    assert describe_failure(KeyError("x")) == "KeyError"


# --------------------------------------------------------------------------- verdict
POLICY = StallPolicy(stall_seconds=45)


def _facts(
    *,
    connected: bool = True,
    lag: int = 0,
    stalled: float = 0.0,
    failure: ApplyFailure | None = None,
    now: float = 1000.0,
) -> ProgressFacts:
    return ProgressFacts(connected, "KafkaConnectionError", 4, lag, stalled, failure, now)


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (_facts(), None),
        (_facts(lag=1234, stalled=10), None),  # behind, but moving recently enough
        (_facts(lag=1234, stalled=45), "stalled: no commit for 45 s with lag 1234"),
        (_facts(lag=0, stalled=0), None),
        (
            _facts(connected=False),
            "not connected to the broker (KafkaConnectionError), attempt 4",
        ),
        # a Redis blip: retriable failures, not yet long enough
        (
            _facts(lag=50, failure=ApplyFailure(990.0, 12, "CacheError(ConnectionError)", True)),
            None,
        ),
        (
            _facts(lag=50, failure=ApplyFailure(950.0, 30, "CacheError(ConnectionError)", True)),
            "apply failing: CacheError(ConnectionError), 30 attempts in 50 s, lag 50",
        ),
        # non-retriable (a batch re-read after an unexpected error): three in a row
        (_facts(lag=5, failure=ApplyFailure(998.0, 2, "RedisClusterException", False)), None),
        (
            _facts(lag=5, failure=ApplyFailure(998.0, 3, "RedisClusterException", False)),
            "apply failing: RedisClusterException, 3 attempts in 2 s, lag 5",
        ),
        # failing names the cause rather than the symptom
        (
            _facts(lag=9, stalled=60, failure=ApplyFailure(900.0, 80, "CacheError", True)),
            "apply failing: CacheError, 80 attempts in 100 s, lag 9",
        ),
    ],
)
def test_stall_verdict(facts: ProgressFacts, reason: str | None) -> None:
    assert stall_verdict(facts, POLICY) == reason


@pytest.mark.parametrize(
    ("stall", "redis_ok", "status", "overall"),
    [
        (None, True, "ok", "ok"),
        (None, False, "ok", "degraded"),  # Redis down alone degrades (invariant 4)
        ("stalled: ...", True, "down", "down"),  # stale entries served: not ready
        ("stalled: ...", False, "degraded", "degraded"),  # reads bypass the cache
    ],
)
def test_pipeline_status(stall: str | None, redis_ok: bool, status: str, overall: str) -> None:
    got = pipeline_status(stall, redis_ok)
    assert got == status
    comps = {
        "redis": Component("redis", "ok" if redis_ok else "down"),
        "database": Component("database", "ok"),
        "pipeline": Component("pipeline", got),
    }
    assert overall_status(comps) == overall


# --------------------------------------------------------------------------- tracker
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


A, B = ("orders", 0), ("orders", 1)


def test_tracker_stall_clock_runs_only_while_behind_without_commits() -> None:
    clock = Clock()
    t = ProgressTracker(clock)
    t.observe(A, end=10, position=10)
    t.observe(B, end=0, position=0)  # an idle partition still counts
    assert t.topic_lag() == {"orders": 0}
    assert [p.lag for p in t.partitions()] == [0, 0]

    clock.now = 110
    t.observe(A, end=50)  # events arrive; nothing applies (Redis down)
    clock.now = 140
    t.observe(A, end=90)
    facts = t.facts(connected=True, connect_error=None, attempts=1)
    assert (facts.lag, facts.stalled_seconds) == (80, 30)
    assert [p.lag for p in t.partitions()] == [80, 0]

    t.committed({A: 60})  # progress: the clock restarts
    clock.now = 150
    assert t.facts(connected=True, connect_error=None, attempts=1).stalled_seconds == 10
    t.committed({A: 90})  # caught up
    assert t.facts(connected=True, connect_error=None, attempts=1).stalled_seconds == 0
    assert t.topic_lag() == {"orders": 0}


def test_tracker_position_from_the_broker_only_once() -> None:
    t = ProgressTracker(Clock())
    assert t.needs_position(A)
    t.observe(A, end=5, position=2)
    assert not t.needs_position(A)
    t.observe(A, end=7, position=0)  # a later reading does not move our own position
    assert t.partitions()[0].lag == 5


def test_tracker_forgets_revoked_partitions_and_failures_reset() -> None:
    clock = Clock()
    t = ProgressTracker(clock)
    t.observe(A, end=5, position=0)
    t.observe(B, end=5, position=0)
    assert t.retain([B]) == [A]
    assert [(p.topic, p.partition) for p in t.partitions()] == [B]
    t.apply_failed("CacheError", retriable=True)
    clock.now += 5
    t.apply_failed("CacheError", retriable=True)
    failure = t.facts(connected=True, connect_error=None, attempts=1).failure
    assert failure == ApplyFailure(100.0, 2, "CacheError", True)
    t.apply_succeeded()
    assert t.facts(connected=True, connect_error=None, attempts=1).failure is None


# --------------------------------------------------------------------------- real broker
@pytest.fixture
async def topic(kafka_broker: str) -> str:
    name = unique("lag")
    await ensure_topics([kafka_broker], [name], 3)
    return name


@pytest.mark.kafka
async def test_watch_reads_every_assigned_partition(kafka_broker: str, topic: str) -> None:
    """Lag for all three partitions, two of which never see a record; a multi-record
    batch (where Tansu's ListOffsets reads low) is counted in full once fetched."""
    registry = CollectorRegistry()
    pm = PipelineMetrics.create(registry)
    tracker = ProgressTracker()
    watch = ProgressWatch(
        tracker, ProgressGauges(pm.consumer_lag, pm.partition_lag, pm.stalled), timeout=10
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, linger_ms=50)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_broker,
        group_id=unique("g"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await producer.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        await producer.send_and_wait(topic, b"one", partition=0)
        await watch.tick(consumer, tps)
        assert [p.lag for p in tracker.partitions()] == [1, 0, 0]
        value = registry.get_sample_value
        for p in ("1", "2"):
            labels = {"topic": topic, "partition": p}
            assert value("ordercache_consumer_partition_lag_messages", labels) == 0

        # ten records in one produce batch, then fetched (not committed)
        futures = [await producer.send(topic, b"x", partition=0) for _ in range(10)]
        await asyncio.gather(*futures)
        fetched = 0
        async with asyncio.timeout(20):
            while fetched < 11:
                batch = await consumer.getmany(timeout_ms=500)
                fetched += sum(len(v) for v in batch.values())
        await watch.tick(consumer, tps)
        assert tracker.partitions()[0].lag == 11
        assert value("ordercache_consumer_lag_messages", {"topic": topic}) == 11

        # the pipeline commits: lag 0, without another fetch
        tracker.committed({tps[0]: 11})
        await watch.tick(consumer, tps)
        assert value("ordercache_consumer_lag_messages", {"topic": topic}) == 0

        # partitions revoked: their series go away
        await watch.tick(consumer, tps[:1])
        labels = {"topic": topic, "partition": "2"}
        assert value("ordercache_consumer_partition_lag_messages", labels) is None
    finally:
        await consumer.stop()
        await producer.stop()
