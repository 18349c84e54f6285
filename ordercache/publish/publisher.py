"""The :class:`EventPublisher` and the outbox wire form (see :mod:`ordercache.publish`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ordercache.config.settings import Settings
from ordercache.errors import OrderCacheError
from ordercache.models.events import ROW_MODELS, Entity, Op, Row

_JSON_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_OP_WORDS = {Op.CREATE: "created", Op.UPDATE: "updated", Op.DELETE: "deleted", Op.READ: "read"}
_ENTITY_OF: dict[type[Row], Entity] = {model: entity for entity, model in ROW_MODELS.items()}

Headers = list[tuple[str, bytes]]


class PublishError(OrderCacheError):
    """The broker did not take an event (or the publisher is not started)."""

    retriable = True


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names of the three change streams (``ORDERCACHE_TOPIC_*``)."""

    orders: str = "orders.changes"
    inventory: str = "inventory.changes"
    tracking: str = "tracking.updates"

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(settings.topic_orders, settings.topic_inventory, settings.topic_tracking)

    def for_entity(self, entity: Entity) -> str:
        if entity is Entity.INVENTORY:
            return self.inventory
        if entity is Entity.TRACKING_EVENT:
            return self.tracking
        return self.orders


def partition_key(entity: Entity, image: Mapping[str, Any]) -> bytes:
    """The message key: the id of the aggregate whose view the change belongs to.

    An order and its items, shipments and tracking events are keyed by the order id,
    so they land on one partition and are applied in the order they were sent.
    """
    if entity is Entity.INVENTORY:
        return str(image["product_id"]).encode()
    if entity in (Entity.ORDER, Entity.CUSTOMER):
        return str(image["id"]).encode()
    return str(image["order_id"]).encode()


def outbox_message(
    entity: Entity, image: Mapping[str, Any], op: Op, event_id: str
) -> tuple[bytes, bytes, Headers]:
    """(key, value, headers) of one change in the outbox event router's form.

    The router's defaults: the payload column as a JSON string, the event id in the
    ``id`` header, the aggregate type and event type as headers
    (``table.fields.additional.placement``).
    """
    payload = orjson.dumps(dict(image), option=_JSON_OPTS).decode()
    headers = [
        ("id", event_id.encode()),
        ("aggregatetype", entity.value.encode()),
        ("eventType", f"{entity.value}.{_OP_WORDS[op]}".encode()),
    ]
    return partition_key(entity, image), orjson.dumps(payload), headers


@dataclass(frozen=True, slots=True)
class Published:
    """Where the broker stored an event."""

    event_id: str
    topic: str
    partition: int
    offset: int


class EventPublisher:
    """Publishes row changes as outbox events. Use as an async context manager."""

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: Topics | None = None,
        *,
        linger_ms: int = 5,
        max_batch_size: int = 64 * 1024,
        request_timeout_ms: int = 30_000,
        client_id: str = "ordercache-publisher",
    ) -> None:
        servers = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        )
        self.topics = topics or Topics()
        self._servers = servers
        self._config: dict[str, Any] = {
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_size,
            "request_timeout_ms": request_timeout_ms,
            "client_id": client_id,
            "acks": "all",
        }
        self._producer: AIOKafkaProducer | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> EventPublisher:
        """A publisher for the broker and topics of ``ORDERCACHE_*`` settings."""
        return cls(settings.kafka_bootstrap, Topics.from_settings(settings), **kwargs)

    async def start(self) -> None:
        """Connect (aiokafka needs the running loop, so the client is made here)."""
        producer = AIOKafkaProducer(bootstrap_servers=self._servers, **self._config)
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise PublishError(f"cannot connect to the Kafka broker: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _client(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise PublishError("the publisher is not started")
        return self._producer

    # ------------------------------------------------------------------ public API
    async def publish(
        self, row: Row, *, op: Op = Op.UPDATE, event_id: str | None = None
    ) -> Published:
        """Publish one change and wait until the broker has it."""
        (done,) = await self.publish_many([(row, op, event_id)])
        return done

    async def publish_many(
        self, changes: Iterable[Row | tuple[Row, Op] | tuple[Row, Op, str | None]]
    ) -> list[Published]:
        """Publish several changes (e.g. one transaction's) in order; wait for all.

        Each item is a row (an update), ``(row, op)`` or ``(row, op, event_id)``.
        Everything is handed to the client before any acknowledgement is awaited, so
        the events share batches; the first delivery error is raised after all
        acknowledgements are in.
        """
        pending: list[tuple[str, asyncio.Future[Any]]] = []
        for item in changes:
            row, op, event_id = _unpack(item)
            entity = _ENTITY_OF.get(type(row))
            if entity is None:
                raise TypeError(f"not a row model of ordercache.publish: {type(row).__name__}")
            eid = event_id or uuid.uuid4().hex
            image = row.model_dump(mode="json", exclude_none=True)
            key, value, headers = outbox_message(entity, image, op, eid)
            fut = await self.send(self.topics.for_entity(entity), key, value, headers)
            pending.append((eid, fut))
        return await _acknowledged(pending)

    # ------------------------------------------------------------------ transport
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> asyncio.Future[Any]:
        """Hand one message to the client; returns its delivery future (for batching).

        Also the transport of the simulator's Debezium-envelope events.
        """
        try:
            fut: asyncio.Future[Any] = await self._client().send(
                topic, value, key=key, headers=list(headers)
            )
        except KafkaError as exc:
            raise PublishError(f"sending to {topic} failed: {type(exc).__name__}: {exc}") from exc
        return fut

    async def flush(self) -> None:
        await self._client().flush()


def _unpack(item: Row | tuple[Row, Op] | tuple[Row, Op, str | None]) -> tuple[Row, Op, str | None]:
    if isinstance(item, tuple):
        if len(item) == 2:
            return item[0], item[1], None
        return item
    return item, Op.UPDATE, None


async def _acknowledged(pending: list[tuple[str, asyncio.Future[Any]]]) -> list[Published]:
    results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
    out: list[Published] = []
    for (eid, _), meta in zip(pending, results, strict=True):
        if isinstance(meta, BaseException):
            raise PublishError(
                f"event {eid} was not delivered: {type(meta).__name__}: {meta}"
            ) from meta
        out.append(Published(eid, meta.topic, meta.partition, meta.offset))
    return out
