"""Stream key layout: which keys exist and which Redis Cluster slot each lives in.

A *shard* is the unit of placement. Everything of shard ``s`` shares the hash tag
``{s}`` and so one slot, which lets one atomic script append a record to both of
its streams and advance the dedupe state at once:

* ``{p}:stream:tracking:{s}``            global stream of the shard (consumer groups)
* ``{p}:stream:tracking:{s}:offsets``    hash ``topic:partition -> last offset``
* ``{p}:stream:tracking:{s}:seen``       zset ``event_id -> ms`` (dedupe window)
* ``{p}:stream:tracking:{s}:dead``       dead letters of the shard's groups
* ``{p}:stream:tracking:{s}:order:{id}`` per-order stream (tailed live)

An order always maps to shard ``order_id % shards``. Every name goes through
:meth:`KeySpace.stream`, and ids through ``validate_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ordercache.cache.keys import KeySpace, validate_id


@dataclass(frozen=True, slots=True)
class StreamLayout:
    """Keys of the tracking streams for one deployment."""

    keys: KeySpace
    shards: int

    def shard_of(self, order_id: int) -> int:
        """The global shard an order's updates go to (stable for a given ``shards``)."""
        return validate_id(order_id) % self.shards

    def shard_stream(self, shard: int) -> str:
        """Global stream of one shard (read by consumer groups)."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard out of range 0..{self.shards - 1}: {shard!r}")
        return self.keys.stream(f"tracking:{{{shard}}}")

    def shard_streams(self) -> list[str]:
        """All global shard streams, in shard order."""
        return [self.shard_stream(s) for s in range(self.shards)]

    def shard_offsets(self, shard: int) -> str:
        """Hash ``topic:partition -> last mirrored offset`` (same slot as the shard)."""
        return self.shard_stream(shard) + ":offsets"

    def shard_seen(self, shard: int) -> str:
        """Sorted set ``event_id -> first seen (ms)`` within the dedupe window."""
        return self.shard_stream(shard) + ":seen"

    def order_stream(self, order_id: int | str) -> str:
        """Per-order stream (tailed with XREAD BLOCK), in its shard's slot."""
        oid = validate_id(order_id)
        return f"{self.shard_stream(oid % self.shards)}:order:{oid}"


def dead_letter_key(stream: str) -> str:
    """Dead-letter stream of ``stream``; shares its hash tag, hence its slot."""
    return stream + ":dead"
