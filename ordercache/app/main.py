"""The ``ordercache`` console script: the Faust app's CLI.

``ordercache worker`` runs the worker and its web server. With no broker, Redis or
database configured, it runs the local default: it starts the bundled Tansu broker
and a private ``redis-server`` on free ports, uses SQLite in the data directory,
seeds a small dataset, drives sample traffic and records its endpoints in
``$ORDERCACHE_DATA_DIR/local.json`` so that the other commands find it.

The command line is Faust's Click group. Before anything starts, the arguments are
read with that group's own option definitions (:func:`invocation`), so global options
anywhere (``ordercache -l info worker``) still select the worker, and ``--help`` or
``--version`` start nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import click

from ordercache.config.settings import Settings, load_settings
from ordercache.config.version import project_version
from ordercache.errors import ConfigError
from ordercache.local import discovery
from ordercache.local.services import ManagedProcess, start_local_services

log = logging.getLogger("ordercache")

PROG = "ordercache"

#: Commands that run the worker and so need the broker and Redis running.
_WORKER_COMMANDS = frozenset({"worker"})

#: Settings.log_level in the spelling of Faust's ``--loglevel``.
_FAUST_LOGLEVEL = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR"}


#: Stand-ins for endpoints nobody configured, so that the Faust app can be built for
#: ``--help`` and the commands that need neither. Commands that need one refuse first
#: (``AppContext.unconfigured``); the Redis stand-in is a socket path that cannot
#: exist, so nothing ever reaches an unrelated server on a conventional port.
_PLACEHOLDER_BROKER = "127.0.0.1:9092"


def _placeholder_redis(settings: Settings) -> str:
    return f"unix://{(settings.data_dir / 'no-redis-configured.sock').resolve()}"


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the command line asks for, read without running anything."""

    command: str | None
    help: bool = False
    version: bool = False


def _global_options() -> dict[str, bool]:
    """Option name -> takes a value, from the Click group Faust's CLI runs."""
    from faust.cli.faust import cli

    takes: dict[str, bool] = {}
    for param in cli.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                takes[name] = not param.is_flag and not param.count
    return takes


def invocation(argv: Sequence[str]) -> Invocation:
    """The sub-command of ``argv`` (without the program name) and the eager flags.

    Global options come from the Click group itself, so an option's value (``-l
    info``) is never taken for the command. ``--help`` anywhere, and ``--version``
    before the command, are what Click would answer without running a command.
    """
    takes = _global_options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return Invocation(args[i + 1] if i + 1 < len(args) else None)
        if arg == "--help":
            return Invocation(None, help=True)
        if arg == "--version":
            return Invocation(None, version=True)
        if arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0]
            if "=" not in arg and takes.get(name, False):
                i += 1  # skip the option's value
            i += 1
            continue
        return Invocation(arg, help="--help" in args[i + 1 :])
    return Invocation(None)


def _with_loglevel(args: list[str], command: str, settings: Settings) -> list[str]:
    """Add ``--loglevel`` from the settings after the command, unless given on the CLI."""
    if any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args[1:]):
        return args
    at = args.index(command, 1) + 1
    return [*args[:at], f"--loglevel={_FAUST_LOGLEVEL[settings.log_level]}", *args[at:]]


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Until the worker installs its own handler: unwind so the finally-blocks stop
    # the local services instead of orphaning them. A requested stop is a clean
    # exit, as it is once the worker runs.
    raise SystemExit(0)


def _fail(message: str, status: int) -> SystemExit:
    print(f"{PROG}: {message}", file=sys.stderr)
    return SystemExit(status)


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
    call = invocation(args[1:])
    if call.version:
        click.echo(f"{PROG}, version {project_version()}")
        raise SystemExit(0)
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise _fail(f"configuration error: {exc}", 2) from None

    command = None if call.help else call.command
    if command in _WORKER_COMMANDS or (command is not None and settings.database_url is None):
        try:
            _ensure_data_dir(settings)
        except ConfigError as exc:
            raise _fail(f"configuration error: {exc}", 2) from None

    from ordercache.app.context import AppContext
    from ordercache.app.faust_app import BrokerFirstBoot, create_app
    from ordercache.app.logs import configure_logging

    configure_logging(settings, settings.log_level.upper())

    procs: list[ManagedProcess] = []
    record: discovery.LocalEndpoints | None = None
    unconfigured: frozenset[str] = frozenset()
    if call.command in _WORKER_COMMANDS and not call.help:
        args = _with_loglevel(args, call.command, settings)
        if settings.log_format == "json":
            args.insert(1, "--quiet")  # no start-up banner: every line is a JSON record
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            procs, settings = start_local_services(settings)
        except (ConfigError, TimeoutError, OSError) as exc:
            raise _fail(f"cannot start the local default: {exc}", 2) from None
        if procs:
            record = discovery.LocalEndpoints.of(settings, pid=os.getpid())
    else:
        # Other commands (and --help) start nothing. With no broker or Redis configured they use a
        # running local-default worker's (its local.json), or none at all: a command
        # that needs one then says so instead of dialing whatever listens on 6379.
        found = discovery.read(settings.data_dir)
        if found is not None:
            settings = found.apply(settings)
        unconfigured = frozenset(
            name
            for name, missing in (
                ("broker", settings.kafka_broker is None),
                ("redis", settings.redis_is_local),
            )
            if missing
        )
        settings = settings.with_endpoints(
            kafka_broker=_PLACEHOLDER_BROKER if "broker" in unconfigured else None,
            redis_url=_placeholder_redis(settings) if "redis" in unconfigured else None,
        )

    boot: BrokerFirstBoot | None = None
    try:
        ctx = AppContext.build(
            settings,
            local_default=bool(procs),
            unconfigured=unconfigured,
            # the bundled broker is ours to keep small (local/truncate.py); a configured one is not
            local_broker=any(p.name == "tansu" for p in procs),
        )
        app = create_app(ctx)
        boot = app.boot_strategy if isinstance(app.boot_strategy, BrokerFirstBoot) else None
        if record is not None:
            discovery.write(settings.data_dir, record)
            log.info(
                "local default recorded in %s: commands run from %s find it "
                "(%s stats, %s tail ORDER_ID, %s simulate, ordercache.Reader.from_env())",
                discovery.path(settings.data_dir),
                os.getcwd(),
                PROG,
                PROG,
                PROG,
            )
        sys.argv = args
        app.main()
    except ConfigError as exc:
        raise _fail(f"configuration error: {exc}", 2) from None
    finally:
        if boot is not None:
            boot.close_unstarted_consumer_loop()
        if record is not None:
            discovery.remove(settings.data_dir, record.pid)
        for p in reversed(procs):
            p.cleanup()


if __name__ == "__main__":
    main()
