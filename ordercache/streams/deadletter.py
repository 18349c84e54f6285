"""Dead letters: entries that keep failing leave the group, with the reason attached."""

from __future__ import annotations

from collections.abc import Mapping

from redis.typing import EncodableT, FieldT

from ordercache.redisconn.client import AnyRedis


def dead_letter_fields(
    raw: Mapping[bytes, bytes],
    *,
    reason: str,
    entry_id: str,
    deliveries: int,
    group: str,
    stream: str,
    consumer: str,
) -> dict[FieldT, EncodableT]:
    """The original fields plus ``dl_*`` fields saying what happened (pure)."""
    fields: dict[FieldT, EncodableT] = dict(raw.items())
    fields.update(
        {
            "dl_reason": reason,
            "dl_id": entry_id,
            "dl_deliveries": str(deliveries),
            "dl_group": group,
            "dl_stream": stream,
            "dl_consumer": consumer,
        }
    )
    return fields


async def move_to_dead_letters(
    redis: AnyRedis,
    *,
    stream: str,
    group: str,
    entry_id: str,
    dead_letter_stream: str,
    fields: dict[FieldT, EncodableT],
    maxlen: int,
) -> None:
    """XADD to the dead-letter stream and XACK the original in one MULTI.

    Both keys share a hash tag (see ``layout.dead_letter_key``), so the transaction
    stays in one Redis Cluster slot; a crash cannot leave the entry in both places.
    """
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(dead_letter_stream, fields, maxlen=maxlen, approximate=True)
    pipe.xack(stream, group, entry_id)
    await pipe.execute()
