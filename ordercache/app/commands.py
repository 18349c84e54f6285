"""Extra CLI commands of the ``ordercache`` program (beside Faust's ``worker``)."""

from __future__ import annotations

from typing import Any

import faust

from ordercache.app.context import AppContext


def register(app: faust.App, ctx: AppContext) -> None:
    """Attach the project's commands to the Faust CLI."""
    from faust.cli import option

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
        from ordercache.app.seed import SeedSpec, run_seed

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
        option("--revision", default="head", help="Target revision (default: head)."),
    )
    async def migrate(self: Any, revision: str) -> None:
        """Upgrade the database schema with Alembic (adopts a create_all schema)."""
        from ordercache.app.migrate import upgrade_engine

        try:
            result = await upgrade_engine(ctx.engine, revision)
        finally:
            await ctx.aclose()
        self.say(result.summary())
