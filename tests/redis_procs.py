"""Private Redis topologies for tests: Sentinel, Cluster and TLS, on free loopback ports.

Everything here starts processes of its own (never touches the shared Redis on 6379)
and returns :class:`~ordercache.local.services.ManagedProcess` objects the caller stops.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from ordercache.local.services import (
    ManagedProcess,
    free_port,
    start_redis_server,
    wait_for_port,
)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Poll ``predicate()`` until it is truthy; errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached after {timeout}s (last error: {last!r})")


# --------------------------------------------------------------------------- Sentinel
def start_sentinel(master: ManagedProcess, name: str = "mymaster") -> ManagedProcess:
    """A ``redis-server --sentinel`` monitoring ``master``; returns once it knows the master."""
    exe = shutil.which("redis-server")
    assert exe is not None, "redis-server is not installed"
    port = free_port()
    wd = Path(tempfile.mkdtemp(prefix="oc-sentinel-"))
    conf = wd / "sentinel.conf"
    conf.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        "daemonize no\n"
        f"dir {wd}\n"
        f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {name} 1000\n"
        f"sentinel failover-timeout {name} 3000\n"
    )
    args = [exe, str(conf), "--sentinel"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    mp = ManagedProcess("redis-sentinel", port, proc, wd, args)
    try:
        wait_for_port(port)
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            wait_until(
                lambda: client.sentinel_get_master_addr_by_name(name) is not None,
                "sentinel knows the master",
            )
        finally:
            client.close()
    except BaseException:
        mp.cleanup()
        raise
    return mp


# --------------------------------------------------------------------------- Cluster
@dataclass
class LocalCluster:
    """Private cluster-enabled redis-servers: primaries, and replicas when asked for."""

    nodes: list[ManagedProcess]
    node_timeout_ms: int = 2000

    @property
    def addresses(self) -> str:
        """``host:port,host:port`` for ``ORDERCACHE_REDIS_CLUSTER_NODES``."""
        return ",".join(n.url for n in self.nodes)

    def alive(self) -> list[ManagedProcess]:
        return [n for n in self.nodes if n.alive()]

    def primary_of(self, key: str) -> ManagedProcess:
        """The node that serves ``key``'s slot now (asked of a live node)."""
        for node in self.alive():
            client = redis.Redis(port=node.port, socket_timeout=2)
            try:
                return self.primary_of_slot(int(client.execute_command("CLUSTER", "KEYSLOT", key)))
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError(f"no live node knows the owner of {key!r}")

    def primary_of_slot(self, slot: int) -> ManagedProcess:
        """The node that serves ``slot`` now, as the first live node that answers sees it."""
        for node in self.alive():
            client = redis.Redis(port=node.port, socket_timeout=2)
            try:
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        port = int(primary[1])
                        return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError(f"no live node knows the owner of slot {slot}")

    def role(self, node: ManagedProcess) -> str:
        client = redis.Redis(port=node.port, socket_timeout=2)
        try:
            return _role(client)
        finally:
            client.close()

    def wait_failover(self, dead: ManagedProcess, timeout: float = 30.0) -> None:
        """A replica took over ``dead``'s slots: no live node maps a slot to it any more,
        and every live node reports ``cluster_state:ok``."""

        def promoted() -> bool:
            for node in self.alive():
                client = redis.Redis(port=node.port, socket_timeout=1)
                try:
                    ranges = client.execute_command("CLUSTER", "SLOTS")
                finally:
                    client.close()
                if any(int(primary[1]) == dead.port for _, _, primary, *_ in ranges):
                    return False
            return True

        wait_until(promoted, f"failover away from {dead.url}", timeout=timeout)
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Every live node reports ``cluster_state:ok``."""
        for node in self.alive():
            client = redis.Redis(port=node.port, socket_timeout=1)
            try:
                wait_until(
                    lambda c=client: c.execute_command("CLUSTER INFO")["cluster_state"] == "ok",
                    f"cluster_state:ok on {node.url}",
                    timeout=timeout,
                )
            finally:
                client.close()

    def add_primary(self) -> ManagedProcess:
        """Start a node, let it meet the cluster and wait until every node lists it as
        a primary (with no slots yet: :meth:`move_slot` gives it some)."""
        node = _start_cluster_node(self.node_timeout_ms)
        self.nodes.append(node)
        first = redis.Redis(port=self.nodes[0].port, socket_timeout=5)
        try:
            bus = node.args[node.args.index("--cluster-port") + 1]
            first.execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus)
        finally:
            first.close()

        def known_everywhere() -> bool:
            for other in self.alive():
                client = redis.Redis(port=other.port, socket_timeout=1, decode_responses=True)
                try:
                    nodes = client.execute_command("CLUSTER NODES")
                finally:
                    client.close()
                entry = nodes.get(node.url)
                if entry is None or "master" not in entry["flags"]:
                    return False
                known = {a for a, e in nodes.items() if "handshake" not in e["flags"]}
                if known != {n.url for n in self.alive()}:
                    return False
            return True

        wait_until(
            known_everywhere, f"{node.url} a primary, every node knowing every other", timeout=30
        )
        self.wait_ok()  # the new node learnt the slot map too
        return node

    def move_slot(self, slot: int, to_port: int | None = None) -> int:
        """Migrate ``slot`` and its keys to another primary (``to_port``, or any other
        primary) as ``redis-cli --cluster reshard`` does; return the new owner's port."""
        clients = {n.port: redis.Redis(port=n.port, socket_timeout=5) for n in self.alive()}
        try:
            owner = self.primary_of_slot(slot).port
            target = to_port or next(
                p for p, c in clients.items() if p != owner and _role(c) == "master"
            )
            ids = {p: c.execute_command("CLUSTER MYID").decode() for p, c in clients.items()}
            clients[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[owner])
            clients[owner].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
            while keys := clients[owner].execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                clients[owner].execute_command(
                    "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys
                )
            for c in clients.values():
                c.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
            return target
        finally:
            for c in clients.values():
                c.close()

    def set_slot(self, slot: int, *, owner: int | None) -> None:
        """Drop ``slot`` from every node's table (as when a primary without a replica
        is lost), or give it back to the node on port ``owner``."""
        for node in self.alive():
            client = redis.Redis(port=node.port, socket_timeout=2)
            try:
                if owner is None:
                    client.execute_command("CLUSTER", "DELSLOTS", slot)
                elif node.port == owner:
                    client.execute_command("CLUSTER", "ADDSLOTS", slot)
            finally:
                client.close()

    def cleanup(self) -> None:
        for node in reversed(self.nodes):
            node.cleanup()


def _start_cluster_node(node_timeout_ms: int, extra_args: Sequence[str] = ()) -> ManagedProcess:
    # The bus port defaults to port + 10000, which may be taken or above 65535.
    bus = str(free_port())
    # validity factor 0: a replica may always take over (the tests kill primaries)
    args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", bus,
            "--cluster-replica-validity-factor", "0", *extra_args]  # fmt: skip
    return start_redis_server(extra_args=args)


def _role(client: redis.Redis) -> str:
    role = client.execute_command("ROLE")[0]
    return role.decode() if isinstance(role, bytes) else str(role)


def start_cluster(
    size: int = 3,
    *,
    replicas: int = 0,
    node_timeout_ms: int = 2000,
    extra_args: Sequence[str] = (),
) -> LocalCluster:
    """Start ``size`` cluster-enabled servers, create the cluster (``replicas`` per
    primary) and wait for state ok and, with replicas, for every replica in sync."""
    cluster = LocalCluster([], node_timeout_ms)
    try:
        for _ in range(size):
            cluster.nodes.append(_start_cluster_node(node_timeout_ms, extra_args))
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is not installed"
        create = [cli, "--cluster", "create", *(n.url for n in cluster.nodes)]
        subprocess.run(
            [*create, "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster.wait_ok()
        if replicas:
            _wait_replicas_in_sync(cluster)
    except BaseException:
        cluster.cleanup()
        raise
    return cluster


def _wait_replicas_in_sync(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        client = redis.Redis(port=node.port, socket_timeout=1, decode_responses=True)
        try:
            if _role(client) != "slave":
                continue
            wait_until(
                lambda c=client: c.info("replication").get("master_link_status") == "up",
                f"replica {node.url} in sync",
                timeout=30,
            )
        finally:
            client.close()


# --------------------------------------------------------------------------- TLS
@dataclass(frozen=True)
class TlsFiles:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    assert exe is not None, "openssl is not installed"
    subprocess.run([exe, *args], check=True, capture_output=True, timeout=60)


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the CA, server and client material with the openssl CLI (EC keys: fast)."""
    d = directory
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
             "-days", "2", "-subj", "/CN=ordercache test CA")  # fmt: skip
    for who, subj in (("server", "/CN=127.0.0.1"), ("client", "/CN=ordercache client")):
        _openssl("req", *ec, "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"),
                 "-subj", subj)  # fmt: skip
        ext = d / f"{who}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if who == "server" else "\n")
        _openssl("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-out", str(d / f"{who}.crt"), "-extfile", str(ext))  # fmt: skip
    return TlsFiles(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
    )


def start_tls_redis(files: TlsFiles, *, require_client_cert: bool = False) -> ManagedProcess:
    """A private redis-server that speaks only TLS on its port."""
    port = free_port()
    args = [
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(files.server_cert),
        "--tls-key-file", str(files.server_key),
        "--tls-ca-cert-file", str(files.ca),
        "--tls-auth-clients", "yes" if require_client_cert else "no",
    ]  # fmt: skip
    return start_redis_server(port=port, extra_args=args)


# --------------------------------------------------------------------------- observing
def client_list(port: int) -> list[dict[str, str]]:
    """CLIENT LIST of a private plain-TCP server, without the observer's own connection."""
    observer = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
    try:
        observer.client_setname("oc-observer")
        return [c for c in observer.client_list() if c["name"] != "oc-observer"]
    finally:
        observer.close()


def pause_clients(port: int, millis: int) -> None:
    """CLIENT PAUSE ALL on a private server: every command waits ``millis`` ms.

    There is no early way out: CLIENT UNPAUSE itself waits for the pause to end.
    """
    admin = redis.Redis(port=port, socket_timeout=2)
    try:
        admin.execute_command("CLIENT", "PAUSE", str(millis), "ALL")
    finally:
        admin.close()
