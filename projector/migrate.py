"""Schema migrations: plain SQL files applied in name order, each once, recorded in a table.

``migrate`` also makes the publication (``PROJECTOR_PUBLICATION``) cover exactly the
projected tables. Running it twice, or from two processes at once, is safe.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

from projector.errors import ConfigError, ConnectionLost

log = structlog.get_logger(__name__)

PROJECTED_TABLES = ("pomodoros", "users")
_VERSION_TABLE = "projector_schema_migrations"
_LOCK_KEY = 0x706F6D6F  # advisory lock taken while migrating


def migrations_dir() -> Path:
    """Where the ``NNNN_name.sql`` files are (``PROJECTOR_MIGRATIONS_DIR`` overrides)."""
    override = os.environ.get("PROJECTOR_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "migrations"


def migrate(dsn: str, publication: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations and ensure the publication; return the versions applied now."""
    directory = directory or migrations_dir()
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise ConfigError(f"no migration files in {directory}")
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to PostgreSQL: {exc}", service="postgres") from exc
    applied: list[str] = []
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(_VERSION_TABLE))
        )
        done = {
            row[0]
            for row in conn.execute(
                sql.SQL("SELECT version FROM {}").format(sql.Identifier(_VERSION_TABLE))
            )
        }
        for path in files:
            version = path.stem
            if version in done:
                continue
            with conn.transaction():
                conn.execute(sql.SQL(path.read_text()))  # type: ignore[arg-type,unused-ignore]
                conn.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(
                        sql.Identifier(_VERSION_TABLE)
                    ),
                    (version,),
                )
            log.info("migration applied", version=version)
            applied.append(version)
        ensure_publication(conn, publication)
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def ensure_publication(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> None:
    """Create the publication, or set its tables, so it publishes exactly the projected ones."""
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in PROJECTED_TABLES)
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    if exists:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(publication), tables)
        )
    else:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), tables
            )
        )
