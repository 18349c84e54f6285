"""The project's exception tree. Library errors are translated at their boundary.

``retriable`` says whether the same operation may succeed if tried again; retry
policies read it instead of matching on types (cf. aiokafka's ``errors.py``).
"""

from __future__ import annotations


class OrderCacheError(Exception):
    """Root of every error ordercache raises on purpose."""

    retriable: bool = False


class ConfigError(OrderCacheError):
    """A setting is missing or wrong. The message names the environment variable."""


class InvalidIdError(OrderCacheError, ValueError):
    """An id failed validation before it could become a cache key."""


class CacheError(OrderCacheError):
    """Redis could not serve a cache operation."""

    retriable = True


class CacheTimeoutError(CacheError):
    """A Redis call exceeded its time budget."""


class DecodeError(OrderCacheError):
    """An event could not be decoded; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
