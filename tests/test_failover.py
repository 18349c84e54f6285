"""A Redis primary dies under traffic: reads never fail, the cache ends equal to the database.

Two deployments with automatic failover, each private: a 3-primary, 3-replica
Cluster (the primary that owns some of the entries is killed; the cluster promotes
its replica) and a Sentinel setup (master, replica, Sentinel; the master is killed,
Sentinel promotes the replica). One ``ordercache worker`` on it; concurrent HTTP
readers over inventory and order views; a writer committing stock and status changes
to PostgreSQL and producing their change events. Mid-run the primary gets SIGKILL.

What must hold:

* no read fails: every answer is 200 (a read meets a Redis failure as a bypass);
* invalidations are not lost: once the writer stops and the pipeline caught up,
  every cached view equals what the database holds (a promoted replica that missed
  the newest invalidations gets them again: the pipeline re-applies its recent
  operations when the identity of any primary changes);
* the pipeline got past the failover (events applied after the kill);
* the worker runs with the near-cache on: its listener loses the killed primary,
  goes dark and follows the promoted one, so the read API too ends equal to the
  database, and near-cache hits were served during the run.

The figures (requests, bypasses, errors, stale) are printed for the docs/report.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from ordercache.cache.keys import KeySpace
from ordercache.cache.views import INVENTORY, ORDER, View, ViewSpec
from ordercache.db.engine import create_engine, session_factory
from ordercache.db.loaders import DbLoaders
from ordercache.local.services import ManagedProcess
from ordercache.models.orm import Customer, Inventory, Product
from ordercache.sample import writes
from ordercache.sample.producer import ChangeEventProducer, Topics
from tests.conftest import unique
from tests.redis_procs import LocalCluster, start_cluster, wait_until
from tests.topologies import Inspector, start_sentinel_topology
from tests.web_harness import Worker, get, metrics_of, sample, start_worker, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PRODUCTS = 40
ORDERS = 10
READERS = 12


@dataclass
class Deployment:
    """A Redis deployment with failover: how to reach it, whom to kill, when it recovered."""

    env: dict[str, str]
    #: The primary process serving ``key`` now.
    primary_of: Callable[[str], ManagedProcess]
    #: Block until a replica took over from the killed primary.
    wait_promoted: Callable[[ManagedProcess], None]
    #: A plain client on the data, made after the failover.
    inspector: Callable[[], Inspector]


def _cluster_inspector(cluster: LocalCluster) -> Inspector:
    nodes = [ClusterNode("127.0.0.1", n.port) for n in cluster.alive()]
    return RedisCluster(startup_nodes=nodes, socket_timeout=2.0)


def _sentinel_promoted(sentinel: ManagedProcess, replica: ManagedProcess) -> None:
    admin = redis.Redis(port=sentinel.port, socket_timeout=2)
    data = redis.Redis(port=replica.port, socket_timeout=2)
    try:
        wait_until(
            lambda: (
                int(admin.sentinel_get_master_addr_by_name("mymaster")[1]) == replica.port
                and data.execute_command("ROLE")[0] == b"master"
            ),
            "Sentinel promoted the replica",
            timeout=30,
        )
    finally:
        admin.close()
        data.close()


@pytest.fixture(params=["sentinel", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    if request.param == "cluster":
        cluster = start_cluster(6, replicas=1, node_timeout_ms=1500)
        try:
            yield Deployment(
                {"redis_mode": "cluster", "redis_cluster_nodes": cluster.addresses},
                cluster.primary_of,
                lambda dead: cluster.wait_failover(dead, 30.0),
                lambda: _cluster_inspector(cluster),
            )
        finally:
            cluster.cleanup()
        return
    topo = start_sentinel_topology()
    master, replica, sentinel = topo.processes
    try:
        yield Deployment(
            topo.env,
            lambda key: master,
            lambda dead: _sentinel_promoted(sentinel, replica),
            lambda: aioredis.Redis(port=replica.port, socket_timeout=2.0),
        )
    finally:
        topo.cleanup()


@dataclass
class Traffic:
    """What the readers saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + len(self.failures)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200) + len(self.failures)


async def seed(database_url: str) -> tuple[list[int], list[int]]:
    """Products with stock and orders on them; returns (product ids, order ids)."""
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as s, s.begin():
            customer = Customer(email=f"{unique('f')}@example.com", name="Fay")
            products = [
                Product(sku=unique("SKU-"), name="part", price_cents=10) for _ in range(PRODUCTS)
            ]
            s.add(customer)
            s.add_all(products)
            await s.flush()
            s.add_all(
                Inventory(product_id=p.id, available=1000, reserved=0, updated_at=NOW)
                for p in products
            )
            await s.flush()
            pids = [int(p.id) for p in products]
            oids = []
            for i in range(ORDERS):
                changes = await writes.create_order(s, customer.id, [(pids[i], 1)], NOW)
                oids.append(next(int(c.after["id"]) for c in changes if c.entity.value == "orders"))
            return pids, oids
    finally:
        await engine.dispose()


async def read_loop(
    http: aiohttp.ClientSession, base: str, paths: list[str], traffic: Traffic, rng: random.Random
) -> None:
    while not traffic.stop.is_set():
        path = rng.choice(paths)
        try:
            reply = await get(http, base + path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            traffic.failures.append(f"{path}: {exc!r}")
            continue
        traffic.statuses[reply.status] += 1
        traffic.cache[reply.cache or "-"] += 1
        if reply.status != 200:
            traffic.failures.append(f"{path}: {reply.status} {reply.body[:200]!r}")


async def write_loop(
    database_url: str,
    producer: ChangeEventProducer,
    pids: list[int],
    oids: list[int],
    stop: asyncio.Event,
    rng: random.Random,
) -> int:
    """Commit a change and produce its events, about 40 times a second."""
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    n = 0
    try:
        while not stop.is_set():
            async with sessions() as s, s.begin():
                if rng.random() < 0.7:
                    changes = await writes.restock(s, rng.choice(pids), 1, NOW)
                else:
                    status = rng.choice(("paid", "picked", "packed"))
                    changes = await writes.set_status(s, rng.choice(oids), status, NOW)
            await producer.emit_transaction(changes)
            n += 1
            await asyncio.sleep(0.025)
    finally:
        await engine.dispose()
    return n


async def stale_views(
    redis: Inspector, keys: KeySpace, loaders: DbLoaders, pids: list[int], oids: list[int]
) -> list[str]:
    """Cached views that differ from the database now (absent entries are fine)."""
    stale: list[str] = []
    checks: list[tuple[ViewSpec, int]] = [(INVENTORY, p) for p in pids] + [  # type: ignore[type-arg]
        (ORDER, o) for o in oids
    ]
    for spec, eid in checks:
        raw = await redis.get(keys.entry(spec.view, eid))
        if raw is None:
            continue
        cached = spec.decode(raw)
        truth = await (loaders.inventory if spec.view is View.INVENTORY else loaders.order)(eid)
        if cached != truth:
            version = getattr(cached, "version", None)
            stale.append(f"{spec.view.value}:{eid} cached v{version}, db v{truth.version}")  # type: ignore[union-attr]
    return stale


async def stale_answers(
    http: aiohttp.ClientSession, base: str, loaders: DbLoaders, pids: list[int], oids: list[int]
) -> list[str]:
    """Read API answers that differ from the database now."""
    stale: list[str] = []
    checks = [(f"/products/{p}/inventory", loaders.inventory, p) for p in pids] + [
        (f"/orders/{o}", loaders.order, o) for o in oids
    ]
    for path, load, eid in checks:
        reply = await get(http, base + path)
        truth = await load(eid)  # type: ignore[operator]
        if reply.status != 200 or truth is None or reply.json()["version"] != truth.version:
            stale.append(
                f"{path}: {reply.status} {reply.body[:80]!r}, db v{getattr(truth, 'version', None)}"
            )
    return stale


async def test_killing_the_primary_under_traffic_loses_no_invalidation_and_no_read(
    deployment: Deployment,
    pg_schema: str,
    kafka_broker: str,
    tmp_path: Path,
) -> None:
    tag = unique("fo")
    env = {
        **deployment.env,
        "redis_key_prefix": tag,
        "database_url": pg_schema,
        "kafka_broker": kafka_broker,
        "kafka_partitions": "2",
        "app_id": f"oc-{tag}",
        "topic_orders": f"{tag}.orders",
        "topic_inventory": f"{tag}.inventory",
        "topic_tracking": f"{tag}.tracking",
        "topic_dlq": f"{tag}.dlq",
        # the near-cache on, its copies kept long: they must follow the failover, and
        # no stale copy can pass the checks below by expiring first
        "near_cache": "true",
        "near_cache_ttl": "120",
    }
    pids, oids = await seed(pg_schema)
    keys = KeySpace(tag)
    paths = [f"/products/{p}/inventory" for p in pids] + [f"/orders/{o}" for o in oids]
    producer = ChangeEventProducer(
        [kafka_broker], Topics(env["topic_orders"], env["topic_inventory"], env["topic_tracking"])
    )
    await producer.start()
    worker: Worker = start_worker(env, tmp_path / "worker")
    engine = create_engine(pg_schema)
    loaders = DbLoaders(session_factory(engine))
    traffic = Traffic()
    rng = random.Random(12)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_for(http, worker, "/health/ready", lambda r: r.status == 200, timeout=90)
            for path in paths:  # warm every view
                assert (await get(http, worker.base + path)).status == 200
            victim = deployment.primary_of(keys.entry(View.INVENTORY, pids[0]))

            readers = [
                asyncio.create_task(read_loop(http, worker.base, paths, traffic, random.Random(i)))
                for i in range(READERS)
            ]
            writer_stop = asyncio.Event()
            writer = asyncio.create_task(
                write_loop(pg_schema, producer, pids, oids, writer_stop, rng)
            )
            await asyncio.sleep(2.0)  # traffic flows on the healthy cluster
            applied_at_kill = sample(
                metrics_of((await get(http, worker.base + "/metrics")).body.decode()),
                "ordercache_events_total",
                outcome="applied",
            )
            killed_at = time.monotonic()
            victim.kill()
            # a replica takes over; keep the traffic flowing through and after it
            await asyncio.to_thread(deployment.wait_promoted, victim)
            recovered_after = time.monotonic() - killed_at
            await asyncio.sleep(3.0)
            writer_stop.set()
            writes_done = await writer
            await asyncio.sleep(1.0)  # reads after the last write, too
            traffic.stop.set()
            await asyncio.gather(*readers)

            # the pipeline catches up: every cached view equals the database
            inspector = deployment.inspector()
            try:
                deadline = time.monotonic() + 60
                stale = await stale_views(inspector, keys, loaders, pids, oids)
                while stale and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    stale = await stale_views(inspector, keys, loaders, pids, oids)
            finally:
                await inspector.aclose()
            parsed = metrics_of((await get(http, worker.base + "/metrics")).body.decode())
            applied = sample(parsed, "ordercache_events_total", outcome="applied")
            reapplied = sample(parsed, "ordercache_invalidations_reapplied_total")
            near_hits = sample(parsed, "ordercache_cache_near_hits_total")
            # and the read API, near-cache included, answers with the database's values
            # (an invalidation reaches the near-cache about a millisecond after Redis)
            deadline = time.monotonic() + 15
            api_stale = await stale_answers(http, worker.base, loaders, pids, oids)
            while api_stale and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                api_stale = await stale_answers(http, worker.base, loaders, pids, oids)
    finally:
        traffic.stop.set()
        await producer.stop()
        worker.stop()
        await engine.dispose()

    figures = (
        f"failover figures: requests={traffic.requests} statuses={dict(traffic.statuses)} "
        f"x-cache={dict(traffic.cache)} errors={traffic.errors} stale={len(stale)} "
        f"writes={writes_done} applied_before_kill={applied_at_kill:.0f} applied={applied:.0f} "
        f"reapplied={reapplied:.0f} near_hits={near_hits:.0f} api_stale={len(api_stale)} "
        f"promoted_after={recovered_after:.1f}s"
    )
    print(figures)
    assert traffic.errors == 0, (figures, traffic.failures[:10], worker.log_tail())
    assert stale == [], (figures, stale[:10], worker.log_tail())
    assert api_stale == [], (figures, api_stale[:10], worker.log_tail())
    assert near_hits > 0, figures  # the near-cache served during the run
    assert traffic.cache["bypass"] > 0, figures  # the failover was felt by the readers
    assert applied > applied_at_kill, figures  # the pipeline got past the failover
    assert reapplied > 0, figures  # the new primary's identity triggered the re-apply
