"""Tunables of the tracking mirror and the consumer-group worker, as plain data.

Defaults are production-sane; ``from_settings`` maps the ``ORDERCACHE_STREAM_*``
settings onto them (see docs/streams.md). Validation happens here so a bad value fails at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ordercache.config.settings import Settings

#: Global shards unless configured otherwise.
DEFAULT_SHARDS = 4


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name}: expected zero or a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """Where tracking updates go and how long they stay.

    ``shards``: global streams ``tracking:{0..S-1}``; an order always maps to one
    shard (``order_id % shards``), so per-order ordering holds in the global stream,
    and its per-order stream lives in that shard's slot. Changing it re-routes
    orders (new per-order keys, fresh dedupe state): see docs/streams.md.
    """

    shards: int = DEFAULT_SHARDS
    #: Approximate cap of each global shard stream (``XTRIM MAXLEN ~``); 0 = no cap.
    global_maxlen: int = 100_000
    #: Age cap of the global shard streams in ms (``XTRIM MINID ~``); 0 = no age cap.
    global_max_age_ms: int = 24 * 3600 * 1000
    #: Approximate cap of each per-order stream (``XADD MAXLEN ~``).
    order_maxlen: int = 100
    #: Idle time after which a per-order stream expires, ms. The main memory knob:
    #: a short per-order stream costs ~5 KB (docs/streams.md, "Sizing").
    order_ttl_ms: int = 3 * 24 * 3600 * 1000
    #: Window in which a repeated event id (same event, another offset) is dropped, ms.
    dedupe_window_ms: int = 10 * 60 * 1000
    #: Idle time after which a shard's per-partition offset watermarks expire, ms.
    watermark_ttl_ms: int = 7 * 24 * 3600 * 1000
    #: Pipelines one batch is spread over, sent concurrently (shards are independent),
    #: so the client packs one while Redis runs another; 1 = a single pipeline.
    pipelines: int = 4

    @classmethod
    def from_settings(cls, s: Settings) -> MirrorConfig:
        """The mirror's tunables from ``ORDERCACHE_STREAM_*``."""
        return cls(
            shards=s.stream_shards,
            global_maxlen=s.stream_maxlen,
            global_max_age_ms=s.stream_max_age * 1000,
            order_maxlen=s.stream_order_maxlen,
            order_ttl_ms=s.stream_order_ttl * 1000,
            dedupe_window_ms=s.stream_dedupe_window * 1000,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 1024:
            raise ValueError(f"shards: expected 1..1024, got {self.shards!r}")
        _non_negative("global_maxlen", self.global_maxlen)
        _non_negative("global_max_age_ms", self.global_max_age_ms)
        if self.global_maxlen == 0 and self.global_max_age_ms == 0:
            raise ValueError("global_maxlen, global_max_age_ms: at least one must bound the stream")
        _positive("order_maxlen", self.order_maxlen)
        _positive("order_ttl_ms", self.order_ttl_ms)
        _non_negative("dedupe_window_ms", self.dedupe_window_ms)
        _positive("watermark_ttl_ms", self.watermark_ttl_ms)
        _positive("pipelines", self.pipelines)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """How a :class:`~ordercache.streams.consumer.StreamConsumer` reads and recovers."""

    #: Entries per XREADGROUP / XAUTOCLAIM call.
    count: int = 100
    #: XREADGROUP BLOCK, ms; clamped below the client's socket timeout.
    block_ms: int = 1000
    #: An entry idle this long in another consumer's PEL is taken over (XAUTOCLAIM), ms.
    claim_idle_ms: int = 30_000
    #: Seconds between XAUTOCLAIM sweeps.
    claim_interval_s: float = 5.0
    #: Deliveries after which an entry goes to the dead-letter stream.
    max_deliveries: int = 5
    #: Approximate cap of the dead-letter stream.
    dead_letter_maxlen: int = 10_000
    #: Seconds between refreshes of the length / lag / pending gauges.
    metrics_interval_s: float = 5.0
    #: Backoff after Redis errors: first delay and cap, seconds (full jitter).
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    #: Where a new group starts ("$": only new entries; "0": the retained history).
    start_id: str = "$"
    #: Where a group re-created after NOGROUP starts; "0" loses nothing retained.
    recover_id: str = "0"

    @classmethod
    def from_settings(cls, s: Settings, **overrides: Any) -> ConsumerConfig:
        """Consumer-group tunables from ``ORDERCACHE_STREAM_*`` (``overrides`` win)."""
        fields: dict[str, Any] = {
            "max_deliveries": s.stream_max_deliveries,
            "claim_idle_ms": int(s.stream_claim_idle * 1000),
        }
        return cls(**{**fields, **overrides})

    def __post_init__(self) -> None:
        _positive("count", self.count)
        _positive("block_ms", self.block_ms)
        _non_negative("claim_idle_ms", self.claim_idle_ms)
        _positive("claim_interval_s", self.claim_interval_s)
        _positive("max_deliveries", self.max_deliveries)
        _positive("dead_letter_maxlen", self.dead_letter_maxlen)
        _positive("metrics_interval_s", self.metrics_interval_s)
        _positive("backoff_base_s", self.backoff_base_s)
        _positive("backoff_cap_s", self.backoff_cap_s)
