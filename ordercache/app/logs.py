"""Log output: Faust's text lines (the default) or one JSON object per line.

``ORDERCACHE_LOG_FORMAT=json`` makes every log record — Faust's, mode's, aiokafka's,
ours, and Python warnings — one JSON object on stderr with stable fields:

* ``ts`` — ISO-8601 UTC with milliseconds, ``Z``;
* ``level`` — ``debug``, ``info``, ``warning``, ``error``, ``critical``;
* ``logger`` — the logger's name;
* ``message`` — the formatted message;
* ``exception`` / ``stack`` — the formatted traceback, when there is one;
* any ``extra={...}`` fields of the record, under their own names.

The worker's dictConfig is merged into the one mode builds (``merge``), so the level
still comes from ``-l`` / ``ORDERCACHE_LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from ordercache.config.settings import Settings

#: Attributes every LogRecord has; anything else on a record is an ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)

#: Python's level names in the spelling of the ``level`` field.
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def faust_logging_config(settings: Settings) -> dict[str, Any] | None:
    """``logging_config`` for the Faust app (None: Faust's own text format)."""
    if settings.log_format != "json":
        return None
    return {
        "version": 1,
        "merge": True,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
    }


def configure_logging(settings: Settings, level: int | str = logging.INFO) -> None:
    """Logging until (and, for commands, instead of) the Faust worker's set-up."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
