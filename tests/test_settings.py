"""Settings: every form of configuration, every bad value, and secrets kept out of sight.

Pure and fast: settings come from explicit mappings (the process environment is not
read) except where the test is about the environment or the console entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ordercache.config import doc as configdoc
from ordercache.config.settings import (
    SECRET_FIELDS,
    Settings,
    env_name,
    load_settings,
    parse_hostports,
)
from ordercache.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
P = "ORDERCACHE_"
SECRET = "pa55-W0rd_secret"


def load(**env: Any) -> Settings:
    """Settings from ``{field: value}``, spelled as ORDERCACHE_* variables."""
    return load_settings({env_name(k): str(v) for k, v in env.items()})


def config_error(**env: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(**env)
    return str(info.value)


# --------------------------------------------------------------------------- defaults
def test_defaults_are_the_local_default() -> None:
    s = load_settings({})
    assert s.redis_mode == "standalone"
    assert s.redis_is_local
    assert s.kafka_broker is None
    assert s.database_url is None
    assert s.database_dsn.startswith("sqlite+aiosqlite:///")
    assert s.database_dsn.endswith("/var/ordercache.db")
    assert (s.ttl_order, s.ttl_history, s.ttl_inventory) == (900, 3600, 300)
    assert (s.topic_orders, s.topic_inventory, s.topic_tracking, s.topic_dlq) == (
        "orders.changes",
        "inventory.changes",
        "tracking.updates",
        "ordercache.dlq",
    )
    assert s.web_port == 6066
    assert not s.redis_tls_enabled


def test_settings_are_frozen() -> None:
    s = load_settings({})
    with pytest.raises(ValidationError):
        s.ttl_order = 1  # type: ignore[misc]


def test_empty_variable_means_unset() -> None:
    s = load_settings({f"{P}KAFKA_BROKER": "", f"{P}REDIS_HOST": "", f"{P}REDIS_PORT": ""})
    assert s.kafka_broker is None
    assert s.redis_host is None
    assert s.redis_port == 6379
    assert s.redis_is_local


def test_variable_names_are_case_insensitive() -> None:
    s = load_settings({"ordercache_ttl_order": "60", "OrderCache_Redis_Port": "6380"})
    assert (s.ttl_order, s.redis_port) == (60, 6380)


def test_unrelated_variables_are_ignored() -> None:
    s = load_settings({"PATH": "/bin", "ORDERCACHE_TEST_REDIS_URL": "x", "REDIS_PORT": "abc"})
    assert s.redis_port == 6379


def test_process_environment_is_read_when_no_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"{P}TTL_INVENTORY", "42")
    monkeypatch.setenv(f"{P}REDIS_PORT", "")
    s = load_settings()
    assert s.ttl_inventory == 42
    assert s.redis_port == 6379
    monkeypatch.setenv(f"{P}REDIS_PORT", "abc")
    with pytest.raises(ConfigError, match=f"^{P}REDIS_PORT: "):
        load_settings()


# --------------------------------------------------------------------------- Redis forms
@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("redis://localhost", False),
        ("redis://:secret@cache.internal:6380/3", False),
        ("redis://user:secret@cache.internal:6380/15", False),
        ("redis://[::1]:6379/2", False),
        ("redis://h:6379/0?socket_keepalive=true", False),
        ("rediss://cache.example.com:6380/0", True),
        ("rediss://user:pw@10.0.0.1", True),
        ("unix:///run/redis/redis.sock", False),
        ("unix:///run/redis/redis.sock?db=2", False),
    ],
)
def test_url_form_is_accepted(url: str, tls: bool) -> None:
    s = load(redis_url=url)
    assert s.redis_url is not None
    assert s.redis_url.get_secret_value() == url
    assert not s.redis_is_local
    assert s.redis_tls_enabled is tls


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"redis_host": "cache"}, ("cache", 6379, None, 0, False)),
        ({"redis_host": "10.1.2.3", "redis_port": "6380"}, ("10.1.2.3", 6380, None, 0, False)),
        (
            {"redis_host": "c", "redis_username": "app", "redis_db": "7"},
            ("c", 6379, "app", 7, False),
        ),
        ({"redis_host": "c", "redis_tls": "true"}, ("c", 6379, None, 0, True)),
        ({"redis_host": "c", "redis_tls": "1", "redis_port": "6380"}, ("c", 6380, None, 0, True)),
        ({"redis_host": "c", "redis_tls": "no"}, ("c", 6379, None, 0, False)),
    ],
)
def test_discrete_form(env: dict[str, str], expect: tuple[Any, ...]) -> None:
    s = load(**env)
    assert (s.redis_host, s.redis_port, s.redis_username, s.redis_db, s.redis_tls_enabled) == (
        expect
    )
    assert not s.redis_is_local


def test_discrete_password_is_a_secret() -> None:
    s = load(redis_host="c", redis_password=SECRET)
    assert s.redis_password is not None
    assert s.redis_password.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("env", "sentinels"),
    [
        ({"redis_sentinels": "s1:26379"}, [("s1", 26379)]),
        ({"redis_sentinels": "s1:1,s2:2, s3:3"}, [("s1", 1), ("s2", 2), ("s3", 3)]),
        ({"redis_sentinels": "[::1]:26379", "redis_sentinel_master": "orders"}, [("::1", 26379)]),
        ({"redis_sentinels": "s1:1", "redis_sentinel_password": "x", "redis_db": "2"}, [("s1", 1)]),
    ],
)  # fmt: skip
def test_sentinel_mode(env: dict[str, str], sentinels: list[tuple[str, int]]) -> None:
    s = load(redis_mode="sentinel", **env)
    assert s.redis_mode == "sentinel"
    assert not s.redis_is_local
    assert s.redis_sentinels is not None
    assert parse_hostports(s.redis_sentinels, "X") == sentinels


@pytest.mark.parametrize(
    "env",
    [
        {"redis_cluster_nodes": "n1:7000"},
        {"redis_cluster_nodes": "n1:7000,n2:7001,n3:7002"},
        {"redis_url": "redis://n1:7000/0"},
        {"redis_url": "rediss://user:pw@n1:7000"},
        {"redis_cluster_nodes": "n1:7000", "redis_tls": "true"},
    ],
)
def test_cluster_mode(env: dict[str, str]) -> None:
    s = load(redis_mode="cluster", **env)
    assert s.redis_mode == "cluster"
    assert not s.redis_is_local


def test_tls_files_must_exist_and_are_kept_as_paths(tmp_path: Path) -> None:
    files = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    for f in files.values():
        f.write_text("x")
    s = load(
        redis_host="c",
        redis_tls="true",
        redis_tls_ca_file=files["ca"],
        redis_tls_cert_file=files["cert"],
        redis_tls_key_file=files["key"],
        redis_tls_verify="false",
    )
    assert (s.redis_tls_ca_file, s.redis_tls_cert_file, s.redis_tls_key_file) == (
        files["ca"],
        files["cert"],
        files["key"],
    )
    assert s.redis_tls_verify is False
    # The files are only checked when TLS is on.
    assert load(redis_tls_ca_file=tmp_path / "missing.pem").redis_tls_ca_file is not None


# --------------------------------------------------------------------------- Kafka / DB
@pytest.mark.parametrize(
    ("raw", "bootstrap", "faust"),
    [
        ("k1:9092", ["k1:9092"], "kafka://k1:9092"),
        ("kafka://k1:9092", ["k1:9092"], "kafka://k1:9092"),
        ("k1:9092,k2:9093", ["k1:9092", "k2:9093"], "kafka://k1:9092;k2:9093"),
        ("kafka://k1:9092;k2:9093", ["k1:9092", "k2:9093"], "kafka://k1:9092;k2:9093"),
        ("127.0.0.1:19092", ["127.0.0.1:19092"], "kafka://127.0.0.1:19092"),
    ],
)
def test_kafka_broker_forms(raw: str, bootstrap: list[str], faust: str) -> None:
    s = load(kafka_broker=raw)
    assert s.kafka_bootstrap == bootstrap
    assert s.faust_broker == faust


def test_kafka_bootstrap_without_broker_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"{P}KAFKA_BROKER"):
        _ = load_settings({}).kafka_bootstrap


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:5432/ordercache",
        f"postgresql+asyncpg://app:{SECRET}@db.internal/orders",
        "sqlite+aiosqlite:///var/ordercache.db",
        "sqlite+aiosqlite:////abs/path.db",
        "sqlite+aiosqlite://",
    ],
)
def test_database_urls(url: str) -> None:
    assert load(database_url=url).database_dsn == url


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    s = load(data_dir=tmp_path)
    assert s.database_dsn == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'ordercache.db'}"


# --------------------------------------------------------------------------- bad values
BAD_VALUES: list[tuple[dict[str, str], str]] = [
    ({"redis_port": "abc"}, "REDIS_PORT"),
    ({"redis_port": "0"}, "REDIS_PORT"),
    ({"redis_port": "65536"}, "REDIS_PORT"),
    ({"redis_port": "-1"}, "REDIS_PORT"),
    ({"redis_db": "16"}, "REDIS_DB"),
    ({"redis_db": "x"}, "REDIS_DB"),
    ({"redis_mode": "replicated"}, "REDIS_MODE"),
    ({"redis_mode": "Cluster!"}, "REDIS_MODE"),
    ({"redis_tls": "maybe"}, "REDIS_TLS"),
    ({"redis_tls_verify": "2"}, "REDIS_TLS_VERIFY"),
    ({"redis_max_connections": "0"}, "REDIS_MAX_CONNECTIONS"),
    ({"redis_connect_timeout": "-1"}, "REDIS_CONNECT_TIMEOUT"),
    ({"redis_read_timeout": "0"}, "REDIS_READ_TIMEOUT"),
    ({"redis_write_timeout": "fast"}, "REDIS_WRITE_TIMEOUT"),
    ({"redis_retry_attempts": "21"}, "REDIS_RETRY_ATTEMPTS"),
    ({"redis_retry_attempts": "-1"}, "REDIS_RETRY_ATTEMPTS"),
    ({"redis_retry_backoff_base": "0"}, "REDIS_RETRY_BACKOFF_BASE"),
    ({"redis_health_check_interval": "-5"}, "REDIS_HEALTH_CHECK_INTERVAL"),
    ({"redis_key_prefix": "has space"}, "REDIS_KEY_PREFIX"),
    ({"redis_key_prefix": "a" * 33}, "REDIS_KEY_PREFIX"),
    ({"redis_key_prefix": "oc:v1"}, "REDIS_KEY_PREFIX"),
    ({"redis_url": "http://cache:6379"}, "REDIS_URL"),
    ({"redis_url": "cache:6379"}, "REDIS_URL"),
    ({"redis_url": "redis://"}, "REDIS_URL"),
    ({"redis_url": "redis://cache:99999/0"}, "REDIS_URL"),
    ({"redis_url": "redis://cache:port/0"}, "REDIS_URL"),
    ({"redis_url": "redis://cache:0"}, "REDIS_URL"),
    ({"redis_url": "redis://cache:6379/zero"}, "REDIS_URL"),
    ({"redis_url": "redis://cache:6379/0?socket_timeout=soon"}, "REDIS_URL"),
    ({"redis_url": "unix://"}, "REDIS_URL"),
    ({"redis_mode": "sentinel"}, "REDIS_SENTINELS"),
    ({"redis_mode": "sentinel", "redis_sentinels": "s1"}, "REDIS_SENTINELS"),
    ({"redis_mode": "sentinel", "redis_sentinels": "s1:abc"}, "REDIS_SENTINELS"),
    ({"redis_mode": "sentinel", "redis_sentinels": "s1:70000"}, "REDIS_SENTINELS"),
    ({"redis_mode": "sentinel", "redis_sentinels": "s1:1", "redis_url": "redis://h"}, "REDIS_URL"),
    ({"redis_mode": "cluster"}, "REDIS_CLUSTER_NODES"),
    ({"redis_mode": "cluster", "redis_cluster_nodes": "n1,n2"}, "REDIS_CLUSTER_NODES"),
    ({"redis_mode": "cluster", "redis_cluster_nodes": "n1:7000", "redis_db": "1"}, "REDIS_DB"),
    ({"redis_tls": "true"}, "REDIS_TLS"),
    ({"redis_tls": "true", "redis_url": "redis://h:6379"}, "REDIS_TLS"),
    ({"redis_host": "h", "redis_tls": "1", "redis_tls_ca_file": "/no/ca"}, "REDIS_TLS_CA_FILE"),
    ({"redis_url": "rediss://h", "redis_tls_cert_file": "/no/c.pem"}, "REDIS_TLS_CERT_FILE"),
    ({"redis_url": "rediss://h", "redis_tls_key_file": "/no/k.pem"}, "REDIS_TLS_KEY_FILE"),
    ({"redis_mode": "sentinel", "redis_sentinels": ","}, "REDIS_SENTINELS"),
    ({"redis_mode": "cluster", "redis_cluster_nodes": " , "}, "REDIS_CLUSTER_NODES"),
    ({"kafka_broker": "localhost"}, "KAFKA_BROKER"),
    ({"kafka_broker": "kafka://"}, "KAFKA_BROKER"),
    ({"kafka_broker": "k1:9092,k2"}, "KAFKA_BROKER"),
    ({"kafka_broker": "k1:99999"}, "KAFKA_BROKER"),
    ({"kafka_broker": "http://k1:9092"}, "KAFKA_BROKER"),
    ({"kafka_partitions": "0"}, "KAFKA_PARTITIONS"),
    ({"topic_orders": "orders changes"}, "TOPIC_ORDERS"),
    ({"topic_inventory": "inv/changes"}, "TOPIC_INVENTORY"),
    ({"topic_tracking": "t" * 250}, "TOPIC_TRACKING"),
    ({"topic_dlq": "dlq:1"}, "TOPIC_DLQ"),
    ({"database_url": "mysql://db/orders"}, "DATABASE_URL"),
    ({"database_url": "postgresql://db/orders"}, "DATABASE_URL"),
    ({"database_url": "postgresql+asyncpg://db:port/orders"}, "DATABASE_URL"),
    ({"database_url": "postgresql+asyncpg://db:5432"}, "DATABASE_URL"),
    ({"database_url": "not a url"}, "DATABASE_URL"),
    ({"database_pool_size": "0"}, "DATABASE_POOL_SIZE"),
    ({"ttl_order": "-5"}, "TTL_ORDER"),
    ({"ttl_order": "0"}, "TTL_ORDER"),
    ({"ttl_history": "1h"}, "TTL_HISTORY"),
    ({"ttl_inventory": "1.5"}, "TTL_INVENTORY"),
    ({"ttl_negative": "-1"}, "TTL_NEGATIVE"),
    ({"ttl_jitter": "1"}, "TTL_JITTER"),
    ({"ttl_jitter": "-0.1"}, "TTL_JITTER"),
    ({"tombstone_ttl": "0"}, "TOMBSTONE_TTL"),
    ({"lease_ttl_ms": "-100"}, "LEASE_TTL_MS"),
    ({"breaker_failures": "0"}, "BREAKER_FAILURES"),
    ({"breaker_reset_seconds": "0"}, "BREAKER_RESET_SECONDS"),
    ({"web_port": "http"}, "WEB_PORT"),
    ({"web_port": "70000"}, "WEB_PORT"),
    ({"log_level": "verbose"}, "LOG_LEVEL"),
    ({"local_seed_orders": "-1"}, "LOCAL_SEED_ORDERS"),
    ({"simulate_rate": "-2"}, "SIMULATE_RATE"),
]  # fmt: skip


@pytest.mark.parametrize(("env", "var"), BAD_VALUES, ids=[v for _, v in BAD_VALUES])
def test_bad_value_is_one_line_naming_the_variable(env: dict[str, str], var: str) -> None:
    message = config_error(**env)
    assert "\n" not in message
    assert message.startswith(f"{P}{var}: "), message
    assert len(message.split(": ", 1)[1]) > 5  # says what it expects


def test_several_bad_values_are_all_named_on_one_line() -> None:
    message = config_error(redis_port="abc", ttl_order="-1", topic_dlq="a b")
    assert "\n" not in message
    for var in ("REDIS_PORT", "TTL_ORDER", "TOPIC_DLQ"):
        assert f"{P}{var}: " in message


def test_config_error_hides_pydantic_details() -> None:
    with pytest.raises(ConfigError) as info:
        load(redis_url=f"http://u:{SECRET}@h")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --------------------------------------------------------------------------- secrets
SECRET_CASES: list[dict[str, str]] = [
    {"redis_host": "h", "redis_password": SECRET},
    {"redis_url": f"redis://:{SECRET}@h:6379/0"},
    {"redis_url": f"rediss://user:{SECRET}@h:6380/1"},
    {"redis_mode": "sentinel", "redis_sentinels": "s:1", "redis_sentinel_password": SECRET},
    {"redis_mode": "sentinel", "redis_sentinels": "s:1", "redis_password": SECRET},
    {"redis_mode": "cluster", "redis_url": f"redis://u:{SECRET}@n1:7000"},
    {"database_url": f"postgresql+asyncpg://app:{SECRET}@db/orders"},
]


@pytest.mark.parametrize("env", SECRET_CASES)
def test_secrets_never_show(env: dict[str, str]) -> None:
    s = load(**env)
    shown = [repr(s), str(s), repr(s.public_dict()), s.model_dump_json(), repr(s.model_dump())]
    for text in shown:
        assert SECRET not in text
    public = s.public_dict()
    for name in SECRET_FIELDS:
        assert public[name] in (None, "**********")


# Invalid values that carry a secret: the error must not quote them.
INVALID_SECRETS: list[dict[str, str]] = [
    {"redis_url": f"http://user:{SECRET}@h:6379"},
    {"redis_url": f"redis://user:{SECRET}@h:port/0"},
    {"redis_url": f"redis://user:{SECRET}@h:99999/0"},
    {"redis_url": f"redis://user:{SECRET}@h:6379/db"},
    {"redis_url": f"redis://user:{SECRET}@/0"},
    {"redis_url": f"redis://user:{SECRET}@h/0?socket_timeout={SECRET}"},
    {"redis_url": f"{SECRET}"},
    {"redis_mode": "sentinel", "redis_sentinels": "s:1", "redis_url": f"redis://:{SECRET}@h"},
    {"redis_tls": "true", "redis_url": f"redis://:{SECRET}@h"},
    {"database_url": f"mysql://app:{SECRET}@db/orders"},
    {"database_url": f"postgresql+asyncpg://app:{SECRET}@db:port/orders"},
    {"database_url": f"postgresql+asyncpg://app:{SECRET}@db"},
    {"database_url": f"{SECRET}"},
    {"redis_password": SECRET, "redis_port": "abc"},
    {"redis_sentinel_password": SECRET, "redis_mode": "sentinel"},
]


@pytest.mark.parametrize("env", INVALID_SECRETS)
def test_invalid_secret_is_not_echoed_in_the_error(env: dict[str, str]) -> None:
    message = config_error(**env)
    assert SECRET not in message
    assert "\n" not in message
    assert message.startswith(P)


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        ("h:1", [("h", 1)]),
        ("h:1,h2:65535", [("h", 1), ("h2", 65535)]),
        (" h:1 , ,h2:2 ", [("h", 1), ("h2", 2)]),
        ("[::1]:6379", [("::1", 6379)]),
        ("my-host.example_1:80", [("my-host.example_1", 80)]),
    ],
)
def test_parse_hostports(raw: str, pairs: list[tuple[str, int]]) -> None:
    assert parse_hostports(raw, "V") == pairs


@pytest.mark.parametrize(
    "raw", ["", " , ", "h", "h:", ":1", "h:0", "h:65536", "h:1:x", "h 1:2", "h:123456"]
)
def test_parse_hostports_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^V: "):
        parse_hostports(raw, "V")


@pytest.mark.parametrize(
    ("field", "var"),
    [
        ("redis_port", f"{P}REDIS_PORT"),
        ("ttl_order", f"{P}TTL_ORDER"),
        ("web_port", f"{P}WEB_PORT"),
    ],
)
def test_env_name(field: str, var: str) -> None:
    assert env_name(field) == var


# --------------------------------------------------------------------------- console entry
def _run_main(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(P)}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "ordercache.app.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({f"{P}REDIS_PORT": "abc"}, f"{P}REDIS_PORT"),
        ({f"{P}REDIS_URL": f"http://u:{SECRET}@h"}, f"{P}REDIS_URL"),
        ({f"{P}DATABASE_URL": f"mysql://u:{SECRET}@h/db"}, f"{P}DATABASE_URL"),
    ],
)
def test_console_entry_fails_with_one_line_naming_the_variable(
    env: dict[str, str], var: str
) -> None:
    done = _run_main(env, "worker")
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert var in lines[0]
    assert SECRET not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {f"{P}REDIS_PROT": "6380"},
            f"{P}REDIS_PROT: unknown setting (did you mean {P}REDIS_PORT?)",
        ),
        ({f"{P}REDIS_ULR": SECRET}, f"{P}REDIS_ULR: unknown setting (did you mean {P}REDIS_URL?)"),
        ({f"{P}WEBPORT": "1"}, f"{P}WEBPORT: unknown setting (did you mean {P}WEB_PORT?)"),
        (
            {"ordercache_ttl_ordr": "5"},
            f"{P}TTL_ORDR: unknown setting (did you mean {P}TTL_ORDER?)",
        ),
        ({f"{P}FROBNICATE": "1"}, f"{P}FROBNICATE: unknown setting (see docs/configuration.md)"),
    ],
)
def test_an_unknown_variable_is_an_error_naming_the_closest_setting(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**env, f"{P}REDIS_PORT": "6379"})
    assert str(info.value) == expected
    assert SECRET not in str(info.value)


def test_unknown_variables_are_all_listed_and_harness_variables_are_not_settings() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({f"{P}B_TYPO": "1", f"{P}A_TYPO": "1"})
    assert str(info.value).count("unknown setting") == 2
    ok = load_settings(
        {f"{P}TEST_REDIS_URL": "x", f"{P}BENCH_REDIS_URL": "x", "OTHER_REDIS_PROT": "1"}
    )
    assert ok.redis_port == 6379


def test_console_entry_reports_a_misspelt_variable_in_one_line() -> None:
    done = _run_main({f"{P}REDIS_PROT": "6380"}, "worker")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"ordercache: configuration error: {P}REDIS_PROT: unknown setting "
        f"(did you mean {P}REDIS_PORT?)"
    ]


@pytest.mark.parametrize("command", ["worker", "migrate"])
def test_an_uncreatable_data_dir_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = blocker / "data"
    done = _run_main({f"{P}DATA_DIR": str(bad), f"{P}REDIS_URL": "redis://127.0.0.1:9/0"}, command)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"ordercache: configuration error: {P}DATA_DIR: cannot create {str(bad)!r} (Not a directory)"
    ]


def test_a_missing_data_dir_is_created(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    done = _run_main(
        {f"{P}DATA_DIR": str(data), f"{P}REDIS_URL": "redis://127.0.0.1:9/0"}, "migrate"
    )
    assert done.returncode == 0, done.stderr
    assert (data / "ordercache.db").is_file()


# --------------------------------------------------------------------------- docs
def test_configuration_doc_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == configdoc.render(), (
        "docs/configuration.md is stale: python -m ordercache.config.doc --write"
    )


def test_configuration_doc_lists_every_variable_once() -> None:
    text = configdoc.render()
    for name in Settings.model_fields:
        assert text.count(f"| `{env_name(name)}` |") == 1
    for name in SECRET_FIELDS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{env_name(name)}`"))
        assert row.endswith("| yes |")


def test_configdoc_check_exit_status(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    assert configdoc.main(["--check", "--path", str(stale)]) == 1
    assert configdoc.main(["--check", "--path", str(tmp_path / "missing.md")]) == 1
    assert configdoc.main(["--write", "--path", str(stale)]) == 0
    assert configdoc.main(["--check", "--path", str(stale)]) == 0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("REDIS_KEY_PREFIX", "oc\n"),
        ("TOPIC_ORDERS", "orders.changes\n"),
    ],
)
def test_trailing_newline_is_rejected(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({f"ORDERCACHE_{var}": value})
    assert f"ORDERCACHE_{var}" in str(err.value)
