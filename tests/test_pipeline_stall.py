"""Stalls are visible: consumer lag, the stall gauge, readiness and /stats, with the
real broker, a private redis-server and PostgreSQL.

* lag is reported for every assigned partition (most see no traffic), grows while
  Redis is down and the pipeline holds its batch, and returns to 0 after recovery;
  readiness names the stall (degraded: Redis down explains it, reads bypass);
* applies that keep failing while Redis answers — an ACL user without EVALSHA, as a
  cluster-mode pipeline error would (issue 12) — make the worker not ready (503)
  with the reason, and no secret in it; on a standalone server and on a private
  3-primary cluster (every primary answering).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from ordercache.agents.pipeline import ChangePipeline
from ordercache.app.context import AppContext
from ordercache.app.wiring import build_pipeline, health_checker
from ordercache.cache.views import INVENTORY, View
from ordercache.health.readiness import HealthChecker
from ordercache.health.redis_info import RedisMonitor
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.sample.producer import ChangeEventProducer, Topics
from ordercache.web.metrics import WebMetrics
from ordercache.web.stats import StatsReporter, StatsThresholds
from tests.conftest import make_settings, unique
from tests.redis_procs import LocalCluster, start_cluster
from tests.test_cache_cluster import inv as inventory_view
from tests.test_pipeline import inventory_envelope

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ACL_PASSWORD = "acl-Pw-9-stall"


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class Rig:
    """A pipeline, its health checker and an event producer on their own topics."""

    def __init__(self, ctx: AppContext, pipeline: ChangePipeline, producer: ChangeEventProducer):
        self.ctx = ctx
        self.pipeline = pipeline
        self.producer = producer
        self.checker: HealthChecker = health_checker(
            ctx, WebMetrics.create(ctx.registry), pipeline=pipeline
        )

    @property
    def inventory(self) -> str:
        return self.ctx.settings.topic_inventory

    def value(self, name: str, **labels: str) -> float | None:
        return self.ctx.registry.get_sample_value(name, labels)

    def topic_lag(self) -> float | None:
        return self.value("ordercache_consumer_lag_messages", topic=self.inventory)

    async def send(self, pids: range) -> None:
        for pid in pids:
            await self.producer.send_raw(
                self.inventory, str(pid).encode(), inventory_envelope(pid, 1, 5, sku=None)
            )


@pytest.fixture
async def rig_factory(
    kafka_broker: str, pg_schema: str, tmp_path: Any
) -> AsyncIterator[Callable[[str], Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(redis_url: str | None = None, **redis: str) -> Rig:
        """A rig on ``redis_url``, or on the Redis that the ``redis`` settings name."""
        tag = unique("s")
        if redis_url is not None:
            redis["redis_url"] = redis_url
        settings = make_settings(
            **redis,
            redis_key_prefix=tag,
            database_url=pg_schema,
            kafka_broker=kafka_broker,
            app_id=f"oc-{tag}",
            topic_orders=f"{tag}.orders",
            topic_inventory=f"{tag}.inventory",
            topic_tracking=f"{tag}.tracking",
            topic_dlq=f"{tag}.dlq",
            kafka_partitions=2,
            data_dir=tmp_path,
            progress_interval=0.2,
            stall_seconds=2,
            # fail fast while Redis is down
            redis_retry_attempts=0,
            redis_connect_timeout=0.3,
            redis_read_timeout=0.3,
            redis_write_timeout=0.3,
        )
        ctx = AppContext.build(settings)
        pipeline = build_pipeline(ctx, [kafka_broker])
        producer = ChangeEventProducer([kafka_broker], Topics.from_settings(settings))
        await producer.start()
        await pipeline.start()
        rig = Rig(ctx, pipeline, producer)
        made.append(rig)
        await eventually(lambda: len(pipeline.assigned) == 6, timeout=60)
        return rig

    yield make
    for rig in made:
        await rig.producer.stop()
        async with asyncio.timeout(30):
            await rig.pipeline.stop()
        await rig.ctx.aclose()


async def test_lag_of_every_partition_grows_while_redis_is_down_then_returns_to_zero(
    rig_factory: Callable[[str], Awaitable[Rig]], private_redis: ManagedProcess
) -> None:
    rig = await rig_factory(f"redis://{private_redis.url}/0")
    pipeline = rig.pipeline

    # every assigned partition has a lag series, though none has seen a record
    def all_partitions_reported() -> bool:
        return all(
            rig.value("ordercache_consumer_partition_lag_messages", topic=t, partition=str(p)) == 0
            for t, p in pipeline.assigned
        )

    await eventually(all_partitions_reported)
    assert (await rig.checker.ready()).status == "ok"

    private_redis.kill()
    await rig.send(range(1, 21))
    await eventually(lambda: rig.topic_lag() == 20)
    await rig.send(range(21, 31))
    await eventually(lambda: rig.topic_lag() == 30)  # grows while nothing applies

    # the stall is visible: gauge, readiness (degraded: Redis is down too), reason
    await eventually(lambda: (rig.value("ordercache_invalidation_stalled_seconds") or 0) >= 2)
    report = await rig.checker.ready()
    comp = report.components["pipeline"]
    assert comp.status == "degraded", report.as_dict()
    assert comp.error is not None
    assert comp.error.startswith(("apply failing: CacheError", "stalled: no commit for"))
    assert "lag 30" in comp.error
    assert (report.status, report.http_status) == ("degraded", 200)

    # /stats names the stall and the lag over its threshold, per partition too
    page = StatsReporter(
        rig.ctx.registry,
        redis=rig.ctx.redis,
        monitor=RedisMonitor(rig.ctx.health_redis.client),
        breaker=rig.ctx.cache.breaker,
        pipeline=pipeline,
        thresholds=StatsThresholds(max_consumer_lag=25),
    ).render()
    assert page["status"] == "degraded"
    assert any(r.startswith("pipeline ") for r in page["reasons"]), page["reasons"]
    assert f"{rig.inventory}: consumer lag 30 > 25" in page["reasons"]
    parts = page["pipeline"]["partitions"]
    assert len(parts) == 6
    assert sum(v["lag"] for k, v in parts.items() if k.startswith(rig.inventory)) == 30
    assert page["pipeline"]["stall"] == pipeline.stall_reason()

    restarted = start_redis_server(port=private_redis.port)
    try:
        await eventually(lambda: rig.topic_lag() == 0, timeout=60)
        await eventually(lambda: rig.value("ordercache_invalidation_stalled_seconds") == 0)
        assert pipeline.stall_reason() is None
        assert (await rig.checker.ready()).status == "ok"
        # every event applied: each product's inventory invalidation guard exists
        client = aioredis.Redis.from_url(f"redis://{restarted.url}/0")
        try:
            assert await client.dbsize() > 0
        finally:
            await client.aclose()
    finally:
        restarted.cleanup()


@dataclass
class Restricted:
    """Redis where the user ``pipeline`` may not run scripts; its settings, and every
    data node's ``host:port`` (to read their ACL logs)."""

    settings: dict[str, str]
    nodes: list[str]

    async def denied(self) -> set[str]:
        out: set[str] = set()
        for address in self.nodes:
            host, port = address.rsplit(":", 1)
            admin = aioredis.Redis(host=host, port=int(port))
            try:
                out |= {str(entry.get("object")) for entry in await admin.acl_log()}
            finally:
                await admin.aclose()
        return out


def _restrict(nodes: list[str]) -> None:
    for address in nodes:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), socket_timeout=5) as admin:
            admin.execute_command(
                "ACL", "SETUSER", "pipeline", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
                "-evalsha", "-eval",
            )  # fmt: skip


@pytest.fixture(params=["standalone", "cluster"])
def restricted(request: pytest.FixtureRequest) -> Iterator[Restricted]:
    if request.param == "standalone":
        proc = start_redis_server()
        try:
            _restrict([proc.url])
            yield Restricted(
                {"redis_url": f"redis://pipeline:{ACL_PASSWORD}@{proc.url}/0"}, [proc.url]
            )
        finally:
            proc.cleanup()
        return
    cluster = start_cluster(3)
    try:
        nodes = [n.url for n in cluster.nodes]
        _restrict(nodes)
        yield Restricted(
            {
                "redis_mode": "cluster",
                "redis_cluster_nodes": cluster.addresses,
                "redis_username": "pipeline",
                "redis_password": ACL_PASSWORD,
            },
            nodes,
        )
    finally:
        cluster.cleanup()


async def test_apply_failing_while_redis_answers_is_not_ready(
    restricted: Restricted, rig_factory: Callable[..., Awaitable[Rig]]
) -> None:
    """A Redis user that may not run EVALSHA: the probe works, applies never do."""
    rig = await rig_factory(**restricted.settings)
    assert (await rig.checker.ready()).status == "ok"
    await rig.send(range(1, 4))
    await eventually(lambda: rig.pipeline.stall_reason() is not None, timeout=30)
    report = await rig.checker.ready()
    body = report.as_dict()
    assert (report.status, report.http_status) == ("down", 503), body
    assert body["failed"] == ["pipeline"]
    assert body["components"]["redis"]["status"] == "ok"
    reason = body["components"]["pipeline"]["error"]
    assert reason.startswith("apply failing: CacheError(NoPermissionError)"), reason
    assert ACL_PASSWORD not in repr(body)
    assert rig.value("ordercache_health_component_up", component="pipeline") == 0
    assert rig.value("ordercache_health_component_up", component="redis") == 1
    # the denials are Redis's own: the pipeline really was refused
    assert "evalsha" in await restricted.denied()


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A private 3-primary cluster (its slot table gets changed); requested before
    ``rig_factory``, so it outlives the rig's clients."""
    cluster = start_cluster(3)
    yield cluster
    cluster.cleanup()


async def test_a_slot_no_node_serves_holds_the_batch_until_it_is_served_again(
    own_cluster: LocalCluster, rig_factory: Callable[..., Awaitable[Rig]]
) -> None:
    """On a real cluster, an invalidation whose slot no node serves (a primary lost
    without a replica): the pipeline holds its batch and readiness says why; once the
    slot is served again the batch applies and nothing is lost."""
    rig = await rig_factory(redis_mode="cluster", redis_cluster_nodes=own_cluster.addresses)
    cache, keys = rig.ctx.cache, rig.ctx.keys
    pids = range(1, 4)
    for pid in pids:
        await cache.set(INVENTORY, inventory_view(pid, 1))
    key = keys.entry(View.INVENTORY, 2)
    owner = own_cluster.primary_of(key).port
    slot = key_slot(key.encode())
    own_cluster.set_slot(slot, owner=None)
    try:
        for pid in pids:  # each product changes: version 1 -> 5
            await rig.producer.send_raw(
                rig.inventory, str(pid).encode(), inventory_envelope(pid, 5, 9, sku=None)
            )
        await eventually(lambda: rig.pipeline.stall_reason() is not None, timeout=30)
        assert (rig.topic_lag() or 0) > 0
        # with a slot uncovered the cluster refuses every command (it requires full
        # coverage by default): Redis is down too, which explains the stall, and
        # reads bypass to the database: degraded, not down
        report = await rig.checker.ready()
        body = report.as_dict()
        assert (report.status, report.http_status) == ("degraded", 200), body
        assert set(body["failed"]) == {"pipeline", "redis"}, body
        assert body["components"]["pipeline"]["error"].startswith(
            ("apply failing: CacheError", "stalled: no commit for")
        ), body
    finally:
        own_cluster.set_slot(slot, owner=owner)
    await asyncio.to_thread(own_cluster.wait_ok)
    await eventually(lambda: rig.topic_lag() == 0, timeout=60)
    await eventually(lambda: rig.pipeline.stall_reason() is None)
    # the held batch applied whole: no entry is left at version 1
    cached = await cache.get_many(INVENTORY, list(pids))
    assert all(view.version == 5 for view in cached.values()), cached
    for pid in pids:
        assert await rig.ctx.redis.client.exists(keys.guard(View.INVENTORY, pid)) == 1
    assert (await rig.checker.ready()).status == "ok"
