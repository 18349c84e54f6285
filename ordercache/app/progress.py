"""Progress of long commands: ``seed``'s bar (or a line per phase), ``simulate``'s summary.

On a terminal ``seed`` draws Click's progress bar over the orders, with the rows per
second inserted so far; anywhere else (a pipe, a log file, CI) it prints one line per
phase and one per tenth of the orders, which a log keeps readable. ``simulate``
prints a summary line every ``--every`` seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from types import TracebackType
from typing import Any, TextIO

import click

from ordercache.sample.seed import SeedStep
from ordercache.sample.simulate import Simulator
from ordercache.tasks import cancel_and_wait


class SeedProgressView:
    """Shows :class:`SeedStep` updates; use as a context manager around the seed."""

    def __init__(self, orders: int, *, stream: TextIO | None = None) -> None:
        self.orders = orders
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._shown_orders = 0
        self._next_line = 0
        self._rate = ""

    def __enter__(self) -> SeedProgressView:
        if self.tty and self.orders > 0:
            self._bar = click.progressbar(
                length=self.orders,
                label="seeding orders",
                file=self.stream,
                show_eta=True,
                item_show_func=lambda _item: self._rate,
            )
            self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def update(self, step: SeedStep) -> None:
        rate = step.rows / step.seconds if step.seconds > 0 else 0.0
        self._rate = f"{rate:,.0f} rows/s"
        if self._bar is not None:
            self._bar.update(step.orders - self._shown_orders, step.orders)
            self._shown_orders = step.orders
            return
        if step.phase == "orders":
            if step.orders < self._next_line and step.orders < self.orders:
                return
            self._next_line = step.orders + max(1, self.orders // 10)
            what = f"orders {step.orders:,}/{self.orders:,}"
        else:
            what = step.phase
        click.echo(
            f"seed: {what}: {step.rows:,} rows in {step.seconds:.1f} s ({self._rate})",
            file=self.stream,
        )


def simulation_line(sim: Simulator, elapsed: float) -> str:
    """One progress line of a running simulation."""
    st = sim.stats
    rate = st.events / elapsed if elapsed > 0 else 0.0
    return (
        f"simulate: {elapsed:.0f} s: {st.events:,} events ({rate:,.0f}/s) in "
        f"{st.transactions:,} transactions; orders {st.orders_created:,} created, "
        f"{st.orders_delivered:,} delivered, {st.orders_cancelled:,} cancelled; "
        f"{len(sim.open_orders):,} open"
    )


class SimulationReporter:
    """Prints :func:`simulation_line` every ``every`` seconds while a simulation runs."""

    def __init__(self, every: float, *, stream: TextIO | None = None) -> None:
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self._sim: Simulator | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    def watch(self, sim: Simulator) -> None:
        self._sim = sim
        self._started = time.monotonic()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if self._sim is not None:
                line = simulation_line(self._sim, time.monotonic() - self._started)
                click.echo(line, file=self.stream)

    async def __aenter__(self) -> SimulationReporter:
        if self.every > 0:
            self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
