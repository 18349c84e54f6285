"""Pure parts of the web layer: percentiles, the sample window, verdicts, paging."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from ordercache.health.readiness import (
    BrokerFacts,
    Component,
    Report,
    broker_verdict,
    http_status,
    overall_status,
)
from ordercache.web.read_api import MAX_LIMIT, InvalidParamError, Page, parse_page
from ordercache.web.stats import StatsThresholds, evaluate, view_stats
from ordercache.web.window import (
    SampleWindow,
    buckets,
    by_label,
    delta,
    quantile,
    ratio,
    take_samples,
    total,
)

INF = math.inf


# --------------------------------------------------------------------------- quantile
@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        # no data
        (0.5, [], None),
        (0.5, [(1.0, 0.0), (INF, 0.0)], None),
        # everything in the first bucket: interpolate from 0
        (0.5, [(1.0, 10.0), (INF, 10.0)], 0.5),
        (0.99, [(1.0, 10.0), (INF, 10.0)], 0.99),
        (1.0, [(1.0, 10.0), (INF, 10.0)], 1.0),
        # uniform over two buckets
        (0.5, [(1.0, 5.0), (2.0, 10.0), (INF, 10.0)], 1.0),
        (0.75, [(1.0, 5.0), (2.0, 10.0), (INF, 10.0)], 1.5),
        (0.25, [(1.0, 5.0), (2.0, 10.0), (INF, 10.0)], 0.5),
        # empty middle bucket is skipped
        (0.9, [(1.0, 5.0), (2.0, 5.0), (4.0, 10.0), (INF, 10.0)], 3.6),
        # rank in +Inf: the highest finite bound (PromQL)
        (0.99, [(1.0, 5.0), (2.0, 6.0), (INF, 10.0)], 2.0),
        # only +Inf
        (0.5, [(INF, 4.0)], None),
        # exact bucket boundary
        (0.5, [(0.001, 50.0), (0.005, 100.0), (INF, 100.0)], 0.001),
        # millisecond buckets of the cache histograms
        (0.5, [(0.0005, 0.0), (0.001, 80.0), (0.0025, 100.0), (INF, 100.0)], 0.0008125),
        (0.99, [(0.0005, 0.0), (0.001, 80.0), (0.0025, 100.0), (INF, 100.0)], 0.002425),
    ],
)
def test_quantile(q: float, cumulative: list[tuple[float, float]], expected: float | None) -> None:
    got = quantile(q, cumulative)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.01])
def test_quantile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        quantile(q, [(1.0, 1.0), (INF, 1.0)])


def test_quantile_matches_a_real_histogram() -> None:
    reg = CollectorRegistry()
    h = Histogram("lat_seconds", "x", ["view"], buckets=(0.001, 0.01, 0.1), registry=reg)
    for _ in range(90):
        h.labels("order").observe(0.0005)
    for _ in range(10):
        h.labels("order").observe(0.05)
    for _ in range(100):
        h.labels("history").observe(0.05)
    s = take_samples(reg, {"lat_seconds"})
    b = buckets(s, "lat_seconds", view="order")
    assert b == [(0.001, 90.0), (0.01, 90.0), (0.1, 100.0), (INF, 100.0)]
    assert quantile(0.5, b) == pytest.approx(0.001 * 50 / 90)
    assert quantile(0.99, b) == pytest.approx(0.01 + 0.09 * 9 / 10)
    # both views together
    assert buckets(s, "lat_seconds")[-1] == (INF, 200.0)


# --------------------------------------------------------------------------- samples
def test_take_samples_delta_total_by_label() -> None:
    reg = CollectorRegistry()
    c = Counter("reqs", "x", ["view", "result"], registry=reg)
    c.labels("order", "hit").inc(3)
    c.labels("order", "miss").inc(1)
    c.labels("inventory", "hit").inc(2)
    before = take_samples(reg, {"reqs"})
    assert all(not name.endswith("_created") for name, _ in before)
    c.labels("order", "hit").inc(7)
    c.labels("history", "bypass").inc(4)
    after = take_samples(reg, {"reqs"})
    d = delta(after, before)
    assert total(d, "reqs_total") == 11
    assert total(d, "reqs_total", view="order") == 7
    assert total(d, "reqs_total", view="order", result="miss") == 0
    assert by_label(d, "reqs_total", "result") == {"hit": 7, "miss": 0, "bypass": 4}
    assert by_label(after, "reqs_total", "view", result="hit") == {"order": 10, "inventory": 2}
    assert take_samples(reg, {"other"}) == {}


def test_delta_treats_a_decrease_as_a_reset() -> None:
    k = ("x_total", ())
    assert delta({k: 3.0}, {k: 10.0}) == {k: 3.0}
    assert delta({k: 12.0}, {k: 10.0}) == {k: 2.0}
    assert delta({k: 5.0}, {}) == {k: 5.0}


@pytest.mark.parametrize(
    ("part", "whole", "expected"), [(1, 2, 0.5), (0, 0, None), (3, 3, 1.0), (0, 5, 0.0)]
)
def test_ratio(part: float, whole: float, expected: float | None) -> None:
    assert ratio(part, whole) == expected


# --------------------------------------------------------------------------- window
def _s(v: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {("c_total", ()): v}


def test_window_covers_the_span_and_drops_older_snapshots() -> None:
    w = SampleWindow(span=60, interval=10)
    for t in range(0, 200, 10):
        w.add(float(t), _s(t))  # the counter equals the time: delta == seconds covered
    assert len(w) <= 60 // 10 + 2
    covered, d = w.recent(195.0, _s(195))
    assert covered == pytest.approx(55.0)  # baseline at t=140 (the oldest inside 60 s)
    assert d[("c_total", ())] == pytest.approx(55.0)


def test_window_without_baseline_counts_from_zero() -> None:
    w = SampleWindow(span=300, interval=10)
    covered, d = w.recent(5.0, _s(42))
    assert covered == 0.0
    assert d == _s(42)


def test_window_young_process_uses_its_first_snapshot() -> None:
    w = SampleWindow(span=300, interval=10)
    w.add(100.0, _s(0))
    w.add(110.0, _s(10))
    covered, d = w.recent(115.0, _s(30))
    assert covered == 15.0
    assert d == _s(30)


def test_window_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="positive"):
        SampleWindow(span=0)


# --------------------------------------------------------------------------- stats verdict
def _view(requests: int, hit_ratio: float | None, p99: float | None) -> dict[str, object]:
    return {"requests": requests, "hit_ratio": hit_ratio, "latency_ms": {"p50": None, "p99": p99}}


T = StatsThresholds()


@pytest.mark.parametrize(
    ("views", "redis_up", "memory", "expected"),
    [
        ({"order": _view(100, 0.9, 2.0)}, True, 0.5, []),
        ({"order": _view(100, 0.9, 2.0)}, True, None, []),
        ({"order": _view(100, 0.3, 2.0)}, True, 0.5, ["order: hit ratio"]),
        # too little traffic to judge
        ({"order": _view(5, 0.0, 900.0)}, True, 0.5, []),
        ({"order": _view(100, 0.9, 80.0)}, True, 0.5, ["order: p99"]),
        ({"order": _view(100, 0.9, 2.0)}, True, 0.95, ["redis memory"]),
        ({"order": _view(100, 0.9, 2.0)}, False, 0.5, ["redis down"]),
        (
            {"order": _view(100, 0.1, 80.0), "inventory": _view(30, 0.2, 1.0)},
            False,
            0.99,
            ["redis down", "redis memory", "order: hit ratio", "order: p99", "inventory: hit"],
        ),
        ({"history": _view(100, None, None)}, True, 0.5, []),
    ],
)
def test_evaluate(
    views: dict[str, dict[str, object]], redis_up: bool, memory: float | None, expected: list[str]
) -> None:
    reasons = evaluate(views, redis_up=redis_up, memory_ratio=memory, thresholds=T)  # type: ignore[arg-type]
    assert len(reasons) == len(expected)
    for reason, prefix in zip(reasons, expected, strict=True):
        assert reason.startswith(prefix)


@pytest.mark.parametrize(
    ("lag", "stall", "expected"),
    [
        ({}, None, []),
        ({"orders.changes": 10_000}, None, []),  # at the threshold: fine
        ({"orders.changes": 10_001, "tracking.updates": 3}, None, ["orders.changes: consumer lag"]),
        (
            {"orders.changes": 20_000},
            "stalled: no commit for 50 s with lag 20000",
            ["pipeline stalled: no commit for 50 s", "orders.changes: consumer lag 20000 > 10000"],
        ),
        ({}, "apply failing: CacheError(NoPermissionError)", ["pipeline apply failing"]),
    ],
)
def test_evaluate_names_lag_and_stall(
    lag: dict[str, int], stall: str | None, expected: list[str]
) -> None:
    views = {"order": _view(100, 0.9, 2.0)}
    reasons = evaluate(
        views,  # type: ignore[arg-type]
        redis_up=True,
        memory_ratio=0.1,
        thresholds=T,
        consumer_lag=lag,
        stall=stall,
    )
    assert len(reasons) == len(expected), reasons
    for reason, prefix in zip(reasons, expected, strict=True):
        assert reason.startswith(prefix)


def test_view_stats_from_registry_delta() -> None:
    from ordercache.cache.metrics import CacheMetrics
    from ordercache.web.metrics import WebMetrics
    from ordercache.web.stats import WINDOWED

    reg = CollectorRegistry()
    cm = CacheMetrics.create(reg)
    wm = WebMetrics.create(reg)
    base = take_samples(reg, WINDOWED)
    cm.requests.labels("order", "hit").inc(6)
    cm.requests.labels("order", "negative_hit").inc(2)
    cm.requests.labels("order", "miss").inc(2)
    for _ in range(10):
        wm.read_seconds.labels("order", "hit").observe(0.0004)
    d = delta(take_samples(reg, WINDOWED), base)
    v = view_stats(d, "order")
    assert v["requests"] == 10
    assert v["hit_ratio"] == 0.8
    assert v["results"] == {"bypass": 0, "hit": 6, "miss": 2, "negative_hit": 2}
    assert 0.25 < v["latency_ms"]["p50"] <= 0.5
    assert v["db_load_ms"] == {"p50": None, "p99": None}
    assert view_stats(d, "inventory")["hit_ratio"] is None


# --------------------------------------------------------------------------- health verdict
def _c(name: str, status: str) -> Component:
    return Component(name, status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "expected", "code"),
    [
        ({"redis": "ok", "database": "ok", "broker": "ok"}, "ok", 200),
        ({"redis": "ok", "database": "ok", "broker": "skipped"}, "ok", 200),
        ({"redis": "down", "database": "ok", "broker": "ok"}, "degraded", 200),
        ({"redis": "down", "database": "ok", "broker": "skipped"}, "degraded", 200),
        ({"redis": "ok", "database": "down", "broker": "ok"}, "down", 503),
        ({"redis": "ok", "database": "ok", "broker": "down"}, "down", 503),
        ({"redis": "down", "database": "down", "broker": "down"}, "down", 503),
    ],
)
def test_overall_status(statuses: dict[str, str], expected: str, code: int) -> None:
    comps = {n: _c(n, s) for n, s in statuses.items()}
    status = overall_status(comps)
    assert status == expected
    assert http_status(status) == code
    body = Report(status, comps).as_dict()
    assert body["failed"] == sorted(n for n, s in statuses.items() if s == "down")
    assert set(body["components"]) == set(statuses)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (BrokerFacts(True, True, 4, False), ("ok", None)),
        (BrokerFacts(True, True, 0, True), ("ok", None)),
        (BrokerFacts(True, True, 0, False), ("down", "no partitions assigned")),
        (BrokerFacts(True, False, 4, True), ("down", "pipeline not running")),
        (
            BrokerFacts(False, True, 4, True, "KafkaConnectionError"),
            ("down", "KafkaConnectionError"),
        ),
        (BrokerFacts(False, True, 4, True), ("down", "unreachable")),
    ],
)
def test_broker_verdict(facts: BrokerFacts, expected: tuple[str, str | None]) -> None:
    assert broker_verdict(facts) == expected


def test_component_dict_has_no_empty_fields() -> None:
    assert Component("redis", "ok").as_dict() == {"status": "ok"}
    got = Component("redis", "down", 1.23456, "timeout", {"breaker": "open"}).as_dict()
    assert got == {"status": "down", "latency_ms": 1.235, "error": "timeout", "breaker": "open"}


# --------------------------------------------------------------------------- paging
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, Page(20, 0)),
        ({"limit": "5"}, Page(5, 0)),
        ({"limit": "5", "offset": "10"}, Page(5, 10)),
        ({"offset": "95"}, Page(20, 95)),
        ({"limit": str(MAX_LIMIT)}, Page(MAX_LIMIT, 0)),
        ({"offset": "0"}, Page(20, 0)),
    ],
)
def test_parse_page(query: dict[str, str], expected: Page) -> None:
    assert parse_page(query) == expected


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "٣"}, "limit"),  # a non-ASCII digit
        ({"offset": "-5"}, "offset"),
        ({"offset": "99999999999999999999"}, "offset"),
        ({"offset": " 1"}, "offset"),
    ],
)
def test_parse_page_rejects(query: dict[str, str], name: str) -> None:
    with pytest.raises(InvalidParamError) as info:
        parse_page(query)
    assert info.value.name == name


@pytest.mark.parametrize(
    ("page", "within"),
    [(Page(20, 0), True), (Page(20, 80), True), (Page(20, 81), False), (Page(100, 0), True)],
)
def test_page_within_cached_window(page: Page, within: bool) -> None:
    assert page.within(100) is within


# --------------------------------------------------------------------------- stats page (no I/O)
def test_stats_reporter_renders_window_pipeline_streams_and_verdict() -> None:
    from prometheus_client import Gauge

    from ordercache.agents.metrics import PipelineMetrics
    from ordercache.agents.progress import ProgressTracker
    from ordercache.cache.breaker import CircuitBreaker
    from ordercache.cache.metrics import CacheMetrics
    from ordercache.health.redis_info import RedisInfo, RedisMonitor
    from ordercache.redisconn.client import create_redis
    from ordercache.web.metrics import WebMetrics
    from ordercache.web.stats import StatsReporter
    from tests.conftest import make_settings

    reg = CollectorRegistry()
    cm, wm, pm = CacheMetrics.create(reg), WebMetrics.create(reg), PipelineMetrics.create(reg)
    lag = Gauge("ordercache_stream_group_lag", "x", ["stream", "group"], registry=reg)
    handle = create_redis(make_settings(redis_url="redis://127.0.0.1:1/0", redis_max_connections=8))
    monitor = RedisMonitor(handle.client)
    monitor.up = True
    monitor.info = RedisInfo(used_memory=95, maxmemory=100, connected_clients=2)
    now = [1000.0]
    reporter = StatsReporter(
        reg,
        redis=handle,
        monitor=monitor,
        breaker=CircuitBreaker(),
        pipeline=type(
            "P",
            (),
            {"assigned": {1, 2, 3}, "progress": ProgressTracker(), "stall_reason": lambda _: None},
        )(),
        thresholds=StatsThresholds(min_requests=10),
        clock=lambda: now[0],
    )
    cm.requests.labels("order", "hit").inc(100)  # before the window: not counted
    pm.events.labels("orders.changes", "applied").inc(7)
    reporter.sample()

    now[0] += 42
    cm.requests.labels("order", "hit").inc(3)
    cm.requests.labels("order", "miss").inc(9)
    for _ in range(12):
        wm.read_seconds.labels("order", "miss").observe(0.2)
    pm.events.labels("orders.changes", "applied").inc(5)
    pm.dlq.labels("orders.changes", "bad_json").inc(2)
    pm.consumer_lag.labels("orders.changes").set(17)
    lag.labels("tracking:0", "notify").set(4)

    page = reporter.render()
    assert page["window"] == {"seconds": 42.0, "span_seconds": 300.0}
    order = page["views"]["order"]
    assert order["requests"] == 12
    assert order["hit_ratio"] == 0.25
    # 12 observations in the (0.1, 0.25] bucket: rank 11.88 of 12
    assert order["latency_ms"]["p99"] == pytest.approx(100 + 150 * 11.88 / 12)
    assert page["pipeline"]["events_applied"] == 12
    assert page["pipeline"]["events_applied_window"] == 5
    assert page["pipeline"]["dlq_messages"] == 2
    assert page["pipeline"]["consumer_lag"] == {"orders.changes": 17}
    assert page["pipeline"]["assigned_partitions"] == 3
    assert page["streams"]["group_lag"] == {"tracking:0/notify": 4}
    assert page["redis"]["memory_ratio"] == 0.95
    assert page["redis"]["pool"] == {"in_use": 0, "idle": 0, "max": 8}
    assert page["cache"] == {"breaker": "closed"}
    assert page["status"] == "degraded"
    assert [r.split(" ")[0] for r in page["reasons"]] == ["redis", "order:", "order:"]

    monitor.up = False
    monitor.info = RedisInfo()
    assert reporter.render()["reasons"][0].startswith("redis down")
