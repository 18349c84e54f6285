"""Liveness and readiness: ``GET /health/live`` and ``GET /health/ready``.

Readiness checks these components concurrently, each inside its own time budget:

* **redis** — PING plus a SET/GET/DEL round trip on this node's health key (with
  a TTL). Redis down is *degraded*, not down: reads are served from the database
  (invariant 4, docs/architecture.md), so the worker stays ready (HTTP 200).
* **database** — ``SELECT 1`` on the engine's pool. Down means not ready (503).
* **eviction** — Redis's ``maxmemory-policy`` (``INFO memory``): a policy that could
  evict version guards or the stream mirror's dedupe state makes the worker
  *degraded*, with the reason (:mod:`~ordercache.health.eviction`); skipped while
  Redis does not answer (the redis component says so).
* **broker** — only when the checker is given the change pipeline; skipped
  otherwise. Fine means: the broker answers a metadata request, *and* the
  pipeline service is running, *and* it is a settled group member — it holds
  partitions, or, when it holds none (more workers than partitions), the Faust
  app's own consumer has completed a group join and is not rebalancing. A
  partition assignment alone is not evidence: a consumer keeps its last
  assignment for a while after the broker went away, hence the metadata request.
  Down means not ready (503): this worker would not keep the cache true.
* **replica_identity** — PostgreSQL only: every captured table has the replica
  identity CDC needs (docs/events.md#replica-identity); down names the tables and
  makes the worker *degraded* (some deletes cannot name every entry they affect).
* **pipeline** — only with the change pipeline: its stall verdict
  (:mod:`ordercache.agents.progress`, no I/O): not connected to the broker yet,
  applies failing, or behind with no commit for ``ORDERCACHE_STALL_SECONDS``. A
  stalled pipeline is *down* (503) while Redis answers the probe: readers are then
  served cache entries that are no longer invalidated, so this worker is not fit to
  serve. When the Redis check fails too, the stall is the Redis outage's doing and
  reads bypass the cache (fresh from the database), so it is *degraded* (200) —
  like Redis itself (invariant 4); the lag and stall gauges and their alerts still
  show it.

The Redis probe uses a client of its own (``redis``; two connections, see
:func:`ordercache.redisconn.client.create_health_redis`) and the database check an
engine of its own (one connection and one spare), so readiness never queues behind
the read path's pools.

The body names every component with its status, latency and a short reason (an
exception class name or ``timeout``: never a URL, never a password). The gauge
``ordercache_health_status`` records the verdict: 0 ok, 1 degraded, 2 down;
``ordercache_health_component_up{component}`` says per component whether it was ok.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import faust
from aiokafka.client import AIOKafkaClient
from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ordercache.agents.kafka_clients import start_or_close
from ordercache.agents.pipeline import ChangePipeline
from ordercache.cache.breaker import CircuitBreaker
from ordercache.db.replica_identity import replica_identity_problems
from ordercache.health.eviction import eviction_risk, read_policies
from ordercache.health.redis_info import describe_error, probe_redis
from ordercache.redisconn.client import RedisHandle

log = logging.getLogger(__name__)

ComponentStatus = Literal["ok", "degraded", "down", "skipped"]
Overall = Literal["ok", "degraded", "down"]

#: Components whose failure makes the worker not ready (Redis only degrades it).
CRITICAL = frozenset({"database", "broker", "pipeline"})
STATUS_VALUE: dict[Overall, int] = {"ok": 0, "degraded": 1, "down": 2}


@dataclass(frozen=True, slots=True)
class Component:
    """One checked dependency."""

    name: str
    status: ComponentStatus
    latency_ms: float | None = None
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.latency_ms is not None:
            out["latency_ms"] = round(self.latency_ms, 3)
        if self.error is not None:
            out["error"] = self.error
        out.update(self.details)
        return out


def overall_status(components: Mapping[str, Component]) -> Overall:
    """Down if a critical component is down; degraded if any other is down or any
    component is degraded; else ok."""
    failed = [c for c in components.values() if c.status in ("down", "degraded")]
    if any(c.name in CRITICAL and c.status == "down" for c in failed):
        return "down"
    return "degraded" if failed else "ok"


def http_status(status: Overall) -> int:
    """503 when not ready, 200 otherwise (degraded still serves reads)."""
    return 503 if status == "down" else 200


@dataclass(frozen=True, slots=True)
class BrokerFacts:
    """What the broker verdict is decided from (gathered by :class:`HealthChecker`)."""

    reachable: bool
    pipeline_running: bool
    assigned_partitions: int
    app_consumer_settled: bool
    error: str | None = None


def pipeline_status(stall: str | None, redis_ok: bool) -> ComponentStatus:
    """See the module docstring: a stall is down unless Redis is down too."""
    if stall is None:
        return "ok"
    return "down" if redis_ok else "degraded"


def broker_verdict(f: BrokerFacts) -> tuple[ComponentStatus, str | None]:
    """See the module docstring for what "fine" means."""
    if not f.reachable:
        return "down", f.error or "unreachable"
    if not f.pipeline_running:
        return "down", "pipeline not running"
    if f.assigned_partitions == 0 and not f.app_consumer_settled:
        return "down", "no partitions assigned"
    return "ok", None


@dataclass(frozen=True, slots=True)
class Report:
    status: Overall
    components: Mapping[str, Component]

    @property
    def http_status(self) -> int:
        return http_status(self.status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "failed": sorted(
                n for n, c in self.components.items() if c.status in ("down", "degraded")
            ),
            "components": {n: c.as_dict() for n, c in self.components.items()},
        }


@dataclass(frozen=True, slots=True)
class HealthConfig:
    redis_timeout: float = 1.0
    database_timeout: float = 2.0
    broker_timeout: float = 2.0
    probe_ttl_ms: int = 10_000


def node_name() -> str:
    """This process's name in the health key."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _running(service: object) -> bool:
    return (
        bool(getattr(service, "started", False))
        and not getattr(service, "crashed", False)
        and not getattr(service, "should_stop", False)
    )


class HealthChecker:
    """Runs the readiness checks (see the module docstring)."""

    def __init__(
        self,
        *,
        redis: RedisHandle,
        engine: AsyncEngine,
        breaker: CircuitBreaker,
        health_key: str,
        status_gauge: Gauge,
        component_gauge: Gauge | None = None,
        pipeline: ChangePipeline | None = None,
        app: faust.App | None = None,
        config: HealthConfig | None = None,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.breaker = breaker
        self.health_key = health_key
        self.status_gauge = status_gauge
        self.component_gauge = component_gauge
        self.pipeline = pipeline
        self.app = app
        self.config = config or HealthConfig()

    async def check_redis(self) -> Component:
        result = await probe_redis(
            self.redis.client,
            self.health_key,
            timeout=self.config.redis_timeout,
            ttl_ms=self.config.probe_ttl_ms,
        )
        breaker = self.breaker.state.name.lower().replace("_", "-")
        return Component(
            "redis",
            "ok" if result.ok else "down",
            result.latency_seconds * 1000,
            result.error,
            {"breaker": breaker},
        )

    async def check_eviction(self) -> Component:
        try:
            nodes = await read_policies(self.redis.client, timeout=self.config.redis_timeout)
        except Exception as exc:  # noqa: BLE001 - the redis component reports the outage
            return Component("eviction", "skipped", details={"reason": describe_error(exc)})
        risk = eviction_risk(nodes)
        policies = sorted({n.policy for n in nodes})
        return Component(
            "eviction", "down" if risk else "ok", error=risk, details={"policy": policies}
        )

    async def check_replica_identity(self) -> Component:
        """PostgreSQL only: the captured tables' replica identities. Not critical: a
        table short of its identity leaves some deletes unable to name every entry
        (counted in ordercache_events_unresolved_total), the worker still keeps the
        rest of the cache true."""
        try:
            async with asyncio.timeout(self.config.database_timeout):
                problems = await replica_identity_problems(self.engine)
        except (SQLAlchemyError, OSError, TimeoutError):
            # The database component reports the outage; this one is simply unknown.
            return Component("replica_identity", "skipped", details={"reason": "no database"})
        if problems:
            return Component(
                "replica_identity", "down", error="; ".join(problems)[:500],
                details={"tables": sorted({p.split(":")[0] for p in problems})},
            )  # fmt: skip
        return Component("replica_identity", "ok")

    async def check_database(self) -> Component:
        async with asyncio.timeout(self.config.database_timeout):
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return Component("database", "ok")

    async def broker_facts(self, pipeline: ChangePipeline) -> BrokerFacts:
        error: str | None = None
        client = AIOKafkaClient(
            bootstrap_servers=pipeline.config.bootstrap,
            client_id="ordercache-health",
            # Longer than the budget: a hung broker is always our "timeout", and the
            # abandoned bootstrap still ends (and is closed) soon after.
            request_timeout_ms=int(self.config.broker_timeout * 2000),
        )
        try:
            # Never cancelled half-way (that leaks its connection): start_or_close
            # stops waiting after the budget and closes the client when it is done.
            await start_or_close(
                client.bootstrap(), client.close, timeout=self.config.broker_timeout
            )
        except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
            error = describe_error(exc)
        else:
            await client.close()
        app = self.app
        settled = (
            app is not None
            and _running(app.consumer)
            and app.rebalancing_count > 0
            and not app.rebalancing
        )
        return BrokerFacts(
            reachable=error is None,
            pipeline_running=_running(pipeline),
            assigned_partitions=len(pipeline.assigned),
            app_consumer_settled=settled,
            error=error,
        )

    async def check_broker(self, pipeline: ChangePipeline) -> Component:
        facts = await self.broker_facts(pipeline)
        status, reason = broker_verdict(facts)
        return Component(
            "broker", status, error=reason, details={"partitions": facts.assigned_partitions}
        )

    async def ready(self) -> Report:
        """Check every component concurrently; record and return the verdict."""
        checks: dict[str, Callable[[], Awaitable[Component]]] = {
            "redis": self.check_redis,
            "database": self.check_database,
            "eviction": self.check_eviction,
        }
        if self.engine.dialect.name == "postgresql":
            checks["replica_identity"] = self.check_replica_identity
        pipeline = self.pipeline
        if pipeline is not None:
            checks["broker"] = lambda: self.check_broker(pipeline)
        results = await asyncio.gather(*(_timed(n, fn) for n, fn in checks.items()))
        components = {c.name: c for c in results}
        if pipeline is None:
            components["broker"] = Component("broker", "skipped", details={"reason": "no pipeline"})
        else:
            components["pipeline"] = self.check_pipeline(
                pipeline, redis_ok=components["redis"].status == "ok"
            )
        report = Report(overall_status(components), components)
        self.status_gauge.set(STATUS_VALUE[report.status])
        if self.component_gauge is not None:
            for name, comp in components.items():
                if comp.status != "skipped":
                    self.component_gauge.labels(name).set(1 if comp.status == "ok" else 0)
        return report

    def check_pipeline(self, pipeline: ChangePipeline, *, redis_ok: bool) -> Component:
        """The pipeline's stall verdict (in memory, no I/O) and its lag."""
        reason = pipeline.stall_reason()
        facts = pipeline.progress.facts(
            connected=pipeline.connected,
            connect_error=pipeline.connect_error,
            attempts=pipeline.connect_attempts,
        )
        return Component(
            "pipeline",
            pipeline_status(reason, redis_ok),
            0.0,
            reason,
            {"lag": facts.lag, "stalled_seconds": round(facts.stalled_seconds, 1)},
        )


async def _timed(name: str, fn: Callable[[], Awaitable[Component]]) -> Component:
    """Run one check; whatever it raises makes the component down (this is the top level)."""
    t0 = time.perf_counter()
    try:
        comp = await fn()
    except Exception as exc:  # noqa: BLE001 - a health check must answer, whatever failed
        log.warning("health check %s failed: %s", name, describe_error(exc))
        return Component(name, "down", (time.perf_counter() - t0) * 1000, describe_error(exc))
    if comp.latency_ms is None:
        comp = Component(
            comp.name, comp.status, (time.perf_counter() - t0) * 1000, comp.error, comp.details
        )
    return comp
