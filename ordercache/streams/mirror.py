"""Mirror tracking updates into Redis Streams, exactly once per event in effect.

Each record goes to its order's stream (tailed live) and to one global shard stream
(read by consumer groups). Both appends are Lua scripts that check and advance the
dedupe state *in the same slot* and in the same atomic step as the XADD, so a Kafka
redelivery (same partition, offset at or below the watermark) or a repeated event id
(within the dedupe window) is dropped. Because a repeat is always harmless, a failed
batch is simply mirrored again; one pipeline carries the whole batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from ordercache.app.keys import KeySpace
from ordercache.app.redis_conn import AnyRedis
from ordercache.streams.config import MAX_RECORDS_PER_CALL, MirrorConfig
from ordercache.streams.entry import TrackingRecord, encode_fields
from ordercache.streams.errors import MirrorOrderError, StreamError
from ordercache.streams.layout import StreamLayout
from ordercache.streams.metrics import StreamMetrics

log = logging.getLogger(__name__)

#: Per-order state size (watermarks + event ids) at which expired ids are pruned.
_ORDER_STATE_PRUNE_AT = 256


@dataclass(frozen=True, slots=True)
class MirrorResult:
    """What one ``mirror()`` call did, counted on the global streams."""

    added: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> _Script:
        text = resources.files("ordercache.streams").joinpath(f"lua/{name}").read_text("utf-8")
        return cls(text, hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest())


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


def record_args(record: TrackingRecord) -> list[str]:
    """One record's script arguments: event id, source, offset, pair count, pairs."""
    fields = encode_fields(record)
    return [record.event_id, record.source, str(record.offset), str(len(fields) // 2), *fields]


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
        self._shard_script = _Script.load("mirror_shard.lua")
        self._order_script = _Script.load("mirror_order.lua")

    async def mirror(self, records: Sequence[TrackingRecord]) -> MirrorResult:
        """Append ``records`` (one pipeline); duplicates of earlier appends are skipped.

        Raises :class:`StreamError` (retriable) when Redis fails; mirroring the same
        batch again is then safe. Raises :class:`MirrorOrderError` for a batch whose
        offsets go backwards within a partition.
        """
        if not records:
            return MirrorResult(0, 0)
        check_partition_order(records)
        calls = self._plan(records)
        try:
            try:
                results = await self._run(calls)
            except NoScriptError:
                # A restarted or failed-over Redis forgot the scripts: load them and
                # run the batch again, which the dedupe state makes harmless.
                await self._load_scripts()
                results = await self._run(calls)
        except RedisError as exc:
            raise StreamError(f"mirroring {len(records)} tracking records failed: {exc}") from exc
        added = duplicates = 0
        for is_shard, result in zip((c[0] for c in calls), results, strict=True):
            if is_shard:
                added += int(result[0])
                duplicates += int(result[1])
        if self.metrics is not None:
            if added:
                self.metrics.mirrored.labels("added").inc(added)
            if duplicates:
                self.metrics.mirrored.labels("duplicate").inc(duplicates)
        return MirrorResult(added, duplicates)

    # ------------------------------------------------------------------ internals
    def _plan(self, records: Sequence[TrackingRecord]) -> list[tuple[bool, list[Any]]]:
        """Script calls for a batch: ``(is_shard, [sha, numkeys, *keys, *argv])``."""
        cfg = self.config
        by_shard: dict[int, list[list[str]]] = {}
        by_order: dict[int, list[list[str]]] = {}
        for rec in records:
            args = record_args(rec)
            by_shard.setdefault(rec.order_id % cfg.shards, []).append(args)
            by_order.setdefault(rec.order_id, []).append(args)
        calls: list[tuple[bool, list[Any]]] = []
        shard_head = [
            cfg.global_maxlen,
            cfg.global_max_age_ms,
            cfg.dedupe_window_ms,
            cfg.watermark_ttl_ms,
        ]
        for shard, items in by_shard.items():
            keys = [
                self.layout.shard_stream(shard),
                self.layout.shard_offsets(shard),
                self.layout.shard_seen(shard),
            ]
            for chunk in _chunks(items):
                calls.append((True, self._call(self._shard_script, keys, shard_head, chunk)))
        order_head = [
            cfg.order_maxlen,
            cfg.order_ttl_ms,
            cfg.dedupe_window_ms,
            _ORDER_STATE_PRUNE_AT,
        ]
        for order_id, items in by_order.items():
            keys = [self.layout.order_stream(order_id), self.layout.order_state(order_id)]
            for chunk in _chunks(items):
                calls.append((False, self._call(self._order_script, keys, order_head, chunk)))
        return calls

    @staticmethod
    def _call(
        script: _Script, keys: list[str], head: list[int], chunk: list[list[str]]
    ) -> list[Any]:
        argv: list[Any] = [script.sha, len(keys), *keys, *head, len(chunk)]
        for args in chunk:
            argv.extend(args)
        return argv

    async def _run(self, calls: list[tuple[bool, list[Any]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for _, argv in calls:
            pipe.execute_command("EVALSHA", *argv)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        for res in results:
            if isinstance(res, NoScriptError):
                raise res
        for res in results:
            if isinstance(res, ResponseError):
                raise res
            if isinstance(res, Exception):
                raise StreamError(f"mirroring failed: {res}") from res
        return results

    async def _load_scripts(self) -> None:
        for script in (self._shard_script, self._order_script):
            sha = await self.redis.script_load(script.source)
            if sha != script.sha:  # pragma: no cover - both are SHA1 of the same text
                raise StreamError(f"script SHA mismatch: {sha!r} != {script.sha!r}")


def _chunks(items: list[list[str]]) -> list[list[list[str]]]:
    return [items[i : i + MAX_RECORDS_PER_CALL] for i in range(0, len(items), MAX_RECORDS_PER_CALL)]
