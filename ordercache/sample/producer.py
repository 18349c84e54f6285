"""A small change-event producer (simulator, tests, benchmarks) on aiokafka.

It emits what Debezium would for row changes — the PostgreSQL connector's envelope,
or the outbox event router's form — to the configured topics:

* ``orders``, ``order_items``, ``shipments`` -> ``topic_orders``;
  ``inventory`` -> ``topic_inventory``; ``tracking_events`` -> ``topic_tracking``.
* Key: the decimal id of the entity the view is keyed by — the order id for an
  order and for its items, shipments and tracking events (so they share a
  partition and stay in order), the product id for inventory. Debezium setups get
  the same with ``message.key.columns``.
* ``source``: ``lsn`` from a counter this producer keeps (monotonic, per
  producer), ``txId`` per transaction, ``ts_ms`` at emission.
* Header ``id``: a fresh event id (for tracing; Debezium adds none by default).

The outbox form, the keying and the transport (batching, delivery errors) are the
public producer API's (:mod:`ordercache.publish`); this module adds the Debezium
envelope and the simulator's transactions on top.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import orjson
from aiokafka.errors import KafkaError

from ordercache.config.settings import Settings
from ordercache.models.events import Entity, RowChange
from ordercache.models.orm import Base
from ordercache.publish.publisher import (
    EventPublisher,
    PublishError,
    Topics,
    outbox_message,
    partition_key,
)

_JSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


#: The broker did not take an event (the publisher's error).
ProduceError = PublishError

__all__ = ["ChangeEventProducer", "ProduceError", "Topics", "partition_key", "row_image"]


def row_image(row: Base | Mapping[str, Any]) -> dict[str, Any]:
    """Column -> value of an ORM object or a result row mapping (datetimes kept)."""
    if isinstance(row, Base):
        return {c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs}
    return dict(row)


class ChangeEventProducer:
    """Emits change events for committed row changes. Use as an async context manager."""

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: Topics | None = None,
        *,
        form: Literal["envelope", "outbox"] = "envelope",
        connector_name: str = "ordercache",
        linger_ms: int = 5,
        first_lsn: int | None = None,
    ) -> None:
        servers = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        )
        self.topics = topics or Topics()
        self.form = form
        self.connector_name = connector_name
        self._servers = servers
        self._linger_ms = linger_ms
        self._publisher: EventPublisher | None = None
        # Starting from the wall clock in microseconds keeps LSNs increasing across
        # restarts of one producer; nothing depends on it beyond ordering and logs.
        self._lsn = first_lsn if first_lsn is not None else time.time_ns() // 1000
        self._tx = 0
        self.sent = 0

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ChangeEventProducer:
        return cls(settings.kafka_bootstrap, Topics.from_settings(settings), **kwargs)

    @property
    def _producer(self) -> EventPublisher:
        if self._publisher is None:
            raise ProduceError("the producer is not started")
        return self._publisher

    async def start(self) -> None:
        """Connect (aiokafka needs the running loop, so the client is made here)."""
        publisher = EventPublisher(self._servers, self.topics, linger_ms=self._linger_ms)
        await publisher.start()
        self._publisher = publisher

    async def stop(self) -> None:
        if self._publisher is not None:
            publisher, self._publisher = self._publisher, None
            await publisher.stop()

    async def __aenter__(self) -> ChangeEventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def next_tx_id(self) -> int:
        self._tx += 1
        return self._tx

    # ------------------------------------------------------------------ encoding
    def envelope(self, change: RowChange, *, tx_id: int, lsn: int, ts_ms: int) -> dict[str, Any]:
        """The Debezium PostgreSQL envelope of ``change``."""
        return {
            "before": None if change.before is None else dict(change.before),
            "after": None if change.after is None else dict(change.after),
            "source": {
                "version": "ordercache",
                "connector": "postgresql",
                "name": self.connector_name,
                "ts_ms": ts_ms,
                "snapshot": "false",
                "db": "ordercache",
                "schema": "public",
                "table": change.entity.value,
                "txId": tx_id,
                "lsn": lsn,
                "xmin": None,
            },
            "op": change.op.value,
            "ts_ms": ts_ms,
            "transaction": None,
        }

    def encode(
        self, change: RowChange, *, tx_id: int, lsn: int, ts_ms: int
    ) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
        """(topic, key, value, headers) of one change in this producer's form."""
        image = change.after if change.after is not None else change.before
        if image is None:
            raise ValueError("a row change needs a before or an after image")
        topic = self.topics.for_entity(change.entity)
        key = partition_key(change.entity, image)
        event_id = uuid.uuid4().hex.encode()
        if self.form == "envelope":
            value = orjson.dumps(
                self.envelope(change, tx_id=tx_id, lsn=lsn, ts_ms=ts_ms), option=_JSON_OPTS
            )
            return topic, key, value, [("id", event_id)]
        _, value, headers = outbox_message(change.entity, image, change.op, event_id.decode())
        return topic, key, value, headers

    # ------------------------------------------------------------------ sending
    async def emit_transaction(
        self, changes: Iterable[RowChange], *, wait: bool = True
    ) -> list[Any]:
        """Send the changes of one committed transaction, in commit order.

        They share a ``txId`` and get increasing LSNs. With ``wait`` the call returns
        once the broker has every event (record metadata); otherwise it returns the
        delivery futures for the caller to await in bulk.
        """
        tx_id = self.next_tx_id()
        ts_ms = time.time_ns() // 1_000_000
        futures = []
        try:
            for change in changes:
                self._lsn += 1
                topic, key, value, headers = self.encode(
                    change, tx_id=tx_id, lsn=self._lsn, ts_ms=ts_ms
                )
                futures.append(await self._producer.send(topic, key, value, headers))
                self.sent += 1
            if wait:
                return [await f for f in futures]
        except KafkaError as exc:
            raise ProduceError(f"sending change events failed: {exc}") from exc
        return futures

    async def emit(self, change: RowChange) -> Any:
        """Send one change as a transaction of its own and wait for the broker."""
        (meta,) = await self.emit_transaction([change])
        return meta

    async def emit_tombstone(self, entity: Entity, image: Mapping[str, Any]) -> Any:
        """The null-valued message that follows a delete (same key)."""
        topic = self.topics.for_entity(entity)
        return await self.send_raw(topic, partition_key(entity, image), None)

    async def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any:
        """Send bytes as given (tests: malformed events, foreign formats) and wait."""
        fut = await self._producer.send(topic, key, value, headers)
        try:
            return await fut
        except KafkaError as exc:
            raise ProduceError(f"sending a message failed: {exc}") from exc

    async def flush(self) -> None:
        await self._producer.flush()
