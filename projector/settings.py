"""Configuration from ``PROJECTOR_*`` environment variables, validated once at start-up.

A bad value becomes one ``ConfigError`` sentence naming the variable; secrets never
leave this module unmasked (``redacted_dsn`` / ``redacted_url``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from projector.core.boards import Board, Table, load_boards
from projector.core.buckets import Retention
from projector.core.errors import ConfigError
from projector.core.fingerprint import ProjectionConfig
from projector.core.keys import Keys
from projector.core.windows import check_retention

_IDENTIFIER_RE = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")
ENV_PREFIX = "PROJECTOR_"


class Settings(BaseSettings):
    """Every knob of the projector and the read API."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    pg_dsn: str = Field(
        "postgresql://postgres@localhost:5432/postgres",
        description="PostgreSQL of the projector (needs `wal_level=logical` and a UTF8 database; "
        "the role of `projector roles`: LOGIN REPLICATION, SELECT).",
    )
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis 7+ with `maxmemory-policy noeviction` (checked); the projector's ACL "
        "user. With Sentinels or a Cluster it gives only user, password, db and TLS.",
    )
    redis_sentinels: str | None = Field(
        None,
        description="`host:port,...` of the Redis Sentinels; the master of "
        "`PROJECTOR_REDIS_SENTINEL_MASTER` is found through them, and `PROJECTOR_REDIS_URL` "
        "then gives only user, password, db and TLS.",
    )
    redis_sentinel_master: str | None = Field(
        None, description="The service name of the master the Sentinels watch."
    )
    redis_sentinel_username: str | None = Field(
        None, description="The Sentinels' own user name (the data nodes' is in the URL)."
    )
    redis_sentinel_password: str | None = Field(
        None, description="The Sentinels' own password (the data nodes' is in the URL)."
    )
    redis_cluster_nodes: str | None = Field(
        None,
        description="Redis Cluster seed nodes (`host:port,...`); keys then live under the hash "
        "tag `{prefix}` (one slot: scales reads and replicas, not writes).",
    )
    redis_min_replicas: int = Field(
        0,
        ge=0,
        le=100,
        description="A position is confirmed to PostgreSQL only once this many Redis replicas "
        "acknowledged the batches up to it (batches are applied without waiting).",
    )
    redis_replica_timeout: float = Field(
        2.0,
        gt=0,
        le=300,
        description="Seconds one `WAIT` for those replicas may take before the projector "
        "reconnects and tries again.",
    )
    slot: str = Field("projector", description="Name of the logical replication slot.")
    publication: str = Field("projector", description="Name of the publication.")
    timezone: str = Field("UTC", description="IANA time zone of the bucket boundaries.")
    key_prefix: str = Field("pomo:", description="Prefix of every Redis key.")
    boards_file: str | None = Field(
        None,
        description="TOML file of board definitions (see [Boards](boards.md)); unset: the "
        "built-in pomodoro board.",
    )

    max_tx_changes: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Largest transaction (row changes) applied atomically; a larger one is "
        "applied in ordered chunks.",
    )
    batch_changes: int = Field(
        50_000,
        ge=1,
        le=1_000_000,
        description="Most row changes per Redis script, across transactions (reached only "
        "while catching up on a backlog; a fresh commit is applied at once).",
    )
    status_interval: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds between standby status updates to PostgreSQL when idle.",
    )
    heartbeat_interval: float = Field(
        2.0, gt=0, le=300, description="Seconds between liveness heartbeats in Redis."
    )
    wal_heartbeat_interval: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="Seconds between `pg_logical_emit_message` heartbeats, so that even an "
        "idle publication moves the slot; 0: off.",
    )
    wal_warning_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Retained WAL (bytes; default 1 GiB) that is logged and reported as a problem.",
    )
    lag_unhealthy_seconds: float = Field(
        300.0, gt=0, description="Lag (seconds) beyond which `projector status` exits 1."
    )

    retention_day_days: int = Field(
        35, ge=0, le=36_500, description="Days a finished day board stays in Redis."
    )
    retention_week_weeks: int = Field(
        13, ge=0, le=5_200, description="Weeks a finished week board stays in Redis."
    )
    retention_month_months: int = Field(
        13, ge=0, le=1_200, description="Months a finished month board stays in Redis."
    )
    retention_year_years: int = Field(
        5, ge=0, le=100, description="Years a finished year board stays in Redis."
    )

    rebuild_parallelism: int = Field(
        3,
        ge=1,
        le=6,
        description="Connections (sharing one snapshot) that aggregate periods in parallel "
        "during a rebuild.",
    )
    reconnect_max_delay: float = Field(
        30.0, gt=0, le=3600, description="Cap of the reconnect backoff (seconds)."
    )
    takeover_timeout: float = Field(
        5.0,
        ge=1,
        le=300,
        description="Hot standby: PostgreSQL ends the lock session of an active projector "
        "silent this long (`idle_session_timeout`, PostgreSQL 14+; a pause, a partition), "
        "and a standby takes over.",
    )
    log_level: str = Field("info", description="`debug`, `info`, `warning` or `error`.")
    log_format: str = Field("console", description="`console`, or `json` for log shippers.")

    metrics_host: str = Field(
        "127.0.0.1",
        description="Address where `projector run` serves `/metrics` and `/healthz`.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65_535,
        description="Port where `projector run` serves its Prometheus `/metrics` and "
        "`/healthz`; unset: off.",
    )
    health_stale_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="`/healthz` answers 503 once the main loop made no progress for this long "
        "(seconds).",
    )

    api_pg_dsn: str | None = Field(
        None,
        description="The read API's PostgreSQL role (SELECT only); unset: `PROJECTOR_PG_DSN`.",
    )
    api_redis_url: str | None = Field(
        None,
        description="The read API's Redis ACL user (read-only); unset: `PROJECTOR_REDIS_URL`.",
    )
    api_host: str = Field(
        "127.0.0.1", description="Where `python -m api` listens (`--host` overrides)."
    )
    api_port: int = Field(
        8000, ge=0, le=65_535, description="Port of `python -m api` (`--port` overrides)."
    )
    api_workers: int = Field(
        1, ge=1, le=64, description="Worker processes of `python -m api` (`--workers` overrides)."
    )
    api_min_lsn_wait: float = Field(
        0.5,
        ge=0,
        le=30,
        description="Seconds a `min_lsn` request waits for the projector before asking PostgreSQL.",
    )
    api_pg_concurrency: int = Field(
        8, ge=1, le=1000, description="Fallback statements at once per worker."
    )
    api_redis_down_cooldown: float = Field(
        2.0,
        ge=0,
        le=300,
        description="Seconds a failed Redis is not retried (no connect timeout per request).",
    )
    api_redis_timeout: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Bound (seconds) of one Redis call from the API; a slower Redis counts as "
        "down.",
    )
    api_pg_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Bound (seconds) of one fallback statement (the `statement_timeout` of "
        "every API session) and of the wait for a pooled PostgreSQL connection.",
    )
    api_access_log: bool = Field(
        True, description="Structured access log (JSON with `PROJECTOR_LOG_FORMAT=json`)."
    )
    api_read_from_replicas: bool = Field(
        False,
        description="The API answers from Redis replicas where their watermark satisfies the "
        "request's `min_lsn` (Sentinel or Cluster).",
    )

    api_max_connections: int = Field(
        2048,
        ge=1,
        le=1_000_000,
        description="Open connections per worker; beyond, 503 with `Retry-After` (must exceed "
        "`PROJECTOR_API_MAX_STREAMS`).",
    )
    api_max_request_line: int = Field(
        8192, ge=256, le=1 << 20, description="Longest request line (bytes); longer: 414."
    )
    api_max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1 << 22,
        description="Largest request head (request line and headers, bytes); larger: 431.",
    )
    api_max_headers: int = Field(
        100, ge=1, le=10_000, description="Most header fields of a request; more: 431."
    )
    api_header_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds for a request's head to arrive after the connection opened (or "
        "its previous response ended); later: 408.",
    )
    api_keep_alive_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds an idle keep-alive connection stays open."
    )
    api_trusted_proxies: str | None = Field(
        None,
        description="IPs or networks (comma-separated, or `*`) of reverse proxies whose "
        "`X-Forwarded-For` names the client; unset: the peer address is the client.",
    )
    api_max_streams: int = Field(
        1000, ge=0, le=1_000_000, description="Event streams open at once per worker (429)."
    )
    api_max_streams_per_client: int = Field(
        64,
        ge=0,
        le=1_000_000,
        description="Event streams per client address within a worker (429).",
    )
    api_events_fallback_interval: float = Field(
        2.0,
        ge=0.1,
        le=3600,
        description="Seconds between re-reads of an event stream that PostgreSQL answers "
        "(Redis down, an expired bucket).",
    )
    api_pg_queue: int = Field(
        32,
        ge=0,
        le=100_000,
        description="Fallback statements per worker that may wait for one of the "
        "`PROJECTOR_API_PG_CONCURRENCY` connections; more get 503 `fallback_busy` at once.",
    )
    api_fallback_rows: int = Field(
        100_000,
        ge=1000,
        le=10_000_000,
        description="Rows of a bucket's ranking that PostgreSQL answers are sliced from: one "
        "ranking per bucket, read once for every page asked while its statement runs.",
    )
    api_fallback_rankings: int = Field(
        4,
        ge=1,
        le=1000,
        description="Rankings kept per worker (about 30 MB each at 100,000 rows).",
    )
    api_fallback_ttl: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Seconds a ranking is kept after its statement while Redis is down (0: "
        "fresh answers).",
    )
    api_expired_ttl: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="Seconds a ranking of a bucket expired from Redis is kept.",
    )
    api_answer_cache_bytes: int = Field(
        64 * 2**20,
        ge=0,
        le=2**36,
        description="Bytes of rendered answers (board pages, member standings) each API "
        "worker keeps for the current state of Redis, served again until the projector "
        "writes (0: none).",
    )

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER_RE.match(value):
            raise ValueError("must be a lower-case SQL identifier: letters, digits, _ (max 63)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "*?[]\\ \t\r\n"):
            raise ValueError("must be non-empty without spaces or glob characters (*?[]\\)")
        return value

    @field_validator("boards_file")
    @classmethod
    def _boards_file(cls, value: str | None) -> str | None:
        if value:
            try:
                load_boards(value)
            except ConfigError as exc:
                raise ValueError(
                    str(exc).removeprefix(f"PROJECTOR_BOARDS_FILE {value}: ")
                ) from None
        return value or None

    @field_validator(
        "metrics_port",
        "api_pg_dsn",
        "api_redis_url",
        "redis_sentinels",
        "redis_sentinel_master",
        "redis_sentinel_username",
        "redis_sentinel_password",
        "redis_cluster_nodes",
        "api_trusted_proxies",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("pg_dsn", "api_pg_dsn")
    @classmethod
    def _pg_dsn(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("redis_url", "api_redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("redis_sentinels", "redis_cluster_nodes")
    @classmethod
    def _nodes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_nodes(value)
        return value

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxies(cls, value: str | None) -> str | None:
        if value is not None:
            for item in value.split(","):
                item = item.strip()
                if item == "*":
                    continue
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not an IP address or network (a comma-separated list, "
                        "or * for any peer, is expected)"
                    ) from None
        return value

    @model_validator(mode="after")
    def _topology(self) -> Settings:
        if self.redis_sentinels and self.redis_cluster_nodes:
            raise ValueError(
                "PROJECTOR_REDIS_SENTINELS and PROJECTOR_REDIS_CLUSTER_NODES exclude each "
                "other: Redis is either watched by Sentinels or a Cluster"
            )
        if self.api_max_streams >= self.api_max_connections:
            raise ValueError(
                f"PROJECTOR_API_MAX_STREAMS ({self.api_max_streams}) must be below "
                f"PROJECTOR_API_MAX_CONNECTIONS ({self.api_max_connections}): every stream "
                "holds a connection, and ordinary requests need some too"
            )
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError(
                "PROJECTOR_REDIS_SENTINELS and PROJECTOR_REDIS_SENTINEL_MASTER go together: "
                "the Sentinels' addresses and the name of the master they watch"
            )
        return self

    @model_validator(mode="after")
    def _window_retention(self) -> Settings:
        # A rolling window is kept from day buckets: they must outlive it.
        if self.boards_file:
            try:
                check_retention(load_boards(self.boards_file), self.retention)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error"):
            raise ValueError("must be one of debug, info, warning, error")
        return value

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        value = value.lower()
        if value not in ("console", "json"):
            raise ValueError("must be console or json")
        return value

    @cached_property
    def boards(self) -> tuple[Board, ...]:
        """The declared boards (the built-in pomodoro board without a file)."""
        return load_boards(self.boards_file)

    @property
    def keys(self) -> Keys:
        """Key names; in a Cluster under the prefix as a hash tag, so that every key lives in
        one hash slot (one node) and each script's keys share it."""
        prefix = self.key_prefix
        return Keys(cluster_prefix(prefix) if self.redis_cluster_nodes else prefix)

    @property
    def redis_topology(self) -> str:
        """``single``, ``sentinel`` or ``cluster``."""
        if self.redis_sentinels:
            return "sentinel"
        return "cluster" if self.redis_cluster_nodes else "single"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def heartbeat_ttl(self) -> float:
        """How long a heartbeat (or a standby's announcement) counts: three intervals, at
        least 5 s; ``status`` calls a projector dead, and standbys take over, after it."""
        return max(3 * self.heartbeat_interval, 5.0)

    def projection_config(
        self, boards: Iterable[Board] | None = None, partitions: Mapping[Table, str] | None = None
    ) -> ProjectionConfig:
        """The configuration fingerprint of ``boards`` (default: every declared board)."""
        return ProjectionConfig.of(
            self.timezone,
            self.retention,
            self.boards if boards is None else boards,
            partitions,
        )

    @property
    def retention(self) -> Retention:
        return Retention(
            day_days=self.retention_day_days,
            week_weeks=self.retention_week_weeks,
            month_months=self.retention_month_months,
            year_years=self.retention_year_years,
        )

    @property
    def api_dsn(self) -> str:
        """The read API's PostgreSQL DSN: ``PROJECTOR_API_PG_DSN``, else ``PROJECTOR_PG_DSN``."""
        return self.api_pg_dsn or self.pg_dsn

    @property
    def api_redis(self) -> str:
        """The read API's Redis URL: ``PROJECTOR_API_REDIS_URL``, else ``PROJECTOR_REDIS_URL``."""
        return self.api_redis_url or self.redis_url

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.pg_dsn)

    @property
    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url)

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        """Every password in the configured DSNs and URLs, to scrub from any text shown."""
        found = {
            password
            for value in (self.pg_dsn, self.api_pg_dsn, self.redis_url, self.api_redis_url)
            if value
            for password in _passwords(value)
        }
        if self.redis_sentinel_password:
            found.add(self.redis_sentinel_password)
        # Longest first, so that a password containing another is masked whole.
        return tuple(sorted(found, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` (an error message, a log value) with every configured password masked."""
        return redact_text(text, self.secrets)


_SECRET_FIELDS = ("pg_dsn", "redis_url", "api_pg_dsn", "api_redis_url", "redis_sentinel_password")


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and overrides), or raise one clear ``ConfigError``."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across settings: its message names the variables
            raise ConfigError(message) from None
        field = str(first["loc"][0])
        given = first.get("input")
        secret = field in _SECRET_FIELDS
        shown = "" if secret else f" (got {given!r})"
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {message}{shown}") from None


# key=value DSNs: password=secret or password='quoted secret'
_DSN_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# URL query strings: ?password=secret&... (libpq and redis-py both accept it)
_QUERY_PASSWORD = re.compile(r"((?:^|[?&;])password=)[^&#;]*", re.IGNORECASE)
# URLs inside free text: scheme://user:secret@host
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@", re.IGNORECASE)


def parse_nodes(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as pairs ("[::1]:26379" for IPv6); ``ValueError`` if malformed."""
    nodes = []
    for item in value.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise ValueError(f"{item!r} is not host:port (a comma-separated list is expected)")
        nodes.append((host, int(port)))
    return nodes


def cluster_prefix(prefix: str) -> str:
    """The key prefix as a Redis Cluster hash tag: ``pomo:`` -> ``{pomo:}`` (kept as given
    when it holds a tag already)."""
    opening = prefix.find("{")
    if opening >= 0 and prefix.find("}", opening + 1) > opening + 1:
        return prefix
    return "{" + prefix + "}"


def redact_dsn(dsn: str) -> str:
    """Return a PostgreSQL DSN (URL or key=value form) with any password masked."""
    if "://" in dsn:
        return redact_url(dsn)
    return _DSN_PASSWORD_KV.sub(r"\1***", dsn)


def pg_user(dsn: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The role a connection made with ``dsn`` (URL or key=value form) logs in as, chosen as
    libpq chooses it: the DSN's ``user``; without one, ``PGUSER`` (from ``environ``, default
    ``os.environ``); when that is unset or empty too, or the DSN's ``user`` is empty, the
    operating-system user. None for a DSN that does not parse (nothing could connect with it).
    A service file (``PGSERVICE``) naming a user is not read."""
    try:
        user = conninfo_to_dict(dsn).get("user")
    except ProgrammingError:
        return None
    if user is None:
        user = (os.environ if environ is None else environ).get("PGUSER")
    return str(user) if user else _os_user()


def _os_user() -> str | None:
    """The operating-system user libpq falls back on (the effective uid's name on POSIX)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        import getpass

        try:
            return getpass.getuser()
        except OSError:
            return None


def redact_url(url: str) -> str:
    """Return a URL with the password of its authority and any ``password=`` query masked."""
    parts = urlsplit(url)
    if parts.query:
        query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
    if parts.password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        url = url.replace(f"//{parts.netloc}", f"//{user}:***@{host}", 1)
    return url


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask passwords in free text: known ``secrets``, ``password=`` pairs, URL userinfo.

    Cheap for text without any (the common case: every string of every log event): each
    pattern runs only when its marker is present.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    if "://" in text:
        text = _URL_USERINFO.sub(r"\1***@", text)
    if "password" in text.lower():
        text = _DSN_PASSWORD_KV.sub(r"\1***", text)
    return text


def _passwords(dsn_or_url: str) -> list[str]:
    """The passwords a DSN or URL carries (userinfo, ``password=`` query or key=value)."""
    found: list[str] = []
    if "://" in dsn_or_url:
        parts = urlsplit(dsn_or_url)
        if parts.password:
            found.append(unquote(parts.password))
            found.append(parts.password)
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name.lower() == "password" and value:
                found.append(value)
    else:
        for match in _DSN_PASSWORD_KV.finditer(dsn_or_url):
            value = match.group(2)
            if value.startswith("'") and value.endswith("'") and len(value) >= 2:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if value:
                found.append(value)
    return found
