"""Stream key layout: which keys exist and which Redis Cluster slot each lives in.

Two slot families, each touched by its own script (a script may only touch one slot):

* global shard ``s``: ``{p}:stream:tracking:{s}`` with ``…:offsets`` (per-partition
  watermarks) and ``…:seen`` (recent event ids), plus ``…:dead`` for dead letters —
  all share the hash tag ``{s}``;
* order ``o``: ``{p}:stream:order:{o}`` with ``…:state`` (watermarks and recent event
  ids of that order) — hash tag ``{o}``.

Every name goes through :meth:`KeySpace.stream`, and ids through ``validate_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ordercache.app.keys import KeySpace, validate_id


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

    def order_stream(self, order_id: int) -> str:
        """Per-order stream (tailed with XREAD BLOCK)."""
        return order_stream_key(self.keys, order_id)

    def order_state(self, order_id: int) -> str:
        """Hash of the order stream's dedupe state (same slot as the order stream)."""
        return self.order_stream(order_id) + ":state"


def order_stream_key(keys: KeySpace, order_id: int | str) -> str:
    """Per-order stream of ``order_id`` (validated: it becomes part of a key)."""
    return keys.stream(f"order:{{{validate_id(order_id)}}}")


def dead_letter_key(stream: str) -> str:
    """Dead-letter stream of ``stream``; shares its hash tag, hence its slot."""
    return stream + ":dead"
