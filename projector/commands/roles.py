"""Least-privilege PostgreSQL roles and Redis ACL users for ``projector run`` and the read API.

The projector's role logs in with REPLICATION (create, stream from and drop its slot, verify's
temporary slot) and may SELECT the tables the boards read (their own and their label tables);
everything else it runs (slot and WAL positions, ``pg_logical_emit_message``, advisory locks,
``pg_control_system``) is open to every role. The API's role may only SELECT the same tables.
Migrations keep using an owner. In Redis the projector's user may run the commands it uses
on keys and channels under the prefix, and loads the read API's functions
(``read_functions``); the API's user may only read those keys (``%R~``), call those
functions read-only (``FCALL_RO``; never ``EVAL_RO`` of code of its own) and subscribe.
Statements are idempotent; passwords are sent hashed, never printed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import redis

from projector.core.boards import DEFAULT_BOARDS, Board, Table
from projector.core.errors import ConfigError
from projector.core.projection import identity_columns

DEFAULT_RUN_ROLE = "projector_run"
DEFAULT_API_ROLE = "projector_api"
RUN_PASSWORD_ENV = "PROJECTOR_RUN_PASSWORD"
API_PASSWORD_ENV = "PROJECTOR_API_PASSWORD"
_NAME = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")

# Every command `projector run`, `status`, `verify`, `replay` and `clear` send, and every
# command their Lua scripts call (Redis checks those against the user too). A command added
# to the projector must be added here; the least-privilege tests run each command as this user.
REDIS_PROJECTOR_COMMANDS = (
    # connection
    "ping", "select",
    # its own scripts, transactions, and the read API's functions (loaded by the projector;
    # FCALL_RO too, for an API that shares this user when PROJECTOR_API_REDIS_URL is unset)
    "eval", "evalsha", "script|load", "script|exists",
    "multi", "exec", "discard",
    "function|load", "fcall_ro",
    # keys under the prefix
    "get", "set", "del", "unlink", "exists", "rename", "type",
    "expire", "pexpire", "expireat", "persist", "ttl", "pttl", "scan",
    "hget", "hmget", "hgetall", "hset", "hdel", "hlen",
    "zadd", "zrem", "zcard", "zcount", "zrange", "zrank", "zscore", "zmscore",
    "zremrangebyscore", "zunionstore",
    # the watermark channel, server facts (version, eviction policy, clock), replicas,
    # and who serves the projection's hash slot in a Cluster
    "publish", "info", "time", "wait", "cluster|slots",
)  # fmt: skip
# The read API: the projector's read-only functions over the boards (FCALL_RO only: no
# EVAL_RO, which runs any code, and no FUNCTION LOAD), the watermark, and its channel.
REDIS_API_COMMANDS = (
    "ping", "select",
    "fcall_ro",
    "get", "exists", "type", "ttl", "hget", "hmget", "hgetall",
    "zcard", "zcount", "zrange", "zrank", "zscore", "zmscore",
    "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe",
    "info",
    # a Cluster: who serves the slot, and reads from its replicas
    "cluster|slots", "readonly",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Grantee:
    """One role (PostgreSQL) and user (Redis) of the same name."""

    name: str
    password: str | None
    replication: bool


def grantee(name: str, password: str | None, *, replication: bool, option: str) -> Grantee:
    """A validated ``Grantee``; ``option`` names the flag that gave ``name``."""
    if not _NAME.match(name):
        raise ConfigError(
            f"{option}: must be a lower-case SQL identifier: letters, digits, _ (got {name!r})"
        )
    return Grantee(name, password or None, replication)


# --- PostgreSQL -------------------------------------------------------------------------------


def source_tables(boards: Sequence[Board] = DEFAULT_BOARDS) -> list[Table]:
    """The tables the boards read: each board's table and its label table (the publication's)."""
    return list(identity_columns(boards))


def postgres_statements(
    database: str,
    roles: Sequence[Grantee],
    *,
    tables: Sequence[Table],
    password_hashes: dict[str, str] | None = None,
) -> list[str]:
    """The SQL that creates or updates each role; ``password_hashes`` (role -> SCRAM verifier)
    adds a PASSWORD clause. Safe to run again."""
    statements = []
    table_list = ", ".join(f"{_ident(t.schema)}.{_ident(t.name)}" for t in tables)
    schemas = ", ".join(_ident(schema) for schema in dict.fromkeys(t.schema for t in tables))
    for role in roles:
        name = _ident(role.name)
        statements.append(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = "
            f"{_literal(role.name)}) THEN CREATE ROLE {name}; END IF; END $$"
        )
        attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS INHERIT"
        attributes += " REPLICATION" if role.replication else " NOREPLICATION"
        verifier = (password_hashes or {}).get(role.name)
        if verifier is not None:
            attributes += f" PASSWORD {_literal(verifier)}"
        statements.append(f"ALTER ROLE {name} WITH {attributes}")
        statements.append(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {name}")
        statements.append(f"GRANT USAGE ON SCHEMA {schemas} TO {name}")
        statements.append(f"GRANT SELECT ON TABLE {table_list} TO {name}")
    return statements


def postgres_script(database: str, roles: Sequence[Grantee], tables: Sequence[Table]) -> str:
    """The statements as a script for psql (passwords left out: see ``apply_postgres``)."""
    lines = [
        f"-- Least-privilege roles for database {database!r}; run as a superuser (REPLICATION",
        "-- needs one). Set passwords with \\password ROLE in psql, or run `projector roles",
        f"-- --apply` with {RUN_PASSWORD_ENV} / {API_PASSWORD_ENV} set.",
    ]
    lines += [f"{statement};" for statement in postgres_statements(database, roles, tables=tables)]
    return "\n".join(lines)


def apply_postgres(dsn: str, roles: Sequence[Grantee], tables: Sequence[Table]) -> str:
    """Create or update the roles through ``dsn`` (a superuser); return the database name.

    Passwords are hashed by libpq (SCRAM) before they leave this process, as psql's
    ``\\password`` does: the server log never sees them.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        database = str(row[0])
        hashes = {
            role.name: conn.pgconn.encrypt_password(
                role.password.encode(), role.name.encode(), b"scram-sha-256"
            ).decode()
            for role in roles
            if role.password is not None
        }
        with conn.transaction():
            statements = postgres_statements(database, roles, tables=tables, password_hashes=hashes)
            for statement in statements:
                conn.execute(statement.encode())
    return database


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- Redis ------------------------------------------------------------------------------------


def redis_rules(user: Grantee, prefix: str, *, api: bool) -> list[str]:
    """The ``ACL SETUSER`` arguments after the user name: a reset, then exactly what it may do."""
    pattern = _glob_escape(prefix) + "*"
    commands = REDIS_API_COMMANDS if api else REDIS_PROJECTOR_COMMANDS
    password = (
        f"#{hashlib.sha256(user.password.encode()).hexdigest()}" if user.password else "nopass"
    )
    keys = f"%R~{pattern}" if api else f"~{pattern}"
    return [
        "reset",
        "on",
        password,
        keys,
        f"&{pattern}",
        "-@all",
        *(f"+{command}" for command in commands),
    ]


def redis_script(prefix: str, run: Grantee, api: Grantee) -> str:
    """``ACL SETUSER`` lines for redis-cli (passwords as SHA-256 hashes)."""
    lines = [
        f"# Redis ACL users for keys under {prefix!r}; run with redis-cli as an admin user.",
    ]
    for user, is_api in ((run, False), (api, True)):
        if user.password is None:
            lines.append(f"# {user.name}: no password given; anyone may log in as this user")
        lines.append(
            " ".join(["ACL", "SETUSER", user.name, *redis_rules(user, prefix, api=is_api)])
        )
    return "\n".join(lines)


def apply_redis(url: str, prefix: str, run: Grantee, api: Grantee) -> None:
    """Create or reset both users through ``url`` (an admin user)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        for user, is_api in ((run, False), (api, True)):
            client.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", user.name, *redis_rules(user, prefix, api=is_api)
            )
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def redis_aclfile(prefix: str, run: Grantee, api: Grantee) -> str:
    """The two users as lines of a Redis ACL file (``aclfile``), passwords as hashes."""
    lines = []
    for user, is_api in ((run, False), (api, True)):
        rules = [rule for rule in redis_rules(user, prefix, api=is_api) if rule != "reset"]
        lines.append(" ".join(["user", user.name, *rules]))
    return "\n".join(lines)
