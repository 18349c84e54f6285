"""The cached views, each declared once: name, model, id field, schema version, TTL.

Everything else reads these facts from here: the key space (the schema version is
part of every key), the TTL policy (which setting a view's TTL comes from), the
cache service (a value's id) and the read API (the model a response is).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from ordercache.cache.codec import NEGATIVE_PREFIX, CorruptEntryError, encode_value
from ordercache.models.views import CustomerOrderHistory, OrderDetails, ProductInventory

if TYPE_CHECKING:
    from ordercache.cache.keys import TtlPolicy

T = TypeVar("T", bound=BaseModel)


class View(StrEnum):
    """The cached views (the key namespace and the metrics label)."""

    ORDER = "order"
    HISTORY = "history"
    INVENTORY = "inventory"


@dataclass(frozen=True, slots=True)
class ViewSpec(Generic[T]):
    """One cached view and what the cache needs to know about it.

    ``schema_version`` is part of the view's keys: bump it whenever the model changes
    shape, so that a changed model never reads an old entry. ``ttl`` picks the view's
    TTL from the :class:`~ordercache.cache.keys.TtlPolicy` (``ORDERCACHE_TTL_*``).
    """

    view: View
    model: type[T]
    id_field: str
    schema_version: int
    ttl: Callable[[TtlPolicy], int]

    def entity_id(self, value: T) -> int:
        """The id the value is cached under."""
        return int(getattr(value, self.id_field))

    def encode(self, value: T) -> bytes:
        return encode_value(value)

    def decode(self, raw: bytes) -> T | None:
        """The value, or ``None`` for a cached "not found". Raises CorruptEntryError."""
        head, sep, body = raw.partition(b"|")
        if not sep:
            raise CorruptEntryError("entry without version prefix")
        if head[:1] == NEGATIVE_PREFIX:
            return None
        try:
            return self.model.model_validate_json(body)
        except ValidationError as exc:
            raise CorruptEntryError(f"entry does not match {self.model.__name__}") from exc

    def decode_many(self, raws: Sequence[bytes | None]) -> list[T | None]:
        """Values of many entries (``None`` for a miss, a "not found" or a corrupt entry).

        The value bodies are joined into one JSON array and validated in one call:
        pydantic-core's parser and validator run once over the batch instead of once
        per entry, which is most of a batch read's time. Only if that fails (some
        entry is corrupt) are the entries decoded one by one.
        """
        out: list[T | None] = [None] * len(raws)
        where: list[int] = []
        bodies: list[memoryview] = []  # views into the replies: one copy, by the join
        for i, raw in enumerate(raws):
            if raw is None or raw[:1] == NEGATIVE_PREFIX:
                continue
            sep = raw.find(b"|")
            if sep < 0:
                continue
            where.append(i)
            bodies.append(memoryview(raw)[sep + 1 :])
        if not bodies:
            return out
        try:
            values = _list_adapter(self.model).validate_json(b"[" + b",".join(bodies) + b"]")
        except ValidationError:
            values = []
        # a corrupt body could split into two array items: the count must match
        if len(values) != len(bodies):
            for i in where:
                try:
                    out[i] = self.decode(raws[i])  # type: ignore[arg-type]
                except CorruptEntryError:
                    out[i] = None
            return out
        for i, value in zip(where, values, strict=True):
            out[i] = value
        return out


@functools.cache
def _list_adapter(model: type[T]) -> TypeAdapter[list[T]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


ORDER = ViewSpec(
    View.ORDER, OrderDetails, id_field="order_id", schema_version=1, ttl=lambda t: t.order
)
HISTORY = ViewSpec(
    View.HISTORY,
    CustomerOrderHistory,
    id_field="customer_id",
    schema_version=1,
    ttl=lambda t: t.history,
)
INVENTORY = ViewSpec(
    View.INVENTORY,
    ProductInventory,
    id_field="product_id",
    schema_version=1,
    ttl=lambda t: t.inventory,
)

SPECS: dict[View, ViewSpec[BaseModel]] = {
    View.ORDER: ORDER,  # type: ignore[dict-item]
    View.HISTORY: HISTORY,  # type: ignore[dict-item]
    View.INVENTORY: INVENTORY,  # type: ignore[dict-item]
}
