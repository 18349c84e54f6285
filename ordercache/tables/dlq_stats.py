"""Dead-letter statistics in a changelog-backed Faust table.

A Faust agent reads the DLQ topic and counts dead letters per source topic and
reason. The table is backed by its changelog topic, so the counts survive a worker
restart (Faust recovers them before the agent resumes) and follow partitions across
workers on a rebalance. ``/stats`` shows them. Keys include the DLQ partition so
each key lives in exactly one changelog partition.
"""

from __future__ import annotations

from typing import Any

import faust

from ordercache.app.context import AppContext

REASON_HEADER = "ordercache.dlq.reason"
TOPIC_HEADER = "ordercache.dlq.topic"


def dlq_key(headers: Any, partition: int) -> str:
    """``"{source topic}|{reason}|{dlq partition}"`` from a DLQ message's headers."""
    found: dict[str, bytes] = {}
    items = headers.items() if isinstance(headers, dict) else headers or ()
    for name, raw in items:
        if name in (REASON_HEADER, TOPIC_HEADER):
            found[name] = raw if isinstance(raw, bytes) else str(raw).encode()
    reason = found.get(REASON_HEADER, b"unknown").decode("utf-8", "replace")
    topic = found.get(TOPIC_HEADER, b"unknown").decode("utf-8", "replace")
    return f"{topic}|{reason}|{partition}"


def summarize(items: Any) -> dict[str, dict[str, int]]:
    """Table items -> ``{source topic: {reason: count}}`` summed over partitions."""
    out: dict[str, dict[str, int]] = {}
    for key, count in items:
        topic, reason, _ = str(key).split("|", 2)
        per = out.setdefault(topic, {})
        per[reason] = per.get(reason, 0) + int(count)
    return out


def register(app: faust.App, ctx: AppContext) -> Any:
    """Declare the DLQ topic, the counting agent and the table on ``app``."""
    s = ctx.settings
    topic = app.topic(
        s.topic_dlq,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=s.kafka_partitions,
    )
    table = app.Table(
        "dlq_counts",
        default=int,
        partitions=s.kafka_partitions,
        help="Dead letters per source topic and reason (per DLQ partition).",
    )

    @app.agent(topic, name="ordercache.dlq_stats")
    async def count_dead_letters(stream: Any) -> None:
        async for event in stream.events():
            key = dlq_key(event.headers, event.message.partition)
            table[key] += 1

    ctx.extras["dlq_table"] = table
    return table
