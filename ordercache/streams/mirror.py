"""Mirror tracking updates into Redis Streams, exactly once per event in effect.

Each record goes to one global shard stream (read by consumer groups) and to its
order's stream (tailed live). Both streams and the dedupe state of a shard share
one Redis Cluster slot (see :mod:`~ordercache.streams.layout`), so one Lua script
per shard and batch checks the dedupe state, appends to both streams and advances
the state in a single atomic step. A Kafka redelivery (same partition, offset at or
below the watermark) or a repeated event id (within the dedupe window) adds
nothing; since a repeat is harmless, a failed batch is simply mirrored again.
A batch costs one round trip: its shard calls travel in a few concurrent pipelines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from ordercache.cache.keys import KeySpace
from ordercache.redisconn.client import AnyRedis
from ordercache.redisconn.scripts import LuaScript, raise_noscript, run_loading
from ordercache.streams.config import MirrorConfig
from ordercache.streams.entry import TrackingRecord, encode_fields
from ordercache.streams.errors import MirrorOrderError, StreamError
from ordercache.streams.layout import StreamLayout
from ordercache.streams.metrics import StreamMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MirrorResult:
    """What one ``mirror()`` call did.

    ``added`` / ``duplicates`` count records; ``order_failures`` counts records whose
    per-order append failed (the key holds something that is not a stream) although
    the global entry was written.
    """

    added: int
    duplicates: int
    order_failures: int = 0


def check_partition_order(records: Sequence[TrackingRecord]) -> None:
    """Raise :class:`MirrorOrderError` unless each partition's offsets never decrease."""
    last: dict[str, int] = {}
    for rec in records:
        key = rec.source
        prev = last.get(key, -1)
        if rec.offset < prev:
            raise MirrorOrderError(
                f"offsets of {key} out of order in one batch: {rec.offset} after {prev}"
            )
        last[key] = rec.offset


def record_args(record: TrackingRecord, order_key_index: int) -> list[str | int]:
    """A record's script arguments: event id, source, offset, index of its order
    stream in KEYS, pair count, pairs."""
    fields = encode_fields(record)
    return [
        record.event_id,
        record.source,
        record.offset,
        order_key_index,
        len(fields) // 2,
        *fields,
    ]


class StreamMirror:
    """Appends batches of tracking records to the per-order and global streams.

    Records of one Kafka partition must be given in offset order, one batch after
    the other (as a Faust agent delivers them); a redelivered batch, or one that
    overlaps an earlier batch, adds nothing twice.
    """

    def __init__(
        self,
        redis: AnyRedis,
        keys: KeySpace,
        config: MirrorConfig | None = None,
        *,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.config = config or MirrorConfig()
        self.layout = StreamLayout(keys, self.config.shards)
        self.metrics = metrics
        self._script = LuaScript.from_package("ordercache.streams", "mirror")
        #: Pipelines in flight per batch (never more than there are shards).
        self._lanes = min(self.config.shards, self.config.pipelines)

    async def mirror(self, records: Sequence[TrackingRecord]) -> MirrorResult:
        """Append ``records`` in one round trip; duplicates of earlier appends are skipped.

        Raises :class:`StreamError` (retriable) when Redis fails; mirroring the same
        batch again is then safe. Raises :class:`MirrorOrderError` for a batch whose
        offsets go backwards within a partition.
        """
        if not records:
            return MirrorResult(0, 0)
        check_partition_order(records)
        calls = self._plan(records)
        try:
            # A restarted or failed-over Redis forgot the script: it is loaded and the
            # batch runs again, which the dedupe state makes harmless.
            results = await run_loading(
                self.redis, [self._script], functools.partial(self._run, calls)
            )
        except (RedisError, OSError) as exc:
            raise StreamError(f"mirroring {len(records)} tracking records failed: {exc}") from exc
        added = duplicates = order_failures = 0
        for res in results:
            added += int(res[0])
            duplicates += int(res[1])
            if int(res[2]):
                order_failures += int(res[2])
                log.warning("per-order stream append failed: %s", _text(res[3]))
        if self.metrics is not None:
            if added:
                self.metrics.mirrored.labels("added").inc(added)
            if duplicates:
                self.metrics.mirrored.labels("duplicate").inc(duplicates)
        return MirrorResult(added, duplicates, order_failures)

    # ------------------------------------------------------------------ internals
    def _plan(self, records: Sequence[TrackingRecord]) -> list[list[list[Any]]]:
        """Per pipeline, its calls ``["EVALSHA", sha, numkeys, *keys, *argv]``.

        Exactly one call per shard: were a shard's batch split into several calls,
        a later one could succeed after an earlier one failed and advance the
        watermark past offsets that were never appended.
        """
        cfg = self.config
        by_shard: dict[int, list[TrackingRecord]] = {}
        for rec in records:
            by_shard.setdefault(rec.order_id % cfg.shards, []).append(rec)
        head = [
            cfg.global_maxlen,
            cfg.global_max_age_ms,
            cfg.dedupe_window_ms,
            cfg.watermark_ttl_ms,
            cfg.order_maxlen,
            cfg.order_ttl_ms,
        ]
        lanes: list[list[list[Any]]] = [[] for _ in range(self._lanes)]
        layout = self.layout
        for shard, recs in by_shard.items():
            keys = [layout.shard_stream(shard), layout.shard_offsets(shard)]
            keys.append(layout.shard_seen(shard))
            index: dict[int, int] = {}
            argv: list[Any] = []
            for rec in recs:
                pos = index.get(rec.order_id)
                if pos is None:
                    keys.append(layout.order_stream(rec.order_id))
                    pos = index[rec.order_id] = len(keys)  # Lua's KEYS is 1-based
                argv += record_args(rec, pos)
            call = self._script.evalsha(keys, [*head, len(recs), *argv])
            lanes[shard % self._lanes].append(call)
        return [lane for lane in lanes if lane]

    async def _run(self, lanes: list[list[list[Any]]]) -> list[Any]:
        """Run the pipelines concurrently, so packing one overlaps executing another."""
        replies = await asyncio.gather(
            *(self._run_pipeline(lane) for lane in lanes), return_exceptions=True
        )
        failures = [r for r in replies if isinstance(r, BaseException)]
        for failure in failures:
            if isinstance(failure, NoScriptError):
                raise failure
        if failures:
            raise failures[0]
        results: list[Any] = []
        for reply in replies:
            results.extend(reply)  # type: ignore[arg-type]
        return results

    async def _run_pipeline(self, calls: list[list[Any]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for argv in calls:
            pipe.execute_command(*argv)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        raise_noscript(results)
        for res in results:
            if isinstance(res, ResponseError):
                raise res
            if isinstance(res, Exception):
                raise StreamError(f"mirroring failed: {res}") from res
        return results


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
