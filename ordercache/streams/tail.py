"""Follow one order's tracking stream live (``ordercache tail ORDER_ID``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ordercache.cache.keys import KeySpace
from ordercache.errors import DecodeError
from ordercache.redisconn.client import AnyRedis
from ordercache.streams._redis import safe_block_ms
from ordercache.streams.config import DEFAULT_SHARDS
from ordercache.streams.entry import StreamEntry, decode_text
from ordercache.streams.errors import StreamError
from ordercache.streams.layout import StreamLayout


async def tail(
    redis: AnyRedis,
    keys: KeySpace,
    order_id: int | str,
    *,
    shards: int = DEFAULT_SHARDS,
    from_id: str = "$",
    count: int | None = None,
    block_ms: int = 1000,
) -> AsyncIterator[StreamEntry]:
    """Yield the order's stream entries as they arrive (XREAD BLOCK), oldest first.

    ``from_id="$"`` starts after the newest entry present now, ``"0"`` replays what
    the stream still holds. ``count`` stops after that many entries (``None``:
    follow forever). ``shards`` must match the mirror's (the order's stream lives in
    its shard's slot). ``order_id`` is validated before it becomes a key.
    Raises :class:`StreamError` when Redis is unreachable.
    """
    key = StreamLayout(keys, shards).order_stream(order_id)
    block = safe_block_ms(redis, block_ms)
    try:
        cursor = await _resolve_start(redis, key, from_id)
    except RedisError as exc:
        raise StreamError(f"cannot read the tracking stream: {exc}") from exc
    seen = 0
    while count is None or seen < count:
        batch = 100 if count is None else min(100, count - seen)
        try:
            resp: Any = await redis.xread({key: cursor}, count=batch, block=block)
        except RedisTimeoutError:
            continue  # a quiet stream: block again from the same cursor
        except RedisError as exc:
            raise StreamError(f"cannot read the tracking stream: {exc}") from exc
        if not resp:
            continue
        for raw_id, raw in resp[0][1]:
            cursor = raw_id.decode()
            yield StreamEntry(cursor, decode_text(raw))
            seen += 1


async def _resolve_start(redis: AnyRedis, key: str, from_id: str) -> str:
    """Turn "$" into the newest id now, so entries added between reads are not missed."""
    if from_id != "$":
        return from_id
    newest: Any = await redis.xrevrange(key, count=1)
    return str(newest[0][0].decode()) if newest else "0-0"


def format_entry(entry: StreamEntry) -> str:
    """One line for a terminal: time, order, status, place, carrier, shipment, id."""
    try:
        t = entry.tracking()
    except DecodeError:
        pairs = " ".join(f"{k}={v}" for k, v in entry.fields.items())
        return f"{entry.id}  (undecodable) {pairs}"
    parts = [
        t.occurred_at.strftime("%Y-%m-%d %H:%M:%S%z"),
        f"order {t.order_id}",
        t.status,
    ]
    if t.location:
        parts.append(f"at {t.location}")
    if t.carrier:
        parts.append(f"via {t.carrier}")
    if t.shipment_id is not None:
        parts.append(f"shipment {t.shipment_id}")
    parts.append(f"[{entry.id}]")
    return "  ".join(parts)
