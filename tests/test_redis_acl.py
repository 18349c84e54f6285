"""Least privilege, proven: every Redis scenario of the worker runs as the documented
ACL user on a private ``redis-server``, and ``ACL LOG`` stays empty.

The ACL comes from ONE place, ``deploy/redis/users.acl`` (loadable with Redis's
``aclfile`` directive); docs/deployment.md shows the same line, and a test here
holds the two equal. The private server loads that file as shipped, with only the
placeholder password replaced, plus a ``default`` user for the test's observer.
The key pattern ``~oc:*`` is the default ``ORDERCACHE_REDIS_KEY_PREFIX``, which the
scenarios use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from ordercache.app.context import AppContext
from ordercache.cache.keys import KeySpace
from ordercache.cache.ops import Invalidate, Refresh
from ordercache.cache.views import INVENTORY, View
from ordercache.health.redis_info import fetch_info, probe_redis
from ordercache.local.services import ManagedProcess, start_redis_server
from ordercache.models.views import ProductInventory
from ordercache.streams.config import ConsumerConfig
from ordercache.streams.consumer import RejectEntry, StreamConsumer, StreamMessage
from ordercache.streams.entry import TrackingRecord
from ordercache.streams.layout import StreamLayout, dead_letter_key
from ordercache.streams.metrics import StreamMetrics, refresh_group_gauges
from ordercache.streams.tail import tail
from tests.conftest import make_settings, unique
from tests.redis_procs import LocalCluster, start_cluster
from tests.web_harness import Worker, get, seed, start_worker, wait_for

ROOT = Path(__file__).resolve().parents[1]
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
DOCS = ROOT / "docs" / "deployment.md"
PLACEHOLDER = ">CHANGE-ME"
USER = "ordercache"


def acl_line() -> str:
    """The ``user ordercache ...`` line of the shipped ACL file."""
    lines = [
        ln.strip()
        for ln in ACL_FILE.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    (line,) = [ln for ln in lines if ln.startswith(f"user {USER} ")]
    return line


# --------------------------------------------------------------------------- one source
def test_docs_show_exactly_the_acl_the_tests_use() -> None:
    line = acl_line()
    assert line in DOCS.read_text().splitlines(), "docs/deployment.md must show users.acl's line"
    rules = shlex.split(line)[2:]
    assert PLACEHOLDER in rules and "resetkeys" in rules and "resetchannels" in rules
    assert rules[rules.index("-@all") :] == [r for r in rules if r.startswith(("+", "-"))]
    assert [r for r in rules if r.startswith("~")] == ["~oc:*"]
    # least privilege: single commands (or subcommands) only, no category, no all-keys
    assert not [r for r in rules if r.startswith("+@") or r in ("allcommands", "allkeys", "~*")]
    assert not [r for r in rules if r.startswith("&")]


# --------------------------------------------------------------------------- the server
@dataclass
class AclRedis:
    proc: ManagedProcess
    password: str

    @property
    def user_url(self) -> str:
        return f"redis://{USER}:{self.password}@{self.proc.url}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis(port=self.proc.port, socket_timeout=5, decode_responses=True)

    def acl_log(self) -> list[dict[str, Any]]:
        with self.admin() as r:
            return list(r.acl_log())

    def reset_log(self) -> None:
        with self.admin() as r:
            r.acl_log_reset()

    def users(self) -> set[str]:
        """The ACL users of every client connection but the observer's own."""
        with self.admin() as r:
            r.client_setname("oc-observer")
            return {c["user"] for c in r.client_list() if c["name"] != "oc-observer"}

    def denied(self) -> list[str]:
        """``ACL LOG`` in short: what was refused (command or key), and why."""
        return [
            f"{e.get('reason')}: {e.get('object')} (context {e.get('context')})"
            for e in self.acl_log()
        ]


def write_acl_file(tmp: Path, password: str) -> Path:
    """The shipped ACL file with ``password``, plus the test's observer."""
    shipped = ACL_FILE.read_text()
    assert shipped.count(PLACEHOLDER) == 1
    acl = tmp / "users.acl"
    acl.write_text(
        shipped.replace(PLACEHOLDER, f">{password}")
        # the test's observer (ACL LOG, set-up, checks): not part of the deployment ACL
        + "user default on nopass ~* &* +@all\n"
    )
    return acl


def start_acl_redis(tmp: Path) -> AclRedis:
    password = secrets.token_hex(16)
    proc = start_redis_server(extra_args=["--aclfile", str(write_acl_file(tmp, password))])
    return AclRedis(proc, password)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    server = start_acl_redis(tmp_path)
    try:
        with server.admin() as r:
            assert r.acl_whoami() == "default"
            assert USER in r.acl_users()
        yield server
    finally:
        with server.admin() as r:
            import sys

            print(
                "CMDSTATS",
                sorted(k.removeprefix("cmdstat_") for k in r.info("commandstats")),
                file=sys.stderr,
            )
        server.proc.cleanup()


def user_settings(server: AclRedis, tmp: Path, **extra: Any) -> Any:
    return make_settings(
        redis_url=server.user_url,
        database_url=f"sqlite+aiosqlite:///{tmp / 'unused.db'}",
        kafka_broker="127.0.0.1:9",
        data_dir=tmp,
        app_id=unique("oc-acl-"),
        **extra,
    )


# --------------------------------------------------------------------------- in-process
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def inventory(pid: int, version: int) -> ProductInventory:
    return ProductInventory(
        product_id=pid, sku="S", available=3, reserved=0, version=version, updated_at=NOW
    )


@pytest.fixture
async def user_ctx(acl_redis: AclRedis, tmp_path: Path) -> AsyncIterator[AppContext]:
    ctx = AppContext.build(user_settings(acl_redis, tmp_path, stream_shards=2))
    yield ctx
    await ctx.aclose()


async def test_cache_reads_fills_and_pipeline_ops_as_the_acl_user(
    acl_redis: AclRedis, user_ctx: AppContext
) -> None:
    ctx = user_ctx
    loads = 0

    async def load(pid: int) -> ProductInventory:
        nonlocal loads
        loads += 1
        return inventory(pid, 1)

    # reads: miss (lease, load, guarded fill), hit, MGET, negative entry
    first = await ctx.cache.get_or_load(INVENTORY, 11, load)
    again = await ctx.cache.get_or_load(INVENTORY, 11, load)
    assert (first.status, again.status, loads) == ("miss", "hit", 1)
    assert set(await ctx.cache.get_many(INVENTORY, [11, 12])) == {11}

    async def missing(pid: int) -> None:
        return None

    assert (await ctx.cache.get_or_load(INVENTORY, 13, missing)).value is None
    # the pipeline's operations: refresh, one invalidation, many invalidations
    await ctx.cache.apply([Refresh(View.INVENTORY, 11, 2, inventory(11, 2))])
    await ctx.cache.apply([Invalidate(View.INVENTORY, 11, 3)])
    await ctx.cache.apply([Invalidate(View.ORDER, i, 5) for i in range(20, 30)])
    await ctx.cache.apply([Invalidate(View.HISTORY, 7)])
    assert await ctx.cache.get(INVENTORY, 11) is None
    # failover identity (INFO server), readiness probe, INFO monitoring
    assert await ctx.cache.server_identity()
    assert (await probe_redis(ctx.redis.client, ctx.keys.health("n1"))).ok
    assert (await fetch_info(ctx.redis.client, timeout=2)).used_memory > 0
    assert acl_redis.users() == {USER}
    assert acl_redis.denied() == []


async def test_streams_mirror_consumers_dead_letters_and_tail_as_the_acl_user(
    acl_redis: AclRedis, user_ctx: AppContext
) -> None:
    from ordercache.app.wiring import build_mirror

    ctx = user_ctx
    mirror = build_mirror(ctx)
    records = tracking_records(6)
    assert (await mirror.mirror(records)).added == 6
    assert (await mirror.mirror(records)).added == 0  # watermarks and dedupe window
    stream = mirror.layout.shard_stream(0)
    await consume_with_one_dead_letter(ctx, stream, acl_redis.denied)
    metrics = StreamMetrics.for_registry(CollectorRegistry())
    await refresh_group_gauges(ctx.redis.client, metrics, stream=stream, label="t", group="g")
    got = [e async for e in tail(ctx.redis.client, ctx.keys, 40, shards=2, from_id="0", count=3)]
    assert len(got) == 3
    # a live tail ("$": the newest entry now, then XREAD BLOCK) sees the next update
    live = asyncio.create_task(
        anext(tail(ctx.redis.client, ctx.keys, 40, shards=2, block_ms=100)), name="live tail"
    )
    later = dataclasses.replace(records[0], event_id="ev-later", offset=100)
    while not live.done():
        await mirror.mirror([later])  # (a repeat is a duplicate: mirrored once)
        await asyncio.wait([live], timeout=0.2)
    assert (await live).fields["event_id"] == "ev-later"
    assert acl_redis.users() == {USER}
    assert acl_redis.denied() == []


def tracking_records(n: int) -> list[TrackingRecord]:
    return [
        TrackingRecord(
            event_id=f"ev-{i}", order_id=40 + i % 2, status="in_transit", location="Bremen",
            carrier="DHL", occurred_at=NOW, shipment_id=None, topic="tracking.updates",
            partition=0, offset=i,
        )
        for i in range(n)
    ]  # fmt: skip


async def consume_with_one_dead_letter(
    ctx: AppContext, stream: str, denied: Callable[[], list[str]]
) -> None:
    """A consumer group reads ``stream`` (shard 0 of ``tracking_records(6)``) until two
    entries are handled and ``ev-2``, rejected, is in the dead-letter stream
    (MULTI/EXEC)."""
    handled: list[str] = []

    async def handler(msg: StreamMessage) -> None:
        if msg.entry.fields.get("event_id") == "ev-2":
            raise RejectEntry("test: refused")  # -> dead-letter stream, MULTI/EXEC
        handled.append(msg.id)

    config = ConsumerConfig(block_ms=100, claim_idle_ms=150, claim_interval_s=0.05,
                            metrics_interval_s=0.1, start_id="0")  # fmt: skip
    consumer = StreamConsumer(ctx.redis.client, stream, "g", "c1", handler, config)
    consumer.start()
    try:
        await until(lambda: _consumed(ctx, handled, stream), lambda: f"{handled} {denied()}")
    finally:
        await consumer.stop()


async def kept_then_heard(
    ctx: AppContext, pid: int, change: Callable[[str], None], denied: Callable[[], list[str]]
) -> None:
    """The near-cache keeps a read of inventory ``pid``, and drops it when another
    client changes the key (``change(key)``)."""
    near = ctx.cache.near
    assert near is not None
    key = ctx.keys.entry(View.INVENTORY, pid)

    async def load(i: int) -> ProductInventory:
        return inventory(i, 1)

    async def kept() -> bool:  # the fill's own writes are broadcast: read until kept
        await ctx.cache.get_or_load(INVENTORY, pid, load)
        return key in near

    await until(kept, lambda: f"never kept in the near-cache: {denied()}")
    change(key)

    async def dropped() -> bool:
        return key not in near

    await until(dropped, lambda: f"the invalidation never arrived: {denied()}")


async def until(
    check: Callable[[], Awaitable[bool]], explain: Callable[[], str], timeout: float = 20.0
) -> None:
    """Poll ``check`` (a liveness bound, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {explain()}")
        await asyncio.sleep(0.05)


async def _consumed(ctx: AppContext, handled: list[str], stream: str) -> bool:
    return len(handled) == 2 and await ctx.redis.client.xlen(dead_letter_key(stream)) == 1


# --------------------------------------------------------------------------- the worker
def envelope(table: str, after: dict[str, Any]) -> bytes:
    return json.dumps(
        {"before": None, "after": after, "op": "u", "ts_ms": 1,
         "source": {"lsn": 1, "txId": 1, "ts_ms": 1, "table": table}}
    ).encode()  # fmt: skip


@pytest.mark.kafka
@pytest.mark.postgres
async def test_the_worker_runs_as_the_acl_user(
    acl_redis: AclRedis, pg_schema: str, kafka_broker: str, tmp_path: Path
) -> None:
    """Pipeline (invalidations, refresh), tracking mirror, stream gauges, reads with
    fills and leases, readiness probe, INFO monitoring and the failover watch."""
    seeded = await seed(pg_schema, history_orders=3)
    topics = unique("acl")
    env = {
        "redis_url": acl_redis.user_url,
        "database_url": pg_schema,
        "kafka_broker": kafka_broker,
        "kafka_partitions": 1,
        "app_id": unique("oc-acl-"),
        "topic_orders": f"{topics}.orders",
        "topic_inventory": f"{topics}.inventory",
        "topic_tracking": f"{topics}.tracking",
        "topic_dlq": f"{topics}.dlq",
    }
    worker: Worker = start_worker(env, tmp_path / "worker")
    admin = aioredis.Redis(port=acl_redis.proc.port, client_name="oc-observer")
    try:
        async with aiohttp.ClientSession() as http:
            await wait_for(http, worker, "/health/ready", lambda r: r.status == 200, timeout=90)
            order = f"/orders/{seeded.order_id}"
            assert (await get(http, worker.base + order)).cache == "miss"
            await wait_for(http, worker, order, lambda r: r.cache == "hit")
            for path in (
                f"/customers/{seeded.history_customer_id}/orders",
                f"/products/{seeded.product_id}/inventory",
                "/metrics",
                "/stats",
            ):
                assert (await get(http, worker.base + path)).status == 200
            producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
            await producer.start()
            try:
                pid, oid = seeded.product_id, seeded.order_id
                await producer.send_and_wait(
                    env["topic_inventory"],
                    envelope("inventory", {"product_id": pid, "available": 9, "reserved": 0,
                                           "version": 50, "sku": "ACL",
                                           "updated_at": "2026-03-01T10:00:00Z"}),
                    key=str(pid).encode(),
                )  # fmt: skip
                await producer.send_and_wait(
                    env["topic_orders"],
                    envelope("orders", {"id": oid, "customer_id": 1, "status": "paid",
                                        "total_cents": 1, "currency": "EUR", "version": 60,
                                        "created_at": "2026-03-01T10:00:00Z",
                                        "updated_at": "2026-03-01T10:00:00Z"}),
                    key=str(oid).encode(),
                )  # fmt: skip
                await producer.send_and_wait(
                    env["topic_tracking"],
                    envelope("tracking_events", {"id": 1, "event_id": unique("ev-"),
                                                 "order_id": oid, "status": "in_transit",
                                                 "occurred_at": "2026-03-01T10:00:00Z",
                                                 "version": 1}),
                    key=str(oid).encode(),
                )  # fmt: skip
            finally:
                await producer.stop()

            keys = KeySpace("oc")  # the default prefix, which the ACL's ~oc:* names

            async def applied() -> bool:
                # the pipeline's work (refresh, invalidation, mirror), seen by the observer
                entry = await admin.get(keys.entry(View.INVENTORY, pid)) or b""
                floor = await admin.hget(keys.guard(View.ORDER, oid), "f")
                mirrored = await admin.xlen(StreamLayout(keys, 4).order_stream(oid))
                return entry.startswith(b"v50|") and floor == b"60" and mirrored == 1

            await until(applied, lambda: f"{acl_redis.denied()}\n{worker.log_tail()}", 60)
            # a readiness probe and an INFO refresh after the pipeline ran
            await wait_for(http, worker, "/health/ready", lambda r: r.status == 200)
            assert (await get(http, worker.base + "/stats")).status == 200
        assert acl_redis.users() == {USER}
        assert acl_redis.denied() == [], worker.log_tail()
    finally:
        await admin.aclose()
        worker.stop()
    assert acl_redis.denied() == []  # the shutdown too


async def test_warming_and_early_refresh_as_the_acl_user(
    acl_redis: AclRedis, pg_schema: str, tmp_path: Path
) -> None:
    """Cache warming (on by default: hot-set chunks, leases, the shared rate limit,
    the guarded bulk fill) and an early refresh (XFetch), as the ACL user."""
    from ordercache.app.wiring import build_warmer
    from ordercache.cache.codec import encode_value
    from ordercache.sample.seed import SeedSpec, run_seed

    ctx = AppContext.build(
        make_settings(
            redis_url=acl_redis.user_url,
            database_url=pg_schema,
            kafka_broker="127.0.0.1:9",
            data_dir=tmp_path,
            app_id=unique("oc-acl-"),
            xfetch_beta=1.0,
        )
    )
    try:
        await run_seed(ctx.engine, SeedSpec(customers=3, products=4, orders=5))
        identity = await ctx.cache.server_identity()
        assert identity is not None
        progress = await build_warmer(ctx).warm(identity)
        assert progress.state == "done" and progress.filled > 0
        key = ctx.keys.entry(View.INVENTORY, 99)
        with acl_redis.admin() as r:  # an entry whose recorded expiry has come
            r.set(key, encode_value(inventory(99, 1), delta_ms=5, expires_ms=1), px=30_000)

        async def load(pid: int) -> ProductInventory:
            return inventory(pid, 2)

        assert (await ctx.cache.get_or_load(INVENTORY, 99, load)).status == "hit"
        for _ in range(500):
            with acl_redis.admin() as r:
                if str(r.get(key)).startswith("v2:"):
                    break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the early refresh never filled")
        assert acl_redis.denied() == []
    finally:
        await ctx.aclose()


# --------------------------------------------------------------------------- near-cache
#: What docs/deployment.md says to add to the user for the near-cache (standalone and
#: Sentinel; a cluster also needs +cluster|nodes, and its ACL is not covered here).
NEAR_CACHE_RULES = "+client|id +client|tracking +subscribe &__redis__:invalidate"


def test_docs_name_the_near_cache_rules_the_test_adds() -> None:
    assert f"`{NEAR_CACHE_RULES}`" in " ".join(DOCS.read_text().split())


async def test_near_cache_listener_as_the_acl_user_with_the_documented_additions(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    with acl_redis.admin() as r:
        r.execute_command("ACL", "SETUSER", USER, *NEAR_CACHE_RULES.split())
    ctx = AppContext.build(user_settings(acl_redis, tmp_path, near_cache=True))
    assert ctx.tracking is not None and ctx.cache.near is not None
    await ctx.tracking.start()
    try:
        assert await ctx.tracking.wait_live(10), acl_redis.denied()

        def change(key: str) -> None:
            with acl_redis.admin() as r:
                r.set(key, "changed")

        await kept_then_heard(ctx, 21, change, acl_redis.denied)
        assert acl_redis.denied() == []
    finally:
        await ctx.tracking.stop()
        await ctx.aclose()


# --------------------------------------------------------------------------- cluster
#: What docs/deployment.md says to add to the user on a Redis Cluster: redis-py's
#: cluster client reads the slot map and the command table; the near-cache listener
#: also reads the list of primaries.
CLUSTER_RULES = "+cluster|slots +command"
NEAR_CACHE_CLUSTER_RULES = "+cluster|nodes"


def test_docs_name_the_cluster_rules_the_test_adds() -> None:
    docs = " ".join(DOCS.read_text().split())
    assert f"`{CLUSTER_RULES}`" in docs and f"`{NEAR_CACHE_CLUSTER_RULES}`" in docs


@pytest.fixture
def acl_cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, str]]:
    """A private 3-primary cluster, every node loading the shipped ACL file."""
    password = secrets.token_hex(16)
    acl = write_acl_file(tmp_path, password)
    cluster = start_cluster(3, extra_args=["--aclfile", str(acl)])
    try:
        yield cluster, password
    finally:
        cluster.cleanup()


def cluster_denied(cluster: LocalCluster) -> list[str]:
    out = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port, socket_timeout=5, decode_responses=True) as r:
            out += [
                f"{node.url} {e.get('reason')}: {e.get('object')} (context {e.get('context')})"
                for e in r.acl_log()
            ]
    return out


async def test_cache_pipeline_streams_and_near_cache_on_a_cluster_as_the_acl_user(
    acl_cluster: tuple[LocalCluster, str], tmp_path: Path
) -> None:
    """The shipped user plus the documented cluster and near-cache additions, on every
    node: reads with fills, the pipeline's batched scripts across every primary, the
    failover identity, INFO monitoring, the readiness probe, the tracking mirror, a
    consumer group with a dead letter, and the near-cache listener (one connection per
    primary) hearing an invalidation."""
    from ordercache.app.wiring import build_mirror

    cluster, password = acl_cluster
    for node in cluster.nodes:
        with redis.Redis(port=node.port, socket_timeout=5) as r:
            r.execute_command(
                "ACL", "SETUSER", USER,
                *CLUSTER_RULES.split(), *NEAR_CACHE_RULES.split(), NEAR_CACHE_CLUSTER_RULES,
            )  # fmt: skip
    settings = make_settings(
        redis_mode="cluster",
        redis_cluster_nodes=cluster.addresses,
        redis_username=USER,
        redis_password=password,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        kafka_broker="127.0.0.1:9",
        data_dir=tmp_path,
        app_id=unique("oc-acl-"),
        stream_shards=2,
        near_cache=True,
    )
    ctx = AppContext.build(settings)
    assert ctx.tracking is not None and ctx.cache.near is not None
    await ctx.tracking.start()
    try:
        assert await ctx.tracking.wait_live(20), cluster_denied(cluster)
        assert len(ctx.tracking.client_ids) == 3

        async def load(pid: int) -> ProductInventory:
            return inventory(pid, 1)

        ids = list(range(1, 31))  # entries on every primary
        values = [(await ctx.cache.get_or_load(INVENTORY, i, load)).value for i in ids]
        assert values == [inventory(i, 1) for i in ids]
        assert set(await ctx.cache.get_many(INVENTORY, ids)) == set(ids)
        await ctx.cache.apply([Refresh(View.INVENTORY, 1, 2, inventory(1, 2))])
        await ctx.cache.apply([Invalidate(View.INVENTORY, i, 3) for i in ids[1:]])
        await ctx.cache.apply([Invalidate(View.HISTORY, 7)])
        assert await ctx.cache.get_many(INVENTORY, ids[1:]) == {}
        identity = await ctx.cache.server_identity()
        assert identity is not None and len(identity.split(b",")) == 3
        assert (await probe_redis(ctx.redis.client, ctx.keys.health("n1"))).ok
        assert (await fetch_info(ctx.redis.client, timeout=2)).used_memory > 0
        # the near-cache keeps a read and hears another client's change of it

        def change(key: str) -> None:
            with redis.Redis(port=cluster.primary_of(key).port, socket_timeout=5) as r:
                r.set(key, "changed")

        await kept_then_heard(ctx, 40, change, lambda: cluster_denied(cluster))
        # the tracking mirror and a consumer group with a dead letter
        mirror = build_mirror(ctx)
        assert (await mirror.mirror(tracking_records(6))).added == 6
        await consume_with_one_dead_letter(
            ctx, mirror.layout.shard_stream(0), lambda: cluster_denied(cluster)
        )
        assert cluster_denied(cluster) == []
    finally:
        await ctx.tracking.stop()
        await ctx.aclose()
    assert cluster_denied(cluster) == []
