"""The live schema's fitness for projection, checked against PostgreSQL's catalog.

The projection reads old values of some columns from UPDATE and DELETE; PostgreSQL logs
them only when the table's replica identity covers them. A table that does not is refused
with the ``ALTER TABLE`` that fixes it.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import sql

from projector.errors import ConfigError

_IDENTITY_SQL = """
SELECT c.relreplident::text,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               AND (c.relreplident = 'f'
                    OR a.attnum = ANY (SELECT unnest(i.indkey) FROM pg_index i
                                       WHERE i.indrelid = c.oid
                                         AND CASE c.relreplident
                                               WHEN 'd' THEN i.indisprimary
                                               WHEN 'i' THEN i.indisreplident
                                               ELSE false END)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
_IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}


def check_replica_identity(
    conn: psycopg.Connection[tuple[object, ...]],
    required: Mapping[tuple[str, str], tuple[str, ...]],
) -> None:
    """Raise ``ConfigError`` unless each table's replica identity covers its columns."""
    for (schema, table), columns in required.items():
        row = conn.execute(_IDENTITY_SQL, (schema, table)).fetchone()
        name = f"{schema}.{table}"
        if row is None:
            raise ConfigError(f"table {name} does not exist; run `projector migrate`")
        identity, covered = str(row[0]), set(row[1])  # type: ignore[call-overload]
        missing = [column for column in columns if column not in covered]
        if missing:
            fix = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                sql.Identifier(schema, table)
            )
            raise ConfigError(
                f"table {name} has REPLICA IDENTITY {_IDENTITY_NAMES.get(identity, identity)}, "
                f"which does not log the old {', '.join(missing)} of deleted or moved rows; "
                f"fix it with: {fix.as_string(conn)} (or USING INDEX on a unique index of "
                f"NOT NULL columns that include {', '.join(columns)})"
            )
