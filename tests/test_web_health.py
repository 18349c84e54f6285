"""Liveness and readiness over HTTP against real workers, and the broker check in-process.

* a worker on a private redis-server (its change pipeline makes the broker
  component count): ok -> Redis killed: degraded (200) and reads
  still served (``X-Cache: bypass``) -> Redis restarted on the same port: ok again;
* a worker whose database is unreachable: not ready (503) naming ``database``,
  reads answer 503, and the database password appears nowhere;
* the broker component with a real change pipeline: ok when it holds partitions,
  down when the pipeline does not run or the broker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from redis import exceptions as redis_errors

from ordercache.agents.metrics import PipelineMetrics
from ordercache.agents.pipeline import ChangePipeline, PipelineConfig
from ordercache.app.context import AppContext
from ordercache.app.wiring import health_checker
from ordercache.health.readiness import HealthConfig
from ordercache.local.services import ManagedProcess, free_port, start_redis_server, start_tansu
from ordercache.web.metrics import WebMetrics
from tests.conftest import unique
from tests.web_harness import (
    Reply,
    Seeded,
    Worker,
    get,
    metrics_of,
    sample,
    seed,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

DB_PASSWORD = "s3cret-Pw-4-health"
CONNECTION_ERRORS = {"ConnectionError", "TimeoutError", "timeout", "CacheError"}


def _env(kafka_broker: str, **extra: Any) -> dict[str, Any]:
    topics = unique("th")
    return {
        "kafka_broker": kafka_broker,
        "kafka_partitions": 1,
        "app_id": unique("oc-health-"),
        "redis_key_prefix": unique("h"),
        "topic_orders": f"{topics}.orders",
        "topic_inventory": f"{topics}.inventory",
        "topic_tracking": f"{topics}.tracking",
        "topic_dlq": f"{topics}.dlq",
        **extra,
    }


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[list[ManagedProcess]]:
    """A private redis-server (a list: the test replaces it after a restart)."""
    procs = [start_redis_server()]
    yield procs
    for p in procs:
        p.cleanup()


@pytest.fixture(scope="module")
def workers(
    pg_schema: str,
    kafka_broker: str,
    redis_proc: list[ManagedProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Worker]]:
    """Both workers start at once (each start-up waits on the broker)."""
    good = start_worker(
        _env(
            kafka_broker,
            redis_url=f"redis://{redis_proc[0].url}/0",
            database_url=pg_schema,
            # fail fast while Redis is down: the breaker opens after 2 errors
            breaker_failures=2,
            breaker_reset_seconds=0.5,
        ),
        tmp_path_factory.mktemp("good"),
    )
    bad_db = start_worker(
        _env(
            kafka_broker,
            redis_url=f"redis://{redis_proc[0].url}/0",
            database_url=f"postgresql+asyncpg://ordercache:{DB_PASSWORD}@127.0.0.1:1/nowhere",
        ),
        tmp_path_factory.mktemp("bad-db"),
    )
    yield {"good": good, "bad_db": bad_db}
    good.stop()
    bad_db.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def seeded(pg_schema: str) -> Seeded:
    return await seed(pg_schema, history_orders=3)


def _status(expected: str) -> Any:
    def accept(r: Reply) -> bool:
        return r.status in (200, 503) and r.json().get("status") == expected

    return accept


# --------------------------------------------------------------------------- worker on a private Redis
async def test_live_and_ready(http: aiohttp.ClientSession, workers: dict[str, Worker]) -> None:
    w = workers["good"]
    live = await wait_for(http, w, "/health/live", lambda r: r.status == 200, timeout=90)
    assert live.json() == {"status": "ok"}
    ready = await wait_for(http, w, "/health/ready", lambda r: r.status == 200, timeout=30)
    body = ready.json()
    assert body["status"] == "ok"
    assert body["failed"] == []
    comps = body["components"]
    assert comps["redis"]["status"] == "ok"
    assert comps["redis"]["latency_ms"] >= 0
    assert comps["redis"]["breaker"] == "closed"
    assert comps["database"]["status"] == "ok"
    # the worker's change pipeline holds its three topics' single partitions
    assert comps["broker"]["status"] == "ok"
    assert comps["broker"]["partitions"] == 3
    assert ready.headers["Cache-Control"] == "no-store"


async def test_redis_outage_degrades_and_recovers(
    http: aiohttp.ClientSession,
    workers: dict[str, Worker],
    redis_proc: list[ManagedProcess],
    seeded: Seeded,
) -> None:
    w = workers["good"]
    await wait_for(http, w, "/health/ready", _status("ok"), timeout=90)
    order_url = f"{w.base}/orders/{seeded.order_id}"
    first = await get(http, order_url)
    assert (first.status, first.cache) == (200, "miss")
    assert (await get(http, order_url)).cache == "hit"

    redis_proc[0].kill()

    degraded = await get(http, w.base + "/health/ready")
    assert degraded.status == 200
    body = degraded.json()
    assert body["status"] == "degraded"
    assert body["failed"] == ["redis"]
    assert body["components"]["redis"]["status"] == "down"
    assert body["components"]["redis"]["error"] in CONNECTION_ERRORS
    assert body["components"]["database"]["status"] == "ok"

    # reads go on from the database
    for _ in range(4):
        r = await get(http, order_url)
        assert (r.status, r.cache) == (200, "bypass")
        assert r.json() == first.json()
    assert (await get(http, f"{w.base}/orders/abc")).status == 400
    missing = await get(http, f"{w.base}/orders/987654321")
    assert (missing.status, missing.cache) == (404, "bypass")

    stats = await wait_for(
        http, w, "/stats", lambda r: r.json()["status"] == "degraded", timeout=20
    )
    assert any(reason.startswith("redis down") for reason in stats.json()["reasons"])
    assert stats.json()["redis"]["up"] is False

    def redis_down(r: Reply) -> bool:
        return sample(metrics_of(r.body.decode()), "ordercache_redis_up") == 0

    scraped = metrics_of(
        (await wait_for(http, w, "/metrics", redis_down, timeout=20)).body.decode()
    )
    assert sample(scraped, "ordercache_health_status") in (1, 2)  # set by the last evaluation
    await get(http, w.base + "/health/ready")
    scraped = metrics_of((await get(http, w.base + "/metrics")).body.decode())
    assert sample(scraped, "ordercache_health_status") == 1

    # the same port again: ok without a worker restart
    redis_proc.append(start_redis_server(port=redis_proc[0].port))
    back = await wait_for(http, w, "/health/ready", _status("ok"), timeout=30)
    assert back.status == 200
    assert back.json()["failed"] == []

    # the breaker closes on the next reads: the cache fills again (the new server is empty)
    await wait_for(http, w, f"/orders/{seeded.order_id}", lambda r: r.cache == "hit", timeout=30)
    await wait_for(http, w, "/stats", lambda r: r.json()["redis"]["up"] is True, timeout=20)

    def redis_up(r: Reply) -> bool:
        return sample(metrics_of(r.body.decode()), "ordercache_redis_up") == 1

    await wait_for(http, w, "/metrics", redis_up, timeout=20)


# --------------------------------------------------------------------------- worker without a database
async def test_database_down_is_not_ready(
    http: aiohttp.ClientSession, workers: dict[str, Worker]
) -> None:
    w = workers["bad_db"]
    live = await wait_for(http, w, "/health/live", lambda r: r.status == 200, timeout=90)
    assert live.json() == {"status": "ok"}

    # once the pipeline holds its partitions, the database is the only failure
    ready = await wait_for(
        http,
        w,
        "/health/ready",
        lambda r: r.json()["components"]["broker"]["status"] == "ok",
        timeout=60,
    )
    assert ready.status == 503
    body = ready.json()
    assert body["status"] == "down"
    assert body["failed"] == ["database"]
    assert body["components"]["database"]["status"] == "down"
    assert body["components"]["database"]["error"]
    assert body["components"]["redis"]["status"] in ("ok", "down")  # the module's Redis

    read = await get(http, w.base + "/orders/1")
    assert read.status == 503
    assert read.json() == {"error": "database unavailable", "view": "order"}

    scraped = await get(http, w.base + "/metrics")
    assert sample(metrics_of(scraped.body.decode()), "ordercache_health_status") == 2
    stats = await get(http, w.base + "/stats")
    for reply in (ready, read, scraped, stats):
        text = reply.body.decode()
        assert DB_PASSWORD not in text
        assert "postgresql" not in text
        assert "nowhere" not in text
    assert DB_PASSWORD not in w.log_tail(10_000)


# --------------------------------------------------------------------------- broker component
def _pipeline(ctx: AppContext, bootstrap: str) -> ChangePipeline:
    name = unique("hb")
    return ChangePipeline(
        PipelineConfig(
            bootstrap=[bootstrap],
            topics=(f"{name}.changes",),
            group_id=f"{name}-group",
            dlq_topic=f"{name}.dlq",
            partitions=2,
            rebalance_timeout_ms=2000,
            session_timeout_ms=6000,
        ),
        ctx.cache,
        PipelineMetrics.create(ctx.registry),
        decode=lambda topic, key, value, headers: value,
        plan=lambda event: [],
        is_tombstone=lambda event: False,
        dead_letter=lambda rejected: (None, None, []),
    )


async def _wait_assigned(pipeline: ChangePipeline, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not pipeline.assigned:
            await asyncio.sleep(0.1)


async def _stop(pipeline: ChangePipeline) -> None:
    try:
        async with asyncio.timeout(30):
            await pipeline.stop()
    except TimeoutError:
        pass


async def test_broker_component_with_a_pipeline(ctx: AppContext, kafka_broker: str) -> None:
    pipeline = _pipeline(ctx, kafka_broker)
    checker = health_checker(
        ctx, WebMetrics.create(ctx.registry), pipeline=pipeline, config=HealthConfig()
    )

    # registered but not running: the worker would not keep the cache true
    report = await checker.ready()
    assert (report.status, report.http_status) == ("down", 503)
    assert report.components["broker"].status == "down"
    assert report.components["broker"].error == "pipeline not running"

    await pipeline.start()
    try:
        await _wait_assigned(pipeline)
        report = await checker.ready()
        assert report.status == "ok", report.as_dict()
        broker = report.as_dict()["components"]["broker"]
        assert broker["status"] == "ok"
        assert broker["partitions"] == 2
        assert ctx.registry.get_sample_value("ordercache_health_status") == 0
    finally:
        await _stop(pipeline)


async def test_broker_hung_is_not_ready(ctx: AppContext) -> None:
    """A broker that stops answering (SIGSTOP): the metadata request times out."""
    tansu = start_tansu()
    pipeline = _pipeline(ctx, tansu.url)
    checker = health_checker(
        ctx,
        WebMetrics.create(ctx.registry),
        pipeline=pipeline,
        config=HealthConfig(broker_timeout=1.0),
    )
    try:
        await pipeline.start()
        await _wait_assigned(pipeline)
        # Healthy first (a busy machine may need more than one try within the budget).
        deadline = asyncio.get_running_loop().time() + 30
        while (before := await checker.ready()).status != "ok":
            assert asyncio.get_running_loop().time() < deadline, before.as_dict()
            await asyncio.sleep(0.2)

        os.kill(tansu.proc.pid, signal.SIGSTOP)
        try:
            report = await checker.ready()
        finally:
            os.kill(tansu.proc.pid, signal.SIGCONT)
        assert (report.status, report.http_status) == ("down", 503)
        assert report.as_dict()["failed"] == ["broker"]
        assert report.components["broker"].error == "timeout"
        # the consumer still holds its assignment: on its own that proves nothing
        assert pipeline.assigned
        assert ctx.registry.get_sample_value("ordercache_health_status") == 2
    finally:
        await _stop(pipeline)
        tansu.cleanup()


async def test_broker_unreachable_is_not_ready(ctx: AppContext) -> None:
    """Nothing listens at the pipeline's bootstrap address: connection refused."""
    checker = health_checker(
        ctx, WebMetrics.create(ctx.registry), pipeline=_pipeline(ctx, f"127.0.0.1:{free_port()}")
    )
    report = await checker.ready()
    assert (report.status, report.http_status) == ("down", 503)
    broker = report.components["broker"]
    assert broker.status == "down"
    assert broker.error == "KafkaConnectionError"
    assert report.components["redis"].status == "ok"
    assert report.components["database"].status == "ok"


async def test_readiness_does_not_wait_behind_a_saturated_read_pool(ctx: AppContext) -> None:
    """Every connection of the read path's pool is taken: reads wait, the probe does not."""
    checker = health_checker(ctx, WebMetrics.create(ctx.registry))
    pool = ctx.redis.client.connection_pool
    held = [await pool.get_connection() for _ in range(pool.max_connections)]
    try:
        # the read pool is really exhausted: a command through it cannot get a connection
        with pytest.raises(redis_errors.ConnectionError):
            async with asyncio.timeout(5):
                await ctx.redis.client.ping()
        async with asyncio.timeout(3):
            report = await checker.ready()
        assert report.components["redis"].status == "ok", report.as_dict()
        assert report.status == "ok"
    finally:
        for conn in held:
            await pool.release(conn)


async def test_readiness_does_not_wait_behind_a_busy_database_pool(ctx: AppContext) -> None:
    """Every connection the read path's engine may open is held: the check has its own."""
    checker = health_checker(ctx, WebMetrics.create(ctx.registry))
    limit = ctx.engine.pool.size() + ctx.engine.pool._max_overflow  # type: ignore[attr-defined]
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(limit):
            await stack.enter_async_context(ctx.engine.connect())
        with pytest.raises(TimeoutError):  # the shared pool is really exhausted
            async with asyncio.timeout(1):
                await stack.enter_async_context(ctx.engine.connect())
        async with asyncio.timeout(3):
            report = await checker.ready()
        assert report.components["database"].status == "ok", report.as_dict()
