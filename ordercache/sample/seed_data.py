"""Realistic sample data for the system of record, generated from a seed (pure, no I/O).

Everything is a function of the :class:`SeedSpec` and the :class:`IdBase` (the ids
already taken in the database): the same seed on an empty database gives the same
rows. Each part draws from its own random stream, so generating one part never
shifts another.

The shape of the data:

* customers with a heavy-tailed number of orders (a few order a lot);
* products with SKUs and prices, a skewed popularity, and an inventory row each;
* orders over the year before ``until``, more of them recent (a growing shop);
  each order's life is simulated (paid, picked, shipped, delivered, or cancelled
  before shipping) and its status is the last step reached by ``until``;
* a shipment for every shipped or delivered order, with its tracking events
  (``label_created`` ... ``delivered``) up to ``until``.

Rows are inserted in their final state: every version is 1, except
``customers.orders_version`` = 1 + the customer's orders (each order creation
bumped it once, as the write path does).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from ordercache.sample.seed_timeline import DAY, Timeline, order_timeline, status_at, tracking_steps

Row = dict[str, Any]

#: Days of order history before ``until``.
WINDOW_DAYS = 365
#: Upper bound of items in one order (keeps the geometric tail bounded).
MAX_ITEMS = 50


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "Anna Ben Clara David Emma Felix Greta Hugo Ines Jonas Karla Luca Mia Noah Olivia "
    "Paul Quinn Rosa Sam Tara Umar Vera Wim Xenia Yusuf Zoe"
)
_LAST = _words(
    "Meyer Schmidt Novak Rossi Garcia Dubois Jansen Nowak Silva Berg Costa Lind Weber "
    "Moreau Kowalski Horvat Fischer Bauer Keller Vogel Ricci Santos Olsen Peeters"
)
_ADJ = _words("Classic Compact Deluxe Eco Essential Light Pro Smart Sturdy Urban Vintage")
_NOUN = _words(
    "Backpack Bottle Chair Desk Headphones Jacket Kettle Lamp Mug Notebook Pan Pillow "
    "Shoes Speaker Tent Towel Umbrella Watch"
)
_CATEGORY = ("HOM", "OUT", "ELE", "APP", "KIT", "OFF")
_CITIES = _words(
    "Amsterdam Antwerp Barcelona Berlin Bologna Brno Copenhagen Dublin Frankfurt Hamburg "
    "Lisbon Lyon Madrid Milan Munich Paris Porto Prague Rotterdam Vienna Warsaw Zurich"
)
_HUBS = ("Leipzig hub", "Venlo hub", "Eindhoven hub", "Liege hub", "Koeln hub")
_CARRIERS = ("DHL", "UPS", "DPD", "GLS", "PostNL", "FedEx")


@dataclass(frozen=True, slots=True)
class SeedSpec:
    """What to generate. ``until`` ends the one-year window (default: today 00:00 UTC)."""

    customers: int = 2000
    products: int = 500
    orders: int = 100_000
    items_per_order: float = 5.0
    seed: int = 42
    until: datetime | None = None

    def __post_init__(self) -> None:
        if min(self.customers, self.products, self.orders) < 0:
            raise ValueError("seed sizes must not be negative")
        if self.orders and not (self.customers and self.products):
            raise ValueError("orders need at least one customer and one product")
        if not 1.0 <= self.items_per_order <= MAX_ITEMS:
            raise ValueError(f"items_per_order must be between 1 and {MAX_ITEMS}")
        if self.until is not None and self.until.tzinfo is None:
            raise ValueError("until must be timezone-aware")

    def window_end(self) -> datetime:
        if self.until is not None:
            return self.until.astimezone(UTC)
        return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class IdBase:
    """Greatest id already used per table: generated ids start right above it."""

    customers: int = 0
    products: int = 0
    orders: int = 0
    order_items: int = 0
    shipments: int = 0
    tracking_events: int = 0


@dataclass(slots=True)
class OrderBatch:
    """Rows of a run of consecutive orders, in foreign-key order."""

    orders: list[Row] = field(default_factory=list)
    order_items: list[Row] = field(default_factory=list)
    shipments: list[Row] = field(default_factory=list)
    tracking_events: list[Row] = field(default_factory=list)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _uuid_prefix(rng: random.Random) -> str:
    """The first 20 hex digits of a version-4 UUID, as text with its dashes."""
    a, b, c, d = rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12), rng.getrandbits(12)
    return f"{a:08x}-{b:04x}-4{c:03x}-8{d:03x}-"


def _quantity(u: float) -> int:
    # Most lines are for one piece, a few for several.
    return 1 if u < 0.7 else 2 if u < 0.9 else 3 if u < 0.97 else 4


def item_count(rng: random.Random, mean: float, cap: int) -> int:
    """Items in one order: geometric on 1, 2, ... with the given mean, at most ``cap``."""
    if mean <= 1.0:
        return 1
    k = 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - 1.0 / mean))
    return min(k, cap)


class SeedGenerator:
    """Generates the rows of a :class:`SeedSpec` above an :class:`IdBase`."""

    def __init__(self, spec: SeedSpec, base: IdBase | None = None) -> None:
        self.spec = spec
        self.base = base or IdBase()
        self.until = spec.window_end().timestamp()
        plan = random.Random(f"{spec.seed}:plan")
        # Order creation times, oldest first, so order ids grow with time; U**1.5
        # puts more orders in recent weeks.
        window = WINDOW_DAYS * DAY
        self._created = sorted(
            self.until - window * plan.random() ** 1.5 for _ in range(spec.orders)
        )
        weights = [plan.paretovariate(1.5) for _ in range(spec.customers)]
        self._order_customer = (
            plan.choices(
                range(spec.customers), cum_weights=list(accumulate(weights)), k=spec.orders
            )
            if spec.orders
            else []
        )
        self._city = [plan.randrange(len(_CITIES)) for _ in range(spec.customers)]
        popularity = [plan.paretovariate(2.0) for _ in range(spec.products)]
        self._product_cum = list(accumulate(popularity))
        # Event ids look like UUIDs: a per-seed prefix and the row id, so they are
        # unique across runs into one database and cheap to make (uuid5 is not).
        self._event_prefix = _uuid_prefix(plan)
        self._prices = [
            max(99, int(math.exp(plan.gauss(7.6, 0.9))) // 100 * 100 + 99) for _ in popularity
        ]

    # ------------------------------------------------------------------ reference data
    def customers(self) -> list[Row]:
        rng = random.Random(f"{self.spec.seed}:customers")
        orders = [0] * self.spec.customers
        first = [self.until] * self.spec.customers
        for created, cust in zip(self._created, self._order_customer, strict=True):
            if not orders[cust]:
                first[cust] = created
            orders[cust] += 1
        rows: list[Row] = []
        for i in range(self.spec.customers):
            cid = self.base.customers + 1 + i
            given, family = rng.choice(_FIRST), rng.choice(_LAST)
            since = first[i] - rng.uniform(0.0, 60.0) * DAY
            if not orders[i]:
                since = self.until - rng.uniform(0.0, WINDOW_DAYS + 60) * DAY
            rows.append(
                {
                    "id": cid,
                    "email": f"{given}.{family}.{cid}@example.com".lower(),
                    "name": f"{given} {family}",
                    "created_at": _ts(since),
                    "version": 1,
                    "orders_version": 1 + orders[i],
                }
            )
        return rows

    def products(self) -> list[Row]:
        rng = random.Random(f"{self.spec.seed}:products")
        rows: list[Row] = []
        for i in range(self.spec.products):
            pid = self.base.products + 1 + i
            rows.append(
                {
                    "id": pid,
                    "sku": f"{rng.choice(_CATEGORY)}-{pid:06d}",
                    "name": f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}",
                    "price_cents": self._prices[i],
                    "version": 1,
                }
            )
        return rows

    def inventory(self) -> list[Row]:
        rng = random.Random(f"{self.spec.seed}:inventory")
        rows: list[Row] = []
        for i in range(self.spec.products):
            available = 0 if rng.random() < 0.05 else rng.randint(1, 1000)
            rows.append(
                {
                    "product_id": self.base.products + 1 + i,
                    "available": available,
                    "reserved": rng.randint(0, min(available, 40)),
                    "version": 1,
                    "updated_at": _ts(self.until - rng.uniform(0.0, 7.0) * DAY),
                }
            )
        return rows

    # ------------------------------------------------------------------ orders
    def order_batches(self, size: int) -> Iterator[OrderBatch]:
        """The orders in runs of ``size``, each with its items, shipment and events."""
        rng = random.Random(f"{self.spec.seed}:orders")
        item_id, ship_id, event_id = (
            self.base.order_items,
            self.base.shipments,
            self.base.tracking_events,
        )
        batch = OrderBatch()
        for i, created in enumerate(self._created):
            oid = self.base.orders + 1 + i
            cust = self._order_customer[i]
            total = 0
            k = item_count(rng, self.spec.items_per_order, min(MAX_ITEMS, self.spec.products))
            for p in self._pick_products(rng, k):
                quantity = _quantity(rng.random())
                price = self._prices[p]
                if rng.random() < 0.1:
                    price = max(1, int(price * rng.uniform(0.7, 0.95)))
                total += quantity * price
                item_id += 1
                batch.order_items.append(
                    {
                        "id": item_id,
                        "order_id": oid,
                        "product_id": self.base.products + 1 + p,
                        "quantity": quantity,
                        "unit_price_cents": price,
                        "version": 1,
                    }
                )
            timeline = order_timeline(rng, created)
            status, changed = status_at(timeline, self.until)
            if status in ("shipped", "delivered"):
                ship_id, event_id, changed = self._shipment(
                    rng, batch, timeline, oid, cust, ship_id, event_id, changed
                )
            batch.orders.append(
                {
                    "id": oid,
                    "customer_id": self.base.customers + 1 + cust,
                    "status": status,
                    "total_cents": total,
                    "currency": "EUR",
                    "created_at": _ts(created),
                    "updated_at": _ts(changed),
                    "version": 1,
                }
            )
            if len(batch.orders) >= size:
                yield batch
                batch = OrderBatch()
        if batch.orders:
            yield batch

    def _pick_products(self, rng: random.Random, k: int) -> list[int]:
        chosen: dict[int, None] = {}
        while len(chosen) < k:
            for p in rng.choices(range(self.spec.products), cum_weights=self._product_cum, k=k):
                chosen.setdefault(p)
        return list(chosen)[:k]

    def _shipment(
        self,
        rng: random.Random,
        batch: OrderBatch,
        timeline: Timeline,
        order_id: int,
        cust: int,
        ship_id: int,
        event_id: int,
        changed: float,
    ) -> tuple[int, int, float]:
        carrier = rng.choice(_CARRIERS)
        city = _CITIES[self._city[cust]]
        steps = [s for s in tracking_steps(rng, timeline, city, _HUBS) if s[1] <= self.until]
        ship_id += 1
        last_status, last_time = steps[-1][0], steps[-1][1]
        batch.shipments.append(
            {
                "id": ship_id,
                "order_id": order_id,
                "carrier": carrier,
                "tracking_number": f"{carrier[:2].upper()}{rng.randrange(10**11, 10**12)}",
                "status": last_status,
                "created_at": _ts(steps[0][1]),
                "updated_at": _ts(last_time),
                "version": 1,
            }
        )
        for status, when, location in steps:
            event_id += 1
            batch.tracking_events.append(
                {
                    "id": event_id,
                    "event_id": f"{self._event_prefix}{event_id:012x}",
                    "order_id": order_id,
                    "shipment_id": ship_id,
                    "status": status,
                    "location": location,
                    "carrier": carrier,
                    "occurred_at": _ts(when),
                    "version": 1,
                }
            )
        return ship_id, event_id, max(changed, last_time)


__all__ = ["IdBase", "OrderBatch", "Row", "SeedGenerator", "SeedSpec", "item_count"]
