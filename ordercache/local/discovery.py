"""Where a running local-default worker can be found: ``$ORDERCACHE_DATA_DIR/local.json``.

The worker that started its own broker and Redis records their addresses, its web
server's and (when it holds no password) the database URL, with its pid. The file is
written atomically (a temporary file renamed over it), removed on a clean stop, and
ignored when the pid it names is not alive, so a crashed worker's record never sends
a command to ports that some other program may own by now.

Settings given in the environment always win: a recorded endpoint fills only what
is not configured.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from ordercache.config.settings import Settings

FILENAME = "local.json"


def path(data_dir: Path) -> Path:
    return data_dir / FILENAME


def pid_alive(pid: int) -> bool:
    """Is a process with ``pid`` running (a zombie counts as gone)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: signal 0 said it exists
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True, slots=True)
class LocalEndpoints:
    """The endpoints of one local-default worker."""

    pid: int
    broker: str
    redis_url: str
    web_host: str
    web_port: int
    database_url: str | None = None

    @classmethod
    def of(cls, settings: Settings, *, pid: int) -> LocalEndpoints:
        """The record of a worker running with ``settings`` (endpoints filled in)."""
        dsn = settings.database_dsn
        # A URL with a password stays out of the file (invariant 7: no secrets at rest
        # outside the environment); the other terminal then needs the setting itself.
        has_secret = make_url(dsn).password is not None
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else ""
        return cls(
            pid=pid,
            broker=",".join(settings.kafka_bootstrap),
            redis_url=redis_url,
            web_host=settings.web_host,
            web_port=settings.web_port,
            database_url=None if has_secret else dsn,
        )

    @property
    def web_url(self) -> str:
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "::", "") else self.web_host  # noqa: S104
        return f"http://{host}:{self.web_port}"

    def apply(self, settings: Settings) -> Settings:
        """``settings`` with every endpoint they leave unset taken from this record."""
        update: dict[str, Any] = {}
        given = settings.model_fields_set
        if "web_host" not in given:
            update["web_host"] = self.web_host
        if "web_port" not in given:
            update["web_port"] = self.web_port
        if self.database_url and settings.database_url is None:
            update["database_url"] = SecretStr(self.database_url)
        merged = settings.with_endpoints(
            kafka_broker=self.broker if settings.kafka_broker is None else None,
            redis_url=self.redis_url if settings.redis_is_local and self.redis_url else None,
        )
        return merged.model_copy(update=update) if update else merged


def write(data_dir: Path, record: LocalEndpoints) -> Path:
    """Write ``record`` atomically (readers see the old file or the new one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = path(data_dir)
    fd, tmp = tempfile.mkstemp(prefix=".local-", suffix=".json", dir=data_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(record), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def read(data_dir: Path) -> LocalEndpoints | None:
    """The record of a live local worker in ``data_dir``, or ``None``."""
    try:
        raw = json.loads(path(data_dir).read_text())
        record = LocalEndpoints(
            pid=int(raw["pid"]),
            broker=str(raw["broker"]),
            redis_url=str(raw["redis_url"]),
            web_host=str(raw["web_host"]),
            web_port=int(raw["web_port"]),
            database_url=None if raw.get("database_url") is None else str(raw["database_url"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if pid_alive(record.pid) else None


def remove(data_dir: Path, pid: int) -> None:
    """Remove the record if it is still ``pid``'s (a newer worker's stays)."""
    target = path(data_dir)
    try:
        if int(json.loads(target.read_text())["pid"]) == pid:
            target.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        return
