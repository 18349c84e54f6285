"""The local default's discovery record and the commands that use it.

The unit tests use the record's file directly; the end-to-end test runs a real
local-default worker (its own Tansu broker and redis-server) and, from "another
terminal" (a clean environment with only the data directory), seeds while its
sample traffic writes, reads its /stats, simulates and tails through it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ordercache.config.settings import load_settings
from ordercache.local import discovery
from ordercache.local.discovery import LocalEndpoints
from tests.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]


def _record(pid: int) -> LocalEndpoints:
    return LocalEndpoints(
        pid=pid,
        broker="127.0.0.1:19092",
        redis_url="redis://127.0.0.1:16379/0",
        web_host="127.0.0.1",
        web_port=16066,
        database_url="sqlite+aiosqlite:////tmp/x.db",
    )


def test_record_round_trips_and_is_removed_only_by_its_worker(tmp_path: Path) -> None:
    discovery.write(tmp_path, _record(os.getpid()))
    assert discovery.read(tmp_path) == _record(os.getpid())
    assert not list(tmp_path.glob(".local-*"))  # the temporary file was renamed
    discovery.remove(tmp_path, os.getpid() + 1)
    assert discovery.path(tmp_path).exists()
    discovery.remove(tmp_path, os.getpid())
    assert not discovery.path(tmp_path).exists()
    assert discovery.read(tmp_path) is None


def test_record_of_a_dead_worker_is_ignored(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    discovery.write(tmp_path, _record(proc.pid))
    assert discovery.read(tmp_path) is None


@pytest.mark.parametrize("garbage", ["", "{", "[]", '{"pid": "x"}'])
def test_unreadable_record_is_ignored(tmp_path: Path, garbage: str) -> None:
    discovery.path(tmp_path).write_text(garbage)
    assert discovery.read(tmp_path) is None


def test_configured_settings_win_over_the_record() -> None:
    rec = _record(os.getpid())
    bare = rec.apply(load_settings({}))
    assert bare.kafka_bootstrap == ["127.0.0.1:19092"]
    assert bare.redis_url is not None and bare.redis_url.get_secret_value() == rec.redis_url
    assert (bare.web_port, bare.database_dsn) == (16066, rec.database_url)
    given = rec.apply(
        load_settings(
            {
                "ORDERCACHE_KAFKA_BROKER": "k:1",
                "ORDERCACHE_REDIS_HOST": "r",
                "ORDERCACHE_WEB_PORT": "7000",
            }
        )
    )
    assert given.kafka_bootstrap == ["k:1"]
    assert given.redis_url is None and given.redis_host == "r"
    assert given.web_port == 7000


def test_a_database_password_stays_out_of_the_record() -> None:
    s = load_settings(
        {
            "ORDERCACHE_KAFKA_BROKER": "k:1",
            "ORDERCACHE_REDIS_URL": "redis://r:1/0",
            "ORDERCACHE_DATABASE_URL": "postgresql+asyncpg://u:hunter2@db/oc",
        }
    )
    rec = LocalEndpoints.of(s, pid=1)
    assert rec.database_url is None
    assert "hunter2" not in json.dumps(rec.__repr__())


def _cli(data: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERCACHE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["ORDERCACHE_DATA_DIR"] = str(data)  # nothing else: endpoints come from local.json
    return subprocess.run(
        [sys.executable, "-m", "ordercache.app.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.kafka
def test_other_commands_find_a_running_local_worker(tmp_path: Path) -> None:
    w = WorkerProcess.configured(tmp_path, "local", local_seed_orders=300, simulate_rate=200)
    data = Path(w.env["ORDERCACHE_DATA_DIR"])
    w.start()
    try:
        w.wait_for_log("local default: sample traffic at", timeout=90)
        record = json.loads(discovery.path(data).read_text())
        assert w.proc is not None and record["pid"] == w.proc.pid
        assert record["web_port"] == w.web_port
        w.wait_for_log("[^Worker]: Ready", timeout=90)

        # seed while the sample traffic writes the same SQLite file: no id collision
        seeded = _cli(data, "seed", "--orders", "3000", "--customers", "50", "--products", "20")
        assert seeded.returncode == 0, seeded.stderr
        assert "seeded 3,000 orders" in seeded.stdout
        assert "seed: orders 3,000/3,000" in seeded.stderr  # not a terminal: lines
        assert "seed: analyze" in seeded.stderr

        stats = _cli(data, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["status"] in ("ok", "degraded")
        human = _cli(data, "stats")
        assert human.returncode == 0 and human.stdout.startswith("status "), human.stderr

        sim = _cli(data, "simulate", "--events", "40", "--rate", "40", "--every", "0.2")
        assert sim.returncode == 0, sim.stderr
        sent = re.search(r"^(\d+) events in", sim.stdout)
        assert sent is not None and int(sent.group(1)) >= 40, sim.stdout  # whole transactions
        assert "simulate: " in sim.stderr  # periodic summary lines

    finally:
        rc = w.terminate()
    assert rc == 0, w.log()[-3000:]
    assert not discovery.path(data).exists()
    r = _cli(data, "tail", "5")
    assert r.returncode == 1 and "no Redis configured" in r.stderr, r.stderr
