"""Entry encoding: ``v<version>|<json>`` for a value, ``n<version>|`` for "not found".

A value filled after a database load also records what early refresh (XFetch,
:mod:`ordercache.cache.xfetch`) needs: ``v<version>:<delta_ms>:<expires_ms>|<json>``
(how long the load took, and when the entry expires, in Unix milliseconds). The Lua
guards read only the leading version (``^[vn](%d+)[|:]``), so both forms compare alike.

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


def encode_value(value: BaseModel, *, delta_ms: int = 0, expires_ms: int = 0) -> bytes:
    """``v<version>|<json>`` of a view (its ``version`` field); with the recompute time
    and expiry when known (``v<version>:<delta_ms>:<expires_ms>|<json>``)."""
    body = value.__pydantic_serializer__.to_json(value)
    if delta_ms > 0 and expires_ms > 0:
        return b"v%d:%d:%d|%s" % (_version_of(value), delta_ms, expires_ms, body)
    return b"v%d|%s" % (_version_of(value), body)


def encode_negative(version: int = 0) -> bytes:
    return b"n%d|" % version


def entry_body(raw: bytes) -> bytes | None:
    """The JSON after the prefix (``None`` for a cached "not found"), undecoded: for a
    view whose JSON is also the response body, a hit is served as stored.
    Raises CorruptEntryError if the entry has no prefix or the body is not a JSON object.
    """
    sep = raw.find(b"|")
    if sep < 0:
        raise CorruptEntryError("entry without version prefix")
    if raw[:1] == NEGATIVE_PREFIX:
        return None
    body = raw[sep + 1 :]
    # A cheap shape check instead of a parse: entries are written only by
    # encode_value, so a torn or foreign value is what this guards against.
    if body[:1] != b"{" or body[-1:] != b"}":
        raise CorruptEntryError("entry body is not a JSON object")
    return body


def entry_version(raw: bytes) -> int | None:
    """The version recorded in an encoded entry (``None`` if malformed)."""
    head = raw.partition(b"|")[0].partition(b":")[0]
    try:
        return int(head[1:])
    except ValueError:
        return None


def _version_of(value: BaseModel) -> int:
    version = getattr(value, "version", None)
    if not isinstance(version, int) or version < 0:
        raise TypeError(f"{type(value).__name__} has no non-negative integer 'version'")
    return version
