"""Run ``ordercache worker`` as a subprocess for tests (not collected as tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ordercache.local.services import free_port

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcess:
    """A worker subprocess with its environment and a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def configured(cls, tmp: Path, name: str, **settings: Any) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
        env["PYTHONPATH"] = str(ROOT)
        env.setdefault("ORDERCACHE_WEB_PORT", str(free_port()))
        data = tmp / name
        data.mkdir(parents=True, exist_ok=True)
        env["ORDERCACHE_DATA_DIR"] = str(data)
        # Warming would turn the first reads of a test into hits; tests that want it
        # pass warm=True.
        env["ORDERCACHE_WARM"] = "false"
        for key, value in settings.items():
            env[f"ORDERCACHE_{key.upper()}"] = str(value)
        return cls(env, data / "worker.log")

    @property
    def web_port(self) -> int:
        return int(self.env["ORDERCACHE_WEB_PORT"])

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ordercache.app.main", "worker", "-l", "info"],
            env=self.env,
            cwd=str(self.log_path.parent),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 60.0, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log()[start:]:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not logged in {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
