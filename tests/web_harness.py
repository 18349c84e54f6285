"""HTTP helpers around a real worker subprocess (``ordercache worker``), for the
``test_web_*`` modules: start, poll until a condition holds (showing the worker's
log tail when it does not), parse ``/metrics``, seed a few rows.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.workers import WorkerProcess


@dataclass
class Worker:
    """A worker subprocess (:class:`tests.workers.WorkerProcess`) and its HTTP address."""

    process: WorkerProcess

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.proc is not None
        return self.process.proc

    @property
    def port(self) -> int:
        return self.process.web_port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.process.log().splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate(timeout=20)


def start_worker(env: Mapping[str, Any], workdir: Path) -> Worker:
    """Start ``ordercache worker`` with ``env`` (setting names, without the prefix)."""
    return Worker(WorkerProcess.configured(workdir.parent, workdir.name, **env).start())


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def cache(self) -> str | None:
        return self.headers.get("X-Cache")


async def get(session: aiohttp.ClientSession, url: str) -> Reply:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=15)) as resp:
        body = await resp.read()
        return Reply(resp.status, dict(resp.headers), body)


async def wait_for(
    session: aiohttp.ClientSession,
    worker: Worker,
    path: str,
    accept: Callable[[Reply], bool],
    *,
    timeout: float = 60.0,
) -> Reply:
    """Poll ``path`` until ``accept(reply)``; fail with the worker's log tail."""
    deadline = time.monotonic() + timeout
    last: Reply | str = "no answer"
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}):\n{worker.log_tail()}")
        try:
            reply = await get(session, worker.base + path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        else:
            if accept(reply):
                return reply
            last = reply
        await asyncio.sleep(0.25)
    detail = last if isinstance(last, str) else f"{last.status} {last.body[:500]!r}"
    raise AssertionError(
        f"{path}: condition not met in {timeout}s; last: {detail}\n{worker.log_tail()}"
    )


def metrics_of(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parsed exposition: sample name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def sample(
    parsed: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    """Sum of the samples ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in parsed.get(name, {}).items():
        have = dict(key)
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


# --------------------------------------------------------------------------- seeding
@dataclass(frozen=True)
class Seeded:
    order_id: int
    order_items: int
    customer_id: int
    history_customer_id: int
    history_orders: int
    product_id: int


async def seed(database_url: str, *, history_orders: int = 130) -> Seeded:
    """A few rows through the ORM: an order with items and tracking, a customer with
    ``history_orders`` orders, a product with inventory."""
    import uuid

    from ordercache.db.engine import create_engine, session_factory
    from ordercache.models.orm import (
        Customer,
        Inventory,
        Order,
        OrderItem,
        Product,
        TrackingEvent,
    )

    tag = uuid.uuid4().hex[:10]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as s, s.begin():
            buyer = Customer(email=f"a-{tag}@example.com", name="Ann")
            regular = Customer(email=f"b-{tag}@example.com", name="Bob")
            products = [
                Product(sku=f"SKU-{tag}-{i}", name=f"thing {i}", price_cents=100 + i)
                for i in range(3)
            ]
            s.add_all([buyer, regular, *products])
            await s.flush()
            s.add_all(
                Inventory(product_id=p.id, available=10 * (i + 1), reserved=i, updated_at=base)
                for i, p in enumerate(products)
            )
            order = Order(
                customer_id=buyer.id, status="shipped", total_cents=303, created_at=base,
                updated_at=base,
            )  # fmt: skip
            s.add(order)
            await s.flush()
            s.add_all(
                OrderItem(order_id=order.id, product_id=p.id, quantity=1, unit_price_cents=101)
                for p in products
            )
            s.add_all(
                TrackingEvent(
                    event_id=f"{tag}-{i}",
                    order_id=order.id,
                    status=st,
                    carrier="DHL",
                    location="Berlin",
                    occurred_at=base + timedelta(hours=i),
                )
                for i, st in enumerate(("label_created", "in_transit"))
            )
            s.add_all(
                Order(
                    customer_id=regular.id,
                    status="created",
                    total_cents=i,
                    currency="EUR",
                    created_at=base + timedelta(minutes=i),
                    updated_at=base,
                )
                for i in range(history_orders)
            )
            await s.flush()
            return Seeded(
                order_id=order.id,
                order_items=len(products),
                customer_id=buyer.id,
                history_customer_id=regular.id,
                history_orders=history_orders,
                product_id=products[0].id,
            )
    finally:
        await engine.dispose()
