"""The key layout holds on a real Redis Cluster: no script or MULTI crosses a slot.

Three private cluster-mode redis-servers (no replicas), joined with
``redis-cli --cluster create``. Skipped when ``redis-cli`` is missing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from redis.asyncio.cluster import RedisCluster

from ordercache.cache.keys import KeySpace
from ordercache.local.services import ManagedProcess, free_port, start_redis_server
from ordercache.streams.config import ConsumerConfig, MirrorConfig
from ordercache.streams.consumer import StreamConsumer, StreamMessage
from ordercache.streams.entry import TrackingRecord
from ordercache.streams.layout import dead_letter_key
from ordercache.streams.mirror import MirrorResult, StreamMirror
from ordercache.streams.tail import tail

SHARDS = 8
CLUSTER_ARGS = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli not installed")
    nodes: list[ManagedProcess] = []
    try:
        for _ in range(3):
            # An explicit bus port: the default (port + 10000) overflows for high ports.
            bus = ["--cluster-port", str(free_port())]
            nodes.append(start_redis_server(extra_args=CLUSTER_ARGS + bus))
        created = subprocess.run(
            [cli, "--cluster", "create", *(n.url for n in nodes), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        deadline = time.monotonic() + 30
        for node in nodes:
            while True:
                out = subprocess.run(
                    [cli, "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                if "cluster_state:ok" in out:
                    break
                assert time.monotonic() < deadline, "cluster did not become ok"
                time.sleep(0.1)
        yield [n.port for n in nodes]
    finally:
        for node in nodes:
            node.cleanup()


@pytest.fixture
async def cluster(cluster_ports: list[int]) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0], socket_timeout=5.0)
    await client.initialize()
    yield client
    await client.aclose()


def records(n: int) -> list[TrackingRecord]:
    return [
        TrackingRecord(
            event_id=f"ev-{i}",
            order_id=1 + i % 40,
            status="out_for_delivery" if i % 5 == 0 else "in_transit",
            location="Köln",
            carrier="GLS",
            occurred_at=datetime(2026, 2, 1, tzinfo=UTC),
            shipment_id=None,
            topic="tracking.updates",
            partition=i % 3,
            offset=i,
        )
        for i in range(n)
    ]


async def test_mirror_on_cluster(cluster: RedisCluster) -> None:
    mirror = StreamMirror(cluster, KeySpace("cl1"), MirrorConfig(shards=SHARDS))
    log = records(400)
    assert await mirror.mirror(log) == MirrorResult(400, 0)
    assert await mirror.mirror(log[100:300]) == MirrorResult(0, 200)
    total = 0
    for key in mirror.layout.shard_streams():
        total += await cluster.xlen(key)
    assert total == 400
    # The shards really are spread over the nodes.
    nodes = {cluster.get_node_from_key(k).name for k in mirror.layout.shard_streams()}
    assert len(nodes) > 1
    got = [e async for e in tail(cluster, KeySpace("cl1"), 7, shards=SHARDS, from_id="0", count=10)]
    assert [e.tracking().event_id for e in got] == [f"ev-{i}" for i in range(6, 400, 40)]


async def test_consumer_and_dead_letters_on_cluster(cluster: RedisCluster) -> None:
    mirror = StreamMirror(cluster, KeySpace("cl2"), MirrorConfig(shards=SHARDS))
    await mirror.mirror(records(200))
    stream = mirror.layout.shard_stream(mirror.layout.shard_of(4))  # order of ev-3
    expected = await cluster.xlen(stream)
    handled: Counter[str] = Counter()

    async def handler(msg: StreamMessage) -> None:
        handled[msg.id] += 1
        if msg.entry.fields["event_id"] == "ev-3":
            raise RuntimeError("poison")

    cfg = ConsumerConfig(
        block_ms=100, claim_idle_ms=100, claim_interval_s=0.05, max_deliveries=2, start_id="0"
    )
    consumer = StreamConsumer(cluster, stream, "g", "c1", handler, cfg)
    consumer.start()
    deadline = asyncio.get_running_loop().time() + 30
    while consumer.stats.processed + consumer.stats.dead_lettered < expected:
        assert asyncio.get_running_loop().time() < deadline, "cluster consumer stalled"
        await asyncio.sleep(0.02)
    await consumer.stop()
    assert consumer.stats.dead_lettered == 1
    assert await cluster.xlen(dead_letter_key(stream)) == 1
    assert int((await cluster.xpending(stream, "g"))["pending"]) == 0
