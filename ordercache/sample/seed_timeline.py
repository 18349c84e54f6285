"""The simulated life of one sample order (pure; times are POSIX seconds).

An order is paid minutes after creation, picked hours later, handed to a carrier,
and delivered one to five days after that; a few are cancelled before they ship.
Its status at a moment is the last step reached by then, which is how the seed
gets a realistic mix: old orders delivered, recent ones still moving.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

#: Order statuses, in the order a delivered order goes through them.
ORDER_STATUSES = ("created", "paid", "picked", "shipped", "delivered", "cancelled")
#: Share of orders cancelled before they ship.
CANCEL_RATE = 0.06


@dataclass(frozen=True, slots=True)
class Timeline:
    """When each step of an order happens (``None``: never, because it was cancelled)."""

    created: float
    paid: float | None
    picked: float | None
    shipped: float | None
    delivered: float | None
    cancelled: float | None


def order_timeline(rng: random.Random, created: float) -> Timeline:
    """Simulate an order's whole life from its creation time."""
    paid = created + rng.uniform(1, 30) * MINUTE
    picked = paid + rng.uniform(2, 20) * HOUR
    shipped = picked + rng.uniform(1, 12) * HOUR
    delivered = shipped + rng.uniform(1, 5) * DAY
    if rng.random() < CANCEL_RATE:
        cancelled = created + rng.uniform(0.02, 1.0) * (shipped - created)
        return Timeline(
            created=created,
            paid=paid if paid < cancelled else None,
            picked=picked if picked < cancelled else None,
            shipped=None,
            delivered=None,
            cancelled=cancelled,
        )
    return Timeline(created, paid, picked, shipped, delivered, None)


def status_at(timeline: Timeline, now: float) -> tuple[str, float]:
    """The order's status at ``now`` and when it entered that status."""
    status, since = "created", timeline.created
    steps = (
        ("paid", timeline.paid),
        ("picked", timeline.picked),
        ("shipped", timeline.shipped),
        ("delivered", timeline.delivered),
        ("cancelled", timeline.cancelled),
    )
    for name, when in steps:
        if when is not None and when <= now:
            status, since = name, when
    return status, since


def tracking_steps(
    rng: random.Random, timeline: Timeline, city: str, hubs: Sequence[str]
) -> list[tuple[str, float, str]]:
    """Carrier scans ``(status, time, location)`` of a shipped order, in time order.

    From ``label_created`` at hand-over to ``delivered`` in the customer's city; the
    caller keeps the scans that happened by its ``now``.
    """
    if timeline.shipped is None or timeline.delivered is None:
        return []
    shipped, delivered = timeline.shipped, timeline.delivered
    origin = rng.choice(hubs)
    picked_up = shipped + rng.uniform(1, 6) * HOUR
    out_for_delivery = delivered - rng.uniform(2, 8) * HOUR
    transit = sorted(rng.uniform(picked_up, out_for_delivery) for _ in range(rng.randint(1, 3)))
    steps = [("label_created", shipped, origin), ("picked_up", picked_up, origin)]
    steps += [("in_transit", t, rng.choice(hubs)) for t in transit]
    steps += [("out_for_delivery", out_for_delivery, city), ("delivered", delivered, city)]
    return steps
