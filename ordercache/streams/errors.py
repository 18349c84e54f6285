"""Errors of the streams subsystem, under the project's single exception root."""

from __future__ import annotations

from ordercache.errors import OrderCacheError


class StreamError(OrderCacheError):
    """Redis could not take a streams operation; trying again may succeed."""

    retriable = True


class MirrorOrderError(OrderCacheError, ValueError):
    """A batch lists a Kafka partition's offsets out of order.

    The mirror's redelivery guard is a per-partition offset watermark, so records of
    one partition must arrive in offset order; anything else is a caller bug.
    """
