"""The base of the project's CLI commands: run the coroutine, one line per failure.

Faust runs an ``@app.command`` inside a :class:`faust.Worker`, which logs a traceback
for any error and prints it twice when the command's own cleanup fails too. The
project's commands (``seed``, ``simulate``, ``migrate``, ``tail``, ``stats``,
``notify``) need none of the worker's machinery: :class:`ProjectCommand` runs them
with :func:`asyncio.run` and turns "the broker / Redis / database cannot be reached"
into one line naming it, with exit status 1. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

import click
from faust.cli.base import AppCommand
from mode.utils.logging import level_number

from ordercache.app.logs import configure_logging
from ordercache.config.settings import Settings
from ordercache.errors import OrderCacheError


class CommandFailed(OrderCacheError):
    """A command cannot go on; the message is the one line to print."""


def _redis_where(settings: Settings) -> str:
    if settings.redis_mode != "standalone":
        return f"Redis ({settings.redis_mode})"
    if settings.redis_url is not None:
        parts = urlsplit(settings.redis_url.get_secret_value())
        if parts.scheme == "unix":
            return f"Redis at {parts.path}"
        # host and port only: the URL may carry a password
        return f"Redis at {parts.hostname}:{parts.port or 6379}"
    return f"Redis at {settings.redis_host}:{settings.redis_port}"


def _database_where(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_dsn)
    if url.get_backend_name() == "sqlite":
        return f"the SQLite database {url.database}"
    return f"the database at {url.host}:{url.port or 5432}"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def unreachable(exc: BaseException, settings: Settings) -> str | None:
    """One line naming the service ``exc`` says is unreachable, or ``None``."""
    from aiokafka.errors import KafkaError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from ordercache.sample.producer import ProduceError

    for link in _chain(exc):
        what = type(link).__name__
        if isinstance(link, ProduceError | KafkaError):
            broker = ",".join(settings.kafka_bootstrap) if settings.kafka_broker else "?"
            return f"cannot reach the Kafka broker at {broker} ({what})"
        if isinstance(link, RedisConnectionError | RedisTimeoutError):
            return f"cannot reach {_redis_where(settings)} ({what})"
        if isinstance(link, OperationalError | InterfaceError | ConnectionError | socket.gaierror):
            return f"cannot reach {_database_where(settings)} ({what})"
    return None


class ProjectCommand(AppCommand):
    """An ``ordercache`` sub-command run by :func:`asyncio.run`, not a Faust worker."""

    #: Set per command by :func:`ordercache.app.commands.register`.
    settings: ClassVar[Settings]

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        # -l/--loglevel when given, else ORDERCACHE_LOG_LEVEL (not Faust's WARN default)
        level = level_number(self._loglevel or self.settings.log_level)
        configure_logging(self.settings, level)
        if level > logging.DEBUG:
            # aiokafka logs each failed connection attempt at ERROR; the command's own
            # line says the same once (debug shows them).
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
            # alembic lists its plugins at INFO; migrate prints its own summary
            logging.getLogger("alembic").setLevel(logging.WARNING)
        name = self.ctx.info_name or type(self).__name__
        try:
            asyncio.run(self.execute(*self.args, *args, **{**self.kwargs, **kwargs}))
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        except CommandFailed as exc:
            click.echo(f"ordercache {name}: {exc}", err=True)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except Exception as exc:
            line = unreachable(exc, self.settings)
            if line is None:
                raise
            click.echo(f"ordercache {name}: {line}", err=True)
            raise SystemExit(1) from None
        raise SystemExit(0)
