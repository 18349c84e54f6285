"""Tracking updates mirrored into Redis Streams, and consumer-group workers for them.

* :mod:`~ordercache.streams.entry` — ``TrackingRecord`` in, flat versioned entries out;
* :mod:`~ordercache.streams.mirror` — ``StreamMirror.mirror(records)``, exactly once in effect;
* :mod:`~ordercache.streams.consumer` — ``StreamConsumer``: pending first, XAUTOCLAIM,
  dead letters, NOGROUP recovery;
* :mod:`~ordercache.streams.tail` — follow one order live;
* :mod:`~ordercache.streams.notifier` — an example downstream consumer.

See docs/streams.md.
"""

from __future__ import annotations

from ordercache.streams.config import ConsumerConfig, MirrorConfig
from ordercache.streams.consumer import RejectEntry, StreamConsumer, StreamMessage
from ordercache.streams.entry import StreamEntry, TrackingEntry, TrackingRecord
from ordercache.streams.errors import MirrorOrderError, StreamError
from ordercache.streams.layout import StreamLayout
from ordercache.streams.metrics import StreamMetrics
from ordercache.streams.mirror import MirrorResult, StreamMirror
from ordercache.streams.tail import format_entry, tail

__all__ = [
    "ConsumerConfig",
    "MirrorConfig",
    "MirrorOrderError",
    "MirrorResult",
    "RejectEntry",
    "StreamConsumer",
    "StreamEntry",
    "StreamError",
    "StreamLayout",
    "StreamMessage",
    "StreamMetrics",
    "StreamMirror",
    "TrackingEntry",
    "TrackingRecord",
    "format_entry",
    "tail",
]
