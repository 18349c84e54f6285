"""A real Prometheus for tests: the shipped rules, time-scaled, scraping real processes.

``scaled_rules`` divides every duration of the shipped ``alerts.yml`` — ``for:``,
range selectors ``[5m]``, ``offset 10m`` and the ``*_seconds_max`` thresholds that
are durations — by one factor (:data:`SCALE`), so an alert that needs 10 minutes in
production needs 10 s here; range windows and offsets stay at least
:data:`MIN_WINDOW` long. Nothing else of the rules changes. Scrapes and rule
evaluation run every second. Not collected as tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ordercache.local.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")

#: Production durations are divided by this in the live test (docs/runbook.md says so).
SCALE = 60
#: Scrape and evaluation interval of the test's Prometheus, seconds.
INTERVAL = 1
#: Shortest range window after scaling, seconds: three refreshes of the worker's
#: slowest gauge source (Redis INFO every 5 s), so that rate() over a scaled window
#: still sees the counter move.
MIN_WINDOW = 15

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
#: Threshold constants that are durations (scaled with the windows).
_DURATION_THRESHOLDS = (
    "stream_oldest_pending_idle_seconds_max",
    "invalidation_stalled_seconds_max",
)


def _seconds(text: str) -> float:
    return sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(text))


def _scaled(text: str, factor: int, floor: float = INTERVAL) -> str:
    ms = max(round(floor * 1000), round(_seconds(text) * 1000 / factor))
    return f"{ms}ms"


def scaled_window(production_seconds: float, factor: int = SCALE) -> float:
    """A range window (or offset) of the shipped rules as the live test runs it."""
    return max(MIN_WINDOW, production_seconds / factor)


def scaled_rules(source: str, factor: int = SCALE) -> str:
    """The rule file with every duration divided by ``factor``: ``for:`` at least one
    interval, range windows and offsets at least :data:`MIN_WINDOW`."""
    out = re.sub(
        r"(for:\s*)((?:\d+(?:ms|s|m|h|d))+)",
        lambda m: m.group(1) + _scaled(m.group(2), factor),
        source,
    )
    out = re.sub(
        r"\[((?:\d+(?:ms|s|m|h|d))+)(:[^\]]*)?\]",
        lambda m: f"[{_scaled(m.group(1), factor, MIN_WINDOW)}{m.group(2) or ''}]",
        out,
    )
    out = re.sub(
        r"(offset\s+)((?:\d+(?:ms|s|m|h|d))+)",
        lambda m: m.group(1) + _scaled(m.group(2), factor, MIN_WINDOW),
        out,
    )
    for name in _DURATION_THRESHOLDS:
        out = re.sub(
            rf"(record: ordercache:threshold:{name}\n\s*expr: vector\()([\d.]+)\)",
            lambda m: f"{m.group(1)}{float(m.group(2)) / factor:g})",
            out,
        )
    return out


@dataclass
class Alert:
    name: str
    state: str  # pending | firing
    labels: dict[str, str]


@dataclass
class Prometheus:
    """A prometheus process with its config directory."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"

    def set_targets(self, jobs: dict[str, list[str]]) -> None:
        """File-based discovery: ``{job: ["127.0.0.1:port", ...]}`` (read every second)."""
        groups = [{"targets": targets, "labels": {"job": job}} for job, targets in jobs.items()]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)

    def start(self, jobs: dict[str, list[str]], *, factor: int = SCALE) -> Prometheus:
        assert PROMETHEUS is not None, "prometheus not installed (scripts/bootstrap)"
        (self.workdir / "alerts.yml").write_text(scaled_rules(ALERTS.read_text(), factor))
        self.set_targets(jobs)
        (self.workdir / "prometheus.yml").write_text(
            f"""global:
  scrape_interval: {INTERVAL}s
  scrape_timeout: {INTERVAL}s
  evaluation_interval: {INTERVAL}s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: discovered
    file_sd_configs:
      - files: [{self.targets_file}]
        refresh_interval: 1s
"""
        )
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self) -> list[Alert]:
        return [
            Alert(a["labels"]["alertname"], a["state"], a["labels"])
            for a in self._get("/api/v1/alerts")["alerts"]
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        return list(self._get(f"/api/v1/query?query={quote(expr)}")["result"])

    def firing(self, name: str, **labels: str) -> bool:
        return any(
            a.name == name
            and a.state == "firing"
            and all(a.labels.get(k) == v for k, v in labels.items())
            for a in self.alerts()
        )

    def wait(
        self,
        condition: Callable[[], bool],
        what: str,
        timeout: float,
        poll: float = 0.5,
        since: float | None = None,
    ) -> float:
        """Seconds from ``since`` (a ``time.monotonic()``, default: now) until
        ``condition()``; fails with the alert states after ``timeout`` from ``since``."""
        t0 = time.monotonic() if since is None else since
        while True:
            try:
                if condition():
                    return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                states = [(a.name, a.state) for a in self.alerts()]
                raise AssertionError(f"{what}: not within {timeout:.0f}s; alerts now: {states}")
            time.sleep(poll)

    def wait_firing(
        self, name: str, timeout: float, since: float | None = None, **labels: str
    ) -> float:
        return self.wait(
            lambda: self.firing(name, **labels), f"{name} firing", timeout, since=since
        )

    def wait_resolved(self, name: str, timeout: float, since: float | None = None) -> float:
        return self.wait(
            lambda: not any(a.name == name for a in self.alerts()),
            f"{name} resolved",
            timeout,
            since=since,
        )
