"""A private PostgreSQL cluster for tests that need logical decoding (not collected as tests).

Starts ``postgres`` from the machine's binaries (``initdb``; ``ORDERCACHE_TEST_PG_BIN`` or
``/usr/lib/postgresql/<major>/bin``) on a free loopback port with ``wal_level=logical``
and trust authentication, in a temporary directory; never touches the shared server.
PostgreSQL refuses to run as root, so under root the cluster runs as the ``postgres``
system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ordercache.local.services import ManagedProcess, free_port


def pg_bin_dir() -> Path:
    given = os.environ.get("ORDERCACHE_TEST_PG_BIN")
    if given:
        return Path(given)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    if found is None:
        raise FileNotFoundError("initdb not found (set ORDERCACHE_TEST_PG_BIN)")
    return Path(found).parent


def _as_user() -> tuple[list[str], str | None]:
    if os.geteuid() != 0:
        return [], None
    return ["runuser", "-u", "postgres", "--"], "postgres"


def start_private_postgres(
    *, wal_level: str = "logical", extra: dict[str, str] | None = None
) -> ManagedProcess:
    """initdb + postgres on a free port; returns once it accepts connections.

    The user is ``postgres`` (trust); the URL is ``postgresql://postgres@127.0.0.1:<port>/postgres``.
    """
    bindir = pg_bin_dir()
    prefix, user = _as_user()
    wd = Path(tempfile.mkdtemp(prefix="oc-pg-"))
    data = wd / "data"
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(wd, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
         "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(wd),
        "wal_level": wal_level,
        "max_replication_slots": "10",
        "max_wal_senders": "10",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        **(extra or {}),
    }
    args = [*prefix, str(bindir / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    log = (wd / "postgres.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    mp = ManagedProcess("postgres", port, proc, wd, args)
    deadline = time.monotonic() + 30
    while True:
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if ready.returncode == 0:
            return mp
        if proc.poll() is not None or time.monotonic() > deadline:
            text = (wd / "postgres.log").read_text(errors="replace")
            mp.cleanup()
            raise RuntimeError(f"private postgres did not start:\n{text[-2000:]}")
        time.sleep(0.1)


def admin_url(pg: ManagedProcess, db: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{pg.port}/{db}"
