"""The project's CLI commands (beside Faust's ``worker``): Click options, checked by Click.

Each command is a :class:`~ordercache.app.cli_base.ProjectCommand`: it runs without a
Faust worker, and an unreachable broker, Redis or database is one line naming it
(exit status 1). Option values are Click types (``Choice``, ``IntRange``,
``FloatRange``): a bad one is a usage error, exit status 2, before anything connects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click
import faust

from ordercache.app.cli_base import CommandFailed, ProjectCommand
from ordercache.app.context import AppContext
from ordercache.app.progress import SeedProgressView, SimulationReporter

CommandFn = Callable[..., Awaitable[None]]


def _need_redis(ctx: AppContext) -> None:
    if "redis" in ctx.unconfigured:
        raise CommandFailed(
            "no Redis configured (ORDERCACHE_REDIS_URL or ORDERCACHE_REDIS_HOST) and no "
            f"local worker running with data directory {ctx.settings.data_dir} "
            "(start one with scripts/run)"
        )


def _need_broker(ctx: AppContext) -> None:
    if "broker" in ctx.unconfigured:
        raise CommandFailed(
            "no Kafka broker configured (ORDERCACHE_KAFKA_BROKER) and no local worker "
            f"running with data directory {ctx.settings.data_dir} (start one with scripts/run)"
        )


def register(app: faust.App, ctx: AppContext) -> None:
    """Attach the project's commands to the Faust CLI."""
    from faust.cli import argument, option

    command = app.command

    def project(*options: Any) -> Callable[[CommandFn], Any]:
        decorate: Callable[[CommandFn], Any] = command(
            *options, base=ProjectCommand, settings=ctx.settings
        )
        return decorate

    @project(
        option("--customers", type=click.IntRange(min=1), default=2000, help="Customers."),
        option("--products", type=click.IntRange(min=1), default=500, help="Products."),
        option("--orders", type=click.IntRange(min=0), default=100_000, help="Orders."),
        option(
            "--items-per-order",
            type=click.FloatRange(min=1.0, max=50.0),
            default=5.0,
            help="Mean items per order.",
        ),
        option("--seed", "rng_seed", type=int, default=42, help="Random seed."),
    )
    async def seed(
        self: Any,
        customers: int,
        products: int,
        orders: int,
        items_per_order: float,
        rng_seed: int,
    ) -> None:
        """Create the schema and fill the database with realistic sample data."""
        from ordercache.sample.seed import SeedSpec, run_seed

        spec = SeedSpec(
            customers=customers,
            products=products,
            orders=orders,
            items_per_order=items_per_order,
            seed=rng_seed,
        )
        try:
            with SeedProgressView(orders) as view:
                report = await run_seed(ctx.engine, spec, progress=view.update)
        finally:
            await ctx.aclose()
        self.say(report.summary())

    @project(
        option(
            "--rate",
            type=click.FloatRange(min=0.0),
            default=100.0,
            help="Events per second (0: no limit).",
        ),
        option(
            "--duration",
            type=click.FloatRange(min=0.0, min_open=True),
            default=None,
            help="Seconds to run (default: forever).",
        ),
        option("--events", type=click.IntRange(min=1), default=None, help="Stop after N events."),
        option(
            "--form",
            type=click.Choice(["envelope", "outbox"]),
            default="envelope",
            help="Event form: Debezium envelope or outbox.",
        ),
        option("--seed", "rng_seed", type=int, default=None, help="Random seed."),
        option(
            "--every",
            type=click.FloatRange(min=0.0),
            default=10.0,
            help="Seconds between progress lines (0: none).",
        ),
    )
    async def simulate(
        self: Any,
        rate: float,
        duration: float | None,
        events: int | None,
        form: str,
        rng_seed: int | None,
        every: float,
    ) -> None:
        """Drive order lifecycles against the database and emit their change events."""
        from ordercache.sample.producer import Topics
        from ordercache.sample.simulate import run_simulation

        try:
            _need_broker(ctx)
            async with SimulationReporter(every) as reporter:
                stats = await run_simulation(
                    ctx.engine,
                    Topics.from_settings(ctx.settings),
                    ctx.settings.kafka_bootstrap,
                    rate=rate,
                    duration=duration,
                    events=events,
                    form="outbox" if form == "outbox" else "envelope",
                    seed=rng_seed,
                    on_start=reporter.watch,
                )
        finally:
            await ctx.aclose()
        self.say(stats.summary())

    @project(
        option("--revision", default="head", help="Target revision (default: head)."),
    )
    async def migrate(self: Any, revision: str) -> None:
        """Upgrade the database schema with Alembic (adopts a create_all schema)."""
        from ordercache.db.migrate import upgrade_engine

        try:
            result = await upgrade_engine(ctx.engine, revision)
        finally:
            await ctx.aclose()
        self.say(result.summary())

    @project(
        argument("order_id"),
        option("--from-start", is_flag=True, default=False, help="Replay the retained history."),
        option("--count", type=click.IntRange(min=1), default=None, help="Stop after N entries."),
    )
    async def tail(self: Any, order_id: str, from_start: bool, count: int | None) -> None:
        """Follow one order's tracking updates live (XREAD BLOCK on its stream)."""
        from ordercache.cache.keys import validate_id
        from ordercache.errors import InvalidIdError
        from ordercache.streams import format_entry
        from ordercache.streams import tail as tail_stream

        try:
            oid = validate_id(order_id)
        except InvalidIdError as exc:
            raise click.BadParameter(str(exc), param_hint="ORDER_ID") from None
        try:
            _need_redis(ctx)
            async for entry in tail_stream(
                ctx.redis.client,
                ctx.keys,
                oid,
                shards=ctx.settings.stream_shards,
                from_id="0" if from_start else "$",
                count=count,
                # stay below the socket timeout, or a quiet stream reads as an error
                block_ms=max(100, int(ctx.settings.redis_read_timeout * 1000) - 100),
            ):
                self.say(format_entry(entry))
        finally:
            await ctx.aclose()

    @project(
        option("--url", default=None, help="The worker's base URL (default: the local one)."),
        option("--timeout", type=click.FloatRange(min=0.1), default=5.0, help="Seconds."),
        option("--json", "as_json", is_flag=True, default=False, help="Print the JSON as is."),
    )
    async def stats(self: Any, url: str | None, timeout: float, as_json: bool) -> None:
        """A summary of a running worker's /stats (--json: the document as is)."""
        from ordercache.app.stats_client import fetch_stats, summarize

        await ctx.aclose()  # nothing here talks to Redis or the database
        base = url or f"http://{_connectable(ctx.settings.web_host)}:{ctx.settings.web_port}"
        doc = await fetch_stats(base, timeout=timeout)
        if as_json or self.json:
            self.say(doc.raw)
        else:
            self.say(summarize(doc.data))

    @project(
        option("--group", default="notifier", help="Consumer group."),
        option("--consumer", default=None, help="Consumer name (default: host-pid)."),
        option(
            "--from-start",
            is_flag=True,
            default=False,
            help="A new group starts at the oldest retained entry instead of new ones only.",
        ),
        option(
            "--metrics-port",
            type=click.IntRange(min=0, max=65535),
            default=0,
            help="Serve the consumer's Prometheus metrics on this port (0: off).",
        ),
    )
    async def notify(
        self: Any, group: str, consumer: str | None, from_start: bool, metrics_port: int
    ) -> None:
        """Example downstream consumer: log when an order is out for delivery or delivered."""
        from ordercache.streams.notifier import NotifierOptions, run

        await ctx.aclose()  # the notifier makes its own blocking-read client
        _need_redis(ctx)
        await run(
            ctx.settings,
            NotifierOptions(
                group=group,
                consumer=consumer,
                from_start=from_start,
                metrics_port=metrics_port,
            ),
        )


def _connectable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
