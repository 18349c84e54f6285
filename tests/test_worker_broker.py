"""Broker outages with whole ``ordercache worker`` processes and a private Tansu broker
on a fixed port (stopped and started again on the same port):

* the worker starts while the broker is down: alive, ``/health/ready`` 503 naming
  the broker and the pipeline's reason; the broker starts: ready, invalidations apply;
* the broker restarts mid-run: not ready while it is away, ready again after, and
  every invalidation sent before and after the restart applies (each leaves its
  version guard in Redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from ordercache.cache.keys import KeySpace
from ordercache.cache.views import View
from ordercache.local.services import ManagedProcess, free_port, start_tansu
from ordercache.sample.producer import ChangeEventProducer, Topics
from tests.conftest import REDIS_URL, make_settings, unique
from tests.test_pipeline import inventory_envelope
from tests.web_harness import Reply, Worker, start_worker, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


class Broker:
    """A Tansu broker that can be stopped and started again on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_tansu(port=self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.cleanup()
            self.proc = None


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    yield b
    b.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def redis_client(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    async for key in client.scan_iter(match=f"{key_prefix}:*", count=500):
        await client.unlink(key)
    await client.aclose()


def _env(broker: Broker, pg_schema: str, prefix: str) -> dict[str, Any]:
    tag = unique("wb")
    return {
        "kafka_broker": broker.url,
        "kafka_partitions": 2,
        "app_id": f"oc-{tag}",
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
        "database_url": pg_schema,
        "topic_orders": f"{tag}.orders",
        "topic_inventory": f"{tag}.inventory",
        "topic_tracking": f"{tag}.tracking",
        "topic_dlq": f"{tag}.dlq",
        "progress_interval": 0.5,
    }


def _ready(r: Reply) -> bool:
    return r.status == 200 and r.json().get("status") == "ok"


def _not_ready(r: Reply) -> bool:
    return r.status == 503


async def _send(env: dict[str, Any], broker: Broker, pids: range) -> None:
    settings = make_settings(**env)
    producer = ChangeEventProducer([broker.url], Topics.from_settings(settings))
    await producer.start()
    try:
        for pid in pids:
            await producer.send_raw(
                settings.topic_inventory, str(pid).encode(), inventory_envelope(pid, 1, 3, sku=None)
            )
    finally:
        await producer.stop()


async def _wait_guards(
    http: aiohttp.ClientSession,
    worker: Worker,
    client: aioredis.Redis,
    keys: KeySpace,
    pids: range,
    timeout: float = 60.0,
) -> None:
    """Every pid's invalidation applied (its guard exists); fail with the worker's log."""
    names = [keys.guard(View.INVENTORY, pid) for pid in pids]

    async def missing() -> int:
        return len(names) - int(await client.exists(*names))

    deadline = asyncio.get_running_loop().time() + timeout
    while (left := await missing()) > 0:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{left} of {len(names)} not applied\n{worker.log_tail()}")
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.log_tail()}")
        await asyncio.sleep(0.2)


async def test_worker_starts_with_the_broker_down_and_survives_a_restart(
    broker: Broker,
    pg_schema: str,
    key_prefix: str,
    redis_client: aioredis.Redis,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    env = _env(broker, pg_schema, key_prefix)
    keys = KeySpace(key_prefix)
    worker = start_worker(env, tmp_path / "w")
    try:
        # broker down at start: alive, not ready, with the reasons
        reply = await wait_for(
            http,
            worker,
            "/health/ready",
            lambda r: _not_ready(r) and "pipeline" in r.json()["components"],
            timeout=90,
        )
        body = reply.json()
        assert body["components"]["broker"]["status"] == "down"
        assert body["components"]["broker"]["error"] == "KafkaConnectionError"
        assert body["components"]["pipeline"]["error"].startswith("not connected to the broker")
        assert "broker" in body["failed"]

        broker.start()
        await wait_for(http, worker, "/health/ready", _ready, timeout=90)
        await _send(env, broker, range(1, 51))
        await _wait_guards(http, worker, redis_client, keys, range(1, 51))

        # a broker restart mid-run (the memory broker comes back empty)
        broker.stop()
        await wait_for(http, worker, "/health/ready", _not_ready, timeout=60)
        broker.start()
        await wait_for(http, worker, "/health/ready", _ready, timeout=120)
        await _send(env, broker, range(51, 101))
        await _wait_guards(http, worker, redis_client, keys, range(51, 101), timeout=90)
        assert worker.proc.poll() is None
    finally:
        rc = worker.process.terminate(timeout=30)
    assert rc == 0, worker.log_tail()
