"""``ordercache worker`` on the local default: starts, stops on SIGTERM, leaves nothing behind.

The worker runs as a real subprocess with no broker, Redis or database configured,
so it starts its own Tansu broker and redis-server. Python's ResourceWarning and
RuntimeWarning are switched on in the child: an unclosed Redis connection or a
never-awaited coroutine shows up in its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ordercache.local.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
READY = "[^Worker]: Ready"
CLOSED = "Redis and database connections closed"

pytestmark = pytest.mark.kafka


@dataclass
class Worker:
    """A running ``ordercache worker`` and everything it printed so far."""

    proc: subprocess.Popen[str]
    web_port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    eof: bool = False
    reader: threading.Thread | None = None
    #: Every child process seen (killed at teardown if a failing test left it behind).
    seen_children: dict[int, str] = field(default_factory=dict)

    def children(self) -> dict[int, str]:
        """The worker's live child processes now: {pid: command line}."""
        found = _children(self.proc.pid)
        self.seen_children.update(found)
        return found

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 90.0) -> None:
        """Block until the worker printed ``text``; fail if it exits or takes too long."""
        with self.changed:
            seen = self.changed.wait_for(lambda: text in self.output or self.eof, timeout)
        assert seen, f"{text!r} not printed after {timeout}s:\n{self.output}"
        assert text in self.output, f"worker exited before printing {text!r}:\n{self.output}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # faulthandler (PYTHONFAULTHANDLER) prints every thread's stack on SIGABRT.
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(10)
            if self.reader is not None:
                self.reader.join(10)
            pytest.fail(f"worker still running {timeout}s after signal {sig}:\n{self.output}")
        if self.reader is not None:
            self.reader.join(10)
        return rc


def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: {pid: command line}."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(entry.name)] = cmdline
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def worker_env() -> dict[str, str]:
    """Extra environment for the worker (a test parametrizes it)."""
    return {}


@pytest.fixture
def worker(tmp_path: Path, worker_env: dict[str, str]) -> Iterator[Worker]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
    env.update(
        worker_env,
        ORDERCACHE_DATA_DIR=str(tmp_path / "var"),
        ORDERCACHE_WEB_PORT=str(port),
        ORDERCACHE_LOG_LEVEL="info",
        PYTHONPATH=str(ROOT),  # this checkout's code, whatever is installed
        PYTHONWARNINGS="default::ResourceWarning,default::RuntimeWarning",
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ordercache.app.main", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    w = Worker(proc, port)
    w.reader = threading.Thread(target=w._read, daemon=True)
    w.reader.start()
    yield w
    if proc.poll() is None:  # the test failed half-way: do not leak the worker
        w.children()
        proc.kill()
        proc.wait(10)
    for pid in w.seen_children:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    w.reader.join(10)
    assert proc.stdout is not None
    proc.stdout.close()


def _assert_clean_exit(
    w: Worker,
    rc: int,
    children: dict[int, str],
    *,
    started: bool,
    expected: tuple[str, ...] = (),
) -> None:
    """Exit 0, no traceback, no Python warning and no logged warning but the
    ``expected`` ones, connections closed (if started), no process left behind."""
    out = w.output
    assert rc == 0, out
    assert "Traceback" not in out, out
    rest = "".join(line for line in w.lines if not any(e in line for e in expected))
    for bad in ("warning", "unclosed", "never awaited"):
        assert bad not in rest.lower(), out
    if started:
        assert CLOSED in out, out
    leftover = {pid: cmd for pid, cmd in children.items() if _alive(pid)}
    assert leftover == {}, f"processes left behind: {leftover}"


def test_worker_on_local_default_stops_cleanly_on_sigterm(worker: Worker) -> None:
    worker.wait_for(READY)
    wait_for_port(worker.web_port, timeout=10)
    children = worker.children()
    kinds = sorted("redis-server" if "redis-server" in c else "tansu" for c in children.values())
    assert kinds == ["redis-server", "tansu"], children
    assert "Redis (standalone) reachable" in worker.output

    rc = worker.stop(signal.SIGTERM)
    _assert_clean_exit(worker, rc, children, started=True)


def test_worker_stopped_while_joining_the_group_still_cleans_up(worker: Worker) -> None:
    # The web server answers before the consumer group is joined: stop in between.
    wait_for_port(worker.web_port, timeout=60)
    children = worker.children()
    assert len(children) == 2, children
    rc = worker.stop(signal.SIGTERM)
    _assert_clean_exit(worker, rc, children, started=True)


# Port 9 (discard): nothing listens on it here, and it is the same in every run.
@pytest.mark.parametrize("worker_env", [{"ORDERCACHE_KAFKA_BROKER": "127.0.0.1:9"}])
def test_worker_stopped_while_the_broker_gate_waits_closes_everything(worker: Worker) -> None:
    # Nothing listens on the broker's port: the gate holds Faust's consumer back for
    # good. Its thread never starts; the event loop made for that thread is closed
    # too (no "unclosed event loop" at exit).
    worker.wait_for("broker not reachable")
    wait_for_port(worker.web_port, timeout=60)
    children = worker.children()
    assert ["redis-server" in c for c in children.values()] == [True], children
    rc = worker.stop(signal.SIGTERM)
    _assert_clean_exit(worker, rc, children, started=True, expected=("broker not reachable",))


def test_worker_stopped_during_local_start_up_leaves_no_processes(worker: Worker) -> None:
    # Printed right after the private redis-server is up, before Faust takes over
    # the signal handling.
    worker.wait_for("local default: redis-server on")
    children = worker.children()
    assert len(children) == 2, children
    rc = worker.stop(signal.SIGTERM)
    _assert_clean_exit(worker, rc, children, started=False)


def test_worker_killed_with_sigkill_leaves_no_processes(worker: Worker) -> None:
    # No handler runs on SIGKILL: the kernel itself must end the children
    # (PR_SET_PDEATHSIG), and the private Redis works in the data directory.
    worker.wait_for(READY)
    children = worker.children()
    kinds = sorted("redis-server" if "redis-server" in c else "tansu" for c in children.values())
    assert kinds == ["redis-server", "tansu"], children
    rc = worker.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while (
        left := {p: c for p, c in children.items() if _alive(p)}
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == {}, f"processes left behind: {left}"
