"""Dead-letter statistics in a changelog-backed Faust table.

A Faust agent reads the DLQ topic and counts dead letters per source topic and
reason (keys from :func:`ordercache.agents.dlq.dlq_key`). The table is backed by its
changelog topic, so the counts survive a worker restart (Faust recovers them before
the agent resumes) and follow partitions across workers on a rebalance. ``/stats``
shows them (:func:`ordercache.agents.dlq.summarize`).
"""

from __future__ import annotations

from typing import Any

import faust

from ordercache.agents.dlq import dlq_key
from ordercache.config.settings import Settings


def declare(app: faust.App, settings: Settings) -> Any:
    """Declare the DLQ topic, the counting agent and the table on ``app``; return the
    table (a mapping ``dlq_key -> count``)."""
    topic = app.topic(
        settings.topic_dlq,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka_partitions,
    )
    table = app.Table(
        "dlq_counts",
        default=int,
        partitions=settings.kafka_partitions,
        help="Dead letters per source topic and reason (per DLQ partition).",
    )

    @app.agent(topic, name="ordercache.dlq_stats")
    async def count_dead_letters(stream: Any) -> None:
        async for event in stream.events():
            key = dlq_key(event.headers, event.message.partition)
            table[key] += 1

    return table
