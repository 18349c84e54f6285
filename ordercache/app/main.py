"""The ``ordercache`` console script: the Faust app's CLI.

``ordercache worker`` runs the worker and its web server. With no broker, Redis or
database configured, it runs the local default: it starts the bundled Tansu broker
and a private ``redis-server`` on free ports, uses SQLite in the data directory,
seeds a small dataset and drives sample traffic.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ordercache.config.settings import Settings, load_settings
from ordercache.errors import ConfigError
from ordercache.local.services import ManagedProcess, start_local_services

log = logging.getLogger("ordercache")

#: Commands that run the worker and so need the broker and Redis running.
_WORKER_COMMANDS = frozenset({"worker"})

#: Where the other commands look when nothing is configured (they start nothing).
_CONVENTIONAL_BROKER = "127.0.0.1:9092"
_CONVENTIONAL_REDIS = "redis://127.0.0.1:6379/0"

#: Settings.log_level in the spelling of Faust's ``--loglevel``.
_FAUST_LOGLEVEL = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR"}


def _command(argv: Sequence[str]) -> str | None:
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg
    return None


def _with_loglevel(argv: list[str], settings: Settings) -> list[str]:
    """Add ``--loglevel`` from the settings after the command, unless given on the CLI."""
    if any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in argv[1:]):
        return argv
    command = _command(argv)
    if command is None:
        return argv
    at = argv.index(command, 1) + 1
    return [*argv[:at], f"--loglevel={_FAUST_LOGLEVEL[settings.log_level]}", *argv[at:]]


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Until the worker installs its own handler: unwind so the finally-blocks stop
    # the local services instead of orphaning them. A requested stop is a clean
    # exit, as it is once the worker runs.
    raise SystemExit(0)


def _ensure_data_dir(settings: Settings) -> None:
    """Create the data directory (the worker's tables, the SQLite default) or raise
    ConfigError naming it: a path that cannot be created is a configuration error."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"ORDERCACHE_DATA_DIR: cannot create {str(path)!r} ({reason})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"ORDERCACHE_DATA_DIR: {str(path)!r} is not writable")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    args = list(sys.argv if argv is None else argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ordercache: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    command = _command(args)
    if command in _WORKER_COMMANDS or (command is not None and settings.database_url is None):
        try:
            _ensure_data_dir(settings)
        except ConfigError as exc:
            print(f"ordercache: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    from ordercache.app.context import AppContext
    from ordercache.app.faust_app import create_app

    procs: list[ManagedProcess] = []
    if _command(args) in _WORKER_COMMANDS:
        args = _with_loglevel(args, settings)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            procs, settings = start_local_services(settings)
        except (ConfigError, TimeoutError, OSError) as exc:
            print(f"ordercache: cannot start the local default: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    else:
        # Other commands (seed, migrate, simulate, tail, --help) start nothing: with no
        # broker or Redis configured they use the conventional local addresses, which
        # only the commands that talk to them (simulate, tail) will ever dial.
        settings = settings.with_endpoints(
            kafka_broker=_CONVENTIONAL_BROKER if settings.kafka_broker is None else None,
            redis_url=_CONVENTIONAL_REDIS if settings.redis_is_local else None,
        )

    try:
        ctx = AppContext.build(
            settings,
            local_default=bool(procs),
            # the bundled broker is ours to keep small (local/truncate.py); a configured one is not
            local_broker=any(p.name == "tansu" for p in procs),
        )
        app = create_app(ctx)
        sys.argv = args
        app.main()
    except ConfigError as exc:
        print(f"ordercache: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        for p in reversed(procs):
            p.cleanup()


if __name__ == "__main__":
    main()
