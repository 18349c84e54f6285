"""Entry encoding: ``v<version>|<json>`` for a value, ``n<version>|`` for "not found".

The version prefix lets the Lua guards compare versions without decoding JSON, and
lets the hit path decode with one ``partition`` and one pydantic ``validate_json``
(:meth:`ordercache.cache.views.ViewSpec.decode`). JSON only: nothing read from
Redis is ever unpickled.
"""

from __future__ import annotations

from pydantic import BaseModel

from ordercache.errors import CacheError

NEGATIVE_PREFIX = b"n"
VALUE_PREFIX = b"v"


class CorruptEntryError(CacheError):
    """An entry in Redis does not decode; it is treated as a miss and replaced."""

    retriable = False


def encode_value(value: BaseModel) -> bytes:
    """``v<version>|<json>`` of a view (its ``version`` field)."""
    return b"v%d|%s" % (_version_of(value), value.__pydantic_serializer__.to_json(value))


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
