"""The declared boards against the live schema: what does not fit, and partitions.

``schema_problems`` names each board the catalog does not fit (columns, types, the columns
and literals of its condition, replica identity on the table and every partition, the CHECK
a sum needs, label tables, the publication), each with its fix; ``partition_states``
describes each partitioned table's leaf partitions, so that maintenance no row change
reports can be noticed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from projector.core.boards import IDENTITY_NAMES, RESTORE, Board, Table
from projector.core.condition import type_problem

# One statement (one snapshot): the replica identities and the columns they cover cannot
# disagree with each other even while an ALTER TABLE runs. A partitioned table is checked
# with every leaf partition: PostgreSQL logs a changed row with its leaf's identity, and
# publishes it through the root (whose identity decides the flags the stream carries).
_COLUMNS_SQL = """
WITH root AS (
    SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
), rels AS (
    SELECT oid AS relid, true AS is_root FROM root
    UNION ALL
    SELECT t.relid, false FROM root, pg_partition_tree(root.oid) t
    WHERE root.relkind = 'p' AND t.isleaf
)
SELECT rels.is_root, n.nspname::text, c.relname::text, c.relreplident::text,
       a.attname::text, a.atttypid::regtype::text,
       c.relreplident = 'f' OR a.attnum = ANY (
           SELECT unnest(i.indkey) FROM pg_index i
           WHERE i.indrelid = c.oid
             AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                     WHEN 'i' THEN i.indisreplident ELSE false END)
FROM rels JOIN pg_class c ON c.oid = rels.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY rels.is_root DESC, 2, 3
"""
_CHECKS_SQL = """
SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND k.contype = 'c' AND k.convalidated
"""
# The leaf partitions of each partitioned table, with their storage: attaching, detaching,
# dropping or truncating a partition changes it, and none of these is a row change in the
# stream. Read with SQL (MVCC), so inside a snapshot it is the snapshot's catalog.
_PARTITIONS_SQL = """
SELECT n.nspname::text, c.relname::text,
       coalesce((SELECT string_agg(t.relid::oid::text || '/' || l.relfilenode::text, ','
                                   ORDER BY t.relid::oid)
                 FROM pg_partition_tree(c.oid) t JOIN pg_class l ON l.oid = t.relid
                 WHERE t.isleaf), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'p' AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""
_INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
_MEMBER_TYPES = _INTEGER_TYPES | {"text", "character varying", "character", "uuid", "citext"}


@dataclass(slots=True)
class _Relation:
    """One relation of a board's table (the table, or a leaf partition of it)."""

    table: Table
    identity: str
    columns: dict[str, str] = field(default_factory=dict)  # name -> type
    covered: set[str] = field(default_factory=set)  # what the identity logs in the old row


def schema_problems(
    conn: psycopg.Connection[tuple[object, ...]],
    boards: Iterable[Board],
    publication: str | None = None,
) -> dict[str, str]:
    """Per board that the live schema does not fit, one line naming the field and the fix
    (boards that fit are absent). With ``publication``, a table it does not publish is a
    problem too."""
    boards = tuple(boards)
    published = _published(conn, publication) if publication else None
    tables: dict[Table, list[_Relation]] = {}
    problems: dict[str, str] = {}
    for board in boards:
        for table in (board.table,) + ((board.labels.table,) if board.labels else ()):
            if table not in tables:
                tables[table] = _relations(conn, table)
        problem = _board_problem(conn, board, tables)
        if problem is None and published is not None:
            for table in (board.table,) + ((board.labels.table,) if board.labels else ()):
                if table not in published:
                    problem = (
                        f"publication {publication!r} does not publish {table}, which the "
                        f"board reads; run `projector migrate` (or ALTER PUBLICATION "
                        f"{publication} ADD TABLE {table})"
                    )
                    break
        if problem is not None:
            problems[board.name] = f"board {board.name!r}: {problem}"
    return problems


def _board_problem(
    conn: psycopg.Connection[tuple[object, ...]],
    board: Board,
    tables: Mapping[Table, list[_Relation]],
) -> str | None:
    relations = tables[board.table]
    if not relations:
        return f"table {board.table} does not exist"
    columns = relations[0].columns
    for field_name, column, allowed, wanted in (
        ("member", board.member, _MEMBER_TYPES, "text or an integer"),
        ("time", board.time, frozenset({"timestamp with time zone"}), "timestamptz"),
        ("score.sum", board.sum, _INTEGER_TYPES, "an integer"),
    ):
        if column is None:
            continue
        if column not in columns:
            return f"field {field_name!r}: {board.table} has no column {column!r}; {RESTORE}"
        if columns[column] not in allowed:
            return (
                f"field {field_name!r}: column {board.table}.{column} is "
                f"{columns[column]}, it must be {wanted}; {RESTORE}"
            )
    if board.where is not None:
        problem = type_problem(board.where, str(board.table), columns)
        if problem is not None:
            return f"field 'where': {problem}; {RESTORE}"
    problem = _identity_problem(conn, relations, board.columns, "of deleted or changed rows")
    if problem is not None:
        return problem
    if board.sum is not None and not _non_negative(conn, board.table, board.sum):
        check = sql.SQL("ALTER TABLE {} ADD CHECK ({} >= 0)").format(
            board.table.identifier(), sql.Identifier(board.sum)
        )
        return (
            f"field 'score.sum': {board.table}.{board.sum} may be negative, which "
            f"would mis-rank members; add the constraint: {check.as_string(conn)}"
        )
    if board.labels is not None:
        labels = board.labels
        label_relations = tables[labels.table]
        if not label_relations:
            return f"field 'labels': table {labels.table} does not exist"
        for name in (labels.key, labels.column):
            if name not in label_relations[0].columns:
                return f"field 'labels': {labels.table} has no column {name!r}"
        problem = _identity_problem(conn, label_relations, (labels.key,), "of deleted rows")
        if problem is not None:
            return f"field 'labels': {problem}"
    return None


def _identity_problem(
    conn: psycopg.Connection[tuple[object, ...]],
    relations: list[_Relation],
    needed: Iterable[str],
    rows: str,
) -> str | None:
    """Which relations' replica identity does not log ``needed`` columns, and the fix."""
    lacking = [r for r in relations if any(c not in r.covered for c in needed)]
    if not lacking:
        return None
    first = lacking[0]
    missing = [c for c in needed if c not in first.covered]
    what = "table" if first is relations[0] else f"partition of {relations[0].table},"
    fixes = "; ".join(
        sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(r.table.identifier()).as_string(conn)
        for r in lacking
    )
    return (
        f"{what} {first.table} has REPLICA IDENTITY {_identity_name(first.identity)}, which "
        f"does not log the old {', '.join(missing)} {rows}; fix it with: {fixes}"
    )


def _published(conn: psycopg.Connection[tuple[object, ...]], publication: str) -> set[Table]:
    """The tables the publication publishes as themselves (a partitioned table only when it
    publishes through the partition root: else its changes arrive as its partitions')."""
    return {
        Table(str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables"
            " WHERE pubname = %s",
            (publication,),
        )
    }


def partition_states(
    conn: psycopg.Connection[tuple[object, ...]], tables: Iterable[Table]
) -> dict[Table, str]:
    """For each partitioned table among ``tables``, its leaf partitions and their storage as
    one string: it changes with every attach, detach, drop or truncate of a partition (and
    with a rewrite of one: VACUUM FULL, CLUSTER). Plain tables are absent."""
    tables = list(dict.fromkeys(tables))
    if not tables:
        return {}
    rows = conn.execute(
        _PARTITIONS_SQL, ([t.schema for t in tables], [t.name for t in tables])
    ).fetchall()
    return {Table(str(r[0]), str(r[1])): str(r[2]) for r in rows}


# The storage of a table (its own, or its partitions'): a TRUNCATE or a rewrite (ALTER TABLE
# ... TYPE, ADD COLUMN with a volatile default, VACUUM FULL, CLUSTER) gives it a new
# relfilenode. Plain SQL over the catalog: inside an imported snapshot it is that snapshot's.
_STORAGE_SQL = """
WITH RECURSIVE tree(relid) AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
    UNION ALL
    SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.relid
)
SELECT coalesce(string_agg(c.oid::text || '/' || c.relfilenode::text, ',' ORDER BY c.oid), '')
FROM tree JOIN pg_class c ON c.oid = tree.relid WHERE c.relkind = 'r'
"""


def storage_states(
    conn: psycopg.Connection[tuple[object, ...]], tables: Iterable[Table]
) -> dict[Table, str]:
    """Each table's storage as ``conn``'s snapshot sees it (see ``_STORAGE_SQL``): a build
    compares what its snapshot saw with what is there once it has read the tables, since
    PostgreSQL shows a table rewritten after a snapshot as empty to that snapshot."""
    states = {}
    for table in dict.fromkeys(tables):
        row = conn.execute(_STORAGE_SQL, (table.schema, table.name)).fetchone()
        states[table] = str(row[0]) if row else ""
    return states


def _identity_name(code: str | None) -> str:
    return IDENTITY_NAMES.get(code or "", code or "unknown")


def _relations(conn: psycopg.Connection[tuple[object, ...]], table: Table) -> list[_Relation]:
    """The table (first) and its leaf partitions, each with its columns and what its replica
    identity logs ([] when there is no such table)."""
    relations: dict[Table, _Relation] = {}
    for _root, schema, name, identity, column, type_name, covered in conn.execute(
        _COLUMNS_SQL, (table.schema, table.name)
    ):
        key = Table(str(schema), str(name))
        relation = relations.get(key)
        if relation is None:
            relation = relations[key] = _Relation(key, str(identity))
        relation.columns[str(column)] = str(type_name)
        if covered:
            relation.covered.add(str(column))
    return list(relations.values())


def _non_negative(conn: psycopg.Connection[tuple[object, ...]], table: Table, column: str) -> bool:
    """True when a validated CHECK constraint says ``column >= 0`` (or ``> 0``)."""
    quoted = re.escape(column) + "|" + re.escape(f'"{column}"')
    # A type change in between leaves casts: CHECK (((minutes)::numeric >= (0)::numeric)).
    value = rf"(?:{quoted}|\((?:{quoted})\)::[a-z ]+)"
    zero = r"(?:0|\(0\)::[a-z ]+)"
    pattern = re.compile(rf"CHECK \(\(?{value} (>=|>) {zero}\)?\)")
    return any(
        pattern.fullmatch(str(r[0])) for r in conn.execute(_CHECKS_SQL, (table.schema, table.name))
    )
