"""Schema migrations: plain SQL files applied in name order, each once, recorded in a table.

``migrate`` also makes the publication (``PROJECTOR_PUBLICATION``) cover exactly the
tables the boards read (their own tables and their label tables), publishing partitioned
tables through their root. Running it twice, or from two processes at once, is safe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

from projector.core.boards import DEFAULT_BOARDS, Board, Table
from projector.core.errors import ConfigError, ConnectionLost
from projector.core.projection import identity_columns

log = structlog.get_logger(__name__)

_VERSION_TABLE = "projector_schema_migrations"
_LOCK_KEY = 0x706F6D6F  # advisory lock taken while migrating


def migrations_dir() -> Path:
    """Where the ``NNNN_name.sql`` files are (``PROJECTOR_MIGRATIONS_DIR`` overrides)."""
    override = os.environ.get("PROJECTOR_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "migrations"


def migrate(
    dsn: str,
    publication: str,
    boards: Iterable[Board] = DEFAULT_BOARDS,
    directory: Path | None = None,
) -> list[str]:
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
        ensure_publication(conn, publication, list(identity_columns(boards)))
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def ensure_publication(
    conn: psycopg.Connection[tuple[object, ...]], publication: str, tables: Sequence[Table]
) -> None:
    """Create the publication, or set its tables, so it publishes ``tables`` (those that
    exist: a board over a table still to be created is reported, and refused by ``run``)."""
    present = [t for t in tables if _exists(conn, t)]
    for table in tables:
        if table not in present:
            log.warning(
                "a table the boards read does not exist yet; create it, then migrate again",
                table=str(table),
            )
    if not present:
        raise ConfigError("none of the tables the boards read exists")
    names = sql.SQL(", ").join(t.identifier() for t in present)
    exists = conn.execute(
        "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    # A partitioned table's changes are published as the table's own (not as those of its
    # partitions, which the boards do not name, and which come and go).
    if exists:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(publication), names)
        )
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(
                sql.Identifier(publication)
            )
        )
    else:
        conn.execute(
            sql.SQL(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)"
            ).format(sql.Identifier(publication), names)
        )


def _exists(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
            (table.schema, table.name),
        ).fetchone()
        is not None
    )
