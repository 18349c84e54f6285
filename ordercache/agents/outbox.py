"""The local outbox relay: a polling publisher for the transactional outbox table.

Writers put one ``outbox`` row per changed aggregate in the same transaction as the
change (:func:`ordercache.sample.writes.record_outbox`). In production Debezium's
outbox event router relays the inserts (deploy/debezium/). Without Kafka Connect
(the local default) this service does the same job inside the worker:

* **ordered**: rows are taken in ``seq`` order and sent in that order (one
  producer; Kafka keeps the order per partition, and the key is the aggregate id);
* **exclusive**: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
  workers can run relays without sending a row twice at once (on SQLite, a single
  writer, the lock clause is dropped);
* **resumable, at-least-once**: a batch's rows are deleted in the transaction that
  locked them, and only after the broker acknowledged every message; a relay that
  dies before its commit leaves the rows for the next poll, which sends them again
  (duplicates are harmless: the pipeline's operations are idempotent and
  version-guarded).

Messages look like the router's: key = the aggregate id as decimal text, value =
the payload as a JSON string, headers ``id`` (the event id), ``aggregatetype`` and
``eventType``; the topic is chosen by the aggregate type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import mode
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ordercache.agents.kafka_clients import start_or_close, start_until_up
from ordercache.db.engine import in_transaction
from ordercache.sample.writes import OUTBOX

log = logging.getLogger(__name__)

#: Seconds one attempt to connect to the broker may take.
CONNECT_TIMEOUT = 10.0
#: How long a stop waits for the batch in flight before stopping the producer under it.
STOP_GRACE = 5.0


def topic_map(orders: str, inventory: str, tracking: str) -> dict[str, str]:
    """Aggregate type -> topic (the same routing as the shipped connector file)."""
    return {
        "order": orders,
        "customer": orders,
        "inventory": inventory,
        "tracking_event": tracking,
    }


def message_of(row: Mapping[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of one outbox row, as Debezium's outbox router emits it."""
    payload = orjson.dumps(row["payload"]).decode()
    return (
        str(int(row["aggregateid"])).encode(),
        orjson.dumps(payload),  # the payload as a JSON string (the router's default)
        [
            ("id", str(row["id"]).encode()),
            ("aggregatetype", str(row["aggregatetype"]).encode()),
            ("eventType", str(row["type"]).encode()),
        ],
    )


class OutboxRelay(mode.Service):
    """Polls the outbox and publishes it (see the module docstring)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bootstrap: list[str],
        topics: Mapping[str, str],
        *,
        batch: int = 500,
        idle_poll: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sessions = sessions
        self.bootstrap = bootstrap
        self.topics = dict(topics)
        self.batch = batch
        self.idle_poll = idle_poll
        self.sent = 0
        self._producer: AIOKafkaProducer | None = None
        # pause() holds the relay still (the local default's topic truncation)
        self._open = asyncio.Event()
        self._open.set()
        self._batch_lock = asyncio.Lock()

    async def on_start(self) -> None:
        # Connected in the background: a broker that is down at start is waited for.
        self.add_future(self._run())

    async def _connect(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False
        )
        await start_or_close(producer.start(), producer.stop, timeout=CONNECT_TIMEOUT)
        if self.should_stop:  # on_stop has run already: it would not close this one
            await producer.stop()
            return
        self._producer = producer

    async def on_stop(self) -> None:
        # The batch in flight is delivered and committed before its producer goes
        # (stopping the producer under it would fail it, and it would be sent again).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE):
                await self.pause()
        if self._producer is not None:
            await self._producer.stop()

    async def pause(self) -> bool:
        """No batch is sent after this returns, and the one in flight is delivered."""
        self._open.clear()
        async with self._batch_lock:
            return True

    async def resume(self) -> None:
        self._open.set()

    async def _run(self) -> None:
        if not await start_until_up(self._connect, self, what="the outbox relay"):
            return
        while not self.should_stop:
            await self._open.wait()
            try:
                async with self._batch_lock:
                    n = await self.relay_once() if self._open.is_set() else 0
            except (KafkaError, SQLAlchemyError, OSError) as exc:
                log.warning("outbox relay: batch not sent, retrying: %s", exc)
                n = 0
                await self.sleep(1.0)
            if n == 0:
                await self.sleep(self.idle_poll)

    async def relay_once(self) -> int:
        """Send one batch (oldest first) and delete it; returns how many rows were sent.
        Never left half-way: a stop waits for the batch's commit or rollback."""
        sent = await in_transaction(self.sessions, self._send_batch)
        self.sent += sent
        return sent

    async def _send_batch(self, session: AsyncSession) -> int:
        producer = self._producer
        assert producer is not None
        query = (
            select(OUTBOX)
            .order_by(OUTBOX.c.seq)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
        )
        rows = (await session.execute(query)).mappings().all()
        if not rows:
            return 0
        futures = []
        for row in rows:
            topic = self.topics.get(str(row["aggregatetype"]))
            if topic is None:
                log.error(
                    "outbox row seq=%s: aggregate type %r has no topic; left in the table",
                    row["seq"], str(row["aggregatetype"])[:64],
                )  # fmt: skip
                continue
            key, value, headers = message_of(dict(row))
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        for fut in futures:
            await fut  # every message acknowledged before the rows go
        sent = [row["seq"] for row in rows if str(row["aggregatetype"]) in self.topics]
        await session.execute(delete(OUTBOX).where(OUTBOX.c.seq.in_(sent)))
        return len(sent)
