"""Entry encoding: ``v<version>|<json>`` for a value, ``n<version>|`` for "not found".

The version prefix lets the Lua guards compare versions without decoding JSON, and
lets the hit path decode with one ``partition`` and one pydantic ``validate_json``.
JSON only: nothing read from Redis is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ordercache.app.errors import CacheError
from ordercache.app.keys import View
from ordercache.models.views import CustomerOrderHistory, OrderDetails, ProductInventory

T = TypeVar("T", bound=BaseModel)

NEGATIVE_PREFIX = b"n"
VALUE_PREFIX = b"v"


class CorruptEntryError(CacheError):
    """An entry in Redis does not decode; it is treated as a miss and replaced."""

    retriable = False


@dataclass(frozen=True, slots=True)
class ViewSpec(Generic[T]):
    """A cached view: its name (key namespace and TTL) and its pydantic model."""

    view: View
    model: type[T]

    def encode(self, value: T) -> bytes:
        return b"v%d|%s" % (_version_of(value), value.__pydantic_serializer__.to_json(value))

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


def encode_negative(version: int = 0) -> bytes:
    return b"n%d|" % version


def entry_version(raw: bytes) -> int | None:
    """The version recorded in an encoded entry (``None`` if malformed)."""
    head = raw.partition(b"|")[0]
    try:
        return int(head[1:])
    except ValueError:
        return None


def _version_of(value: BaseModel) -> int:
    version = getattr(value, "version", None)
    if not isinstance(version, int) or version < 0:
        raise TypeError(f"{type(value).__name__} has no non-negative integer 'version'")
    return version


ORDER = ViewSpec(View.ORDER, OrderDetails)
HISTORY = ViewSpec(View.HISTORY, CustomerOrderHistory)
INVENTORY = ViewSpec(View.INVENTORY, ProductInventory)

SPECS: dict[View, ViewSpec[BaseModel]] = {
    View.ORDER: ORDER,  # type: ignore[dict-item]
    View.HISTORY: HISTORY,  # type: ignore[dict-item]
    View.INVENTORY: INVENTORY,  # type: ignore[dict-item]
}
