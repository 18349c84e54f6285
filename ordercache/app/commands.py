"""Extra CLI commands of the ``ordercache`` program (beside Faust's ``worker``)."""

from __future__ import annotations

from typing import Any

import faust

from ordercache.app.context import AppContext


def register(app: faust.App, ctx: AppContext) -> None:
    """Attach the project's commands to the Faust CLI."""
    from faust.cli import argument, option

    @app.command(
        option("--customers", type=int, default=2000, help="Customers to create."),
        option("--products", type=int, default=500, help="Products to create."),
        option("--orders", type=int, default=100_000, help="Orders to create."),
        option("--items-per-order", type=float, default=5.0, help="Mean items per order."),
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
            report = await run_seed(ctx.engine, spec)
        finally:
            await ctx.aclose()
        self.say(report.summary())

    @app.command(
        option("--rate", type=float, default=100.0, help="Events per second (0: no limit)."),
        option("--duration", type=float, default=None, help="Seconds to run (default: forever)."),
        option("--events", type=int, default=None, help="Stop after this many events."),
        option("--form", default="envelope", help="Event form: envelope or outbox."),
        option("--seed", "rng_seed", type=int, default=None, help="Random seed."),
    )
    async def simulate(
        self: Any,
        rate: float,
        duration: float | None,
        events: int | None,
        form: str,
        rng_seed: int | None,
    ) -> None:
        """Drive order lifecycles against the database and emit their change events."""
        from ordercache.sample.producer import Topics
        from ordercache.sample.simulate import run_simulation

        if form not in ("envelope", "outbox"):
            raise SystemExit("ordercache simulate: --form must be envelope or outbox")
        try:
            stats = await run_simulation(
                ctx.engine,
                Topics.from_settings(ctx.settings),
                ctx.settings.kafka_bootstrap,
                rate=rate,
                duration=duration,
                events=events,
                form="outbox" if form == "outbox" else "envelope",
                seed=rng_seed,
            )
        finally:
            await ctx.aclose()
        self.say(stats.summary())

    @app.command(
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

    @app.command(
        argument("order_id"),
        option("--from-start", is_flag=True, default=False, help="Replay the retained history."),
        option("--count", type=int, default=None, help="Stop after this many entries."),
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
            raise SystemExit(f"ordercache tail: {exc}") from None
        try:
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
