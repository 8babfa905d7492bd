"""Board definitions: what is ranked, declared rather than coded.

A board ranks the values of one column (the member) of one table, by the number of rows
(``count``) or the sum of an integer column, in the buckets of one timestamptz column, for
the periods it keeps; display labels may come from another table. ``load_boards`` reads
them from the TOML file named by ``PROJECTOR_BOARDS_FILE`` (the built-in default is the
pomodoro board); ``check_schema`` checks them against the live schema. Everything else
(keys, queries, the projection, the API) is derived from these definitions.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from projector.buckets import Period
from projector.errors import ConfigError

_NAME = re.compile(r"\A[a-z0-9_-]{1,40}\Z")
_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")
_PERIOD_NAMES = frozenset(p.value for p in Period)
_FIELDS = frozenset({"name", "table", "member", "time", "periods", "score", "labels"})
_LABEL_FIELDS = frozenset({"table", "key", "column"})
# Key names the projector uses beside the boards: a label table may not shadow them.
RESERVED_KEY_NAMES = frozenset(
    {"lb", "watermark", "boards", "projector", "replay", "rebuild", "events", "build"}
)


@dataclass(frozen=True, slots=True)
class Table:
    """A schema-qualified table name."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True, slots=True)
class Labels:
    """Display labels of members: ``column`` of the ``table`` row whose ``key`` is the member."""

    table: Table
    key: str
    column: str


@dataclass(frozen=True, slots=True)
class Board:
    """One declared board; ``sum`` is the summed column, None for a count of rows."""

    name: str
    table: Table
    member: str
    time: str
    periods: tuple[Period, ...]
    sum: str | None = None
    labels: Labels | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column of ``table`` this board reads (so the replica identity must cover)."""
        return (self.member, self.time) + ((self.sum,) if self.sum else ())

    def description(self) -> dict[str, Any]:
        """A canonical, JSON-able description (the fingerprint covers it)."""
        return {
            "name": self.name,
            "table": str(self.table),
            "member": self.member,
            "time": self.time,
            "periods": [p.value for p in self.periods],
            "score": {"sum": self.sum} if self.sum else "count",
            "labels": (
                {
                    "table": str(self.labels.table),
                    "key": self.labels.key,
                    "column": self.labels.column,
                }
                if self.labels
                else None
            ),
        }

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.description(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


DEFAULT_BOARDS: tuple[Board, ...] = (
    Board(
        name="pomodoros",
        table=Table("public", "pomodoros"),
        member="user_id",
        time="completed_at",
        periods=tuple(Period),
        labels=Labels(Table("public", "users"), "id", "display_name"),
    ),
)


def load_boards(path: str | None) -> tuple[Board, ...]:
    """The boards of the TOML file at ``path`` (the built-in default when None)."""
    if not path:
        return DEFAULT_BOARDS
    where = f"PROJECTOR_BOARDS_FILE {path}"
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    return parse_boards(document, where)


def parse_boards(document: Mapping[str, Any], where: str = "boards") -> tuple[Board, ...]:
    """Validate a parsed TOML document; a problem is one ``ConfigError`` naming board and field."""
    unknown = set(document) - {"boards"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    raw = document.get("boards")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: declare at least one [[boards]] table")
    boards: list[Board] = []
    for index, entry in enumerate(raw, start=1):
        boards.append(_parse_board(entry, f"{where}: board #{index}"))
    _check_together(boards, where)
    return tuple(boards)


def _parse_board(entry: Any, where: str) -> Board:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table of fields")
    name = entry.get("name")
    if isinstance(name, str) and _NAME.match(name):
        where = f"{where.rsplit(':', 1)[0]}: board {name!r}"
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")

    def field(key: str) -> Any:
        if key not in entry:
            raise ConfigError(f"{where}: field {key!r} is missing")
        return entry[key]

    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: field 'name' must match [a-z0-9_-]{{1,40}}, not {name!r}")
    if name in _PERIOD_NAMES:
        raise ConfigError(f"{where}: field 'name' may not be a period name ({name!r})")
    table = _table(field("table"), f"{where}: field 'table'")
    member = _column(field("member"), f"{where}: field 'member'")
    time_column = _column(field("time"), f"{where}: field 'time'")
    periods = _periods(entry.get("periods", [p.value for p in Period]), where)
    score = entry.get("score", "count")
    sum_column: str | None = None
    if isinstance(score, dict) and set(score) == {"sum"}:
        sum_column = _column(score["sum"], f"{where}: field 'score.sum'")
    elif score != "count":
        raise ConfigError(
            f'{where}: field \'score\' must be "count" or {{ sum = "column" }}, not {score!r}'
        )
    labels = None
    if "labels" in entry:
        labels = _labels(entry["labels"], f"{where}: field 'labels'")
    if len({member, time_column, sum_column} - {None}) < 2 + (sum_column is not None):
        raise ConfigError(f"{where}: 'member', 'time' and 'score.sum' must be different columns")
    return Board(name, table, member, time_column, periods, sum_column, labels)


def _table(value: Any, where: str) -> Table:
    if not isinstance(value, str):
        raise ConfigError(f'{where} must be a table name like "public.pomodoros"')
    schema, dot, name = value.rpartition(".")
    schema = schema if dot else "public"
    if not (_IDENT.match(schema) and _IDENT.match(name)):
        raise ConfigError(f'{where} must be a table name like "public.pomodoros", not {value!r}')
    return Table(schema, name)


def _column(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ConfigError(f"{where} must be a column name, not {value!r}")
    return value


def _periods(value: Any, where: str) -> tuple[Period, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: field 'periods' must be a non-empty list of periods")
    periods = []
    for item in value:
        if item not in _PERIOD_NAMES:
            raise ConfigError(
                f"{where}: field 'periods' has {item!r}; periods are "
                + ", ".join(p.value for p in Period)
            )
        if Period(item) in periods:
            raise ConfigError(f"{where}: field 'periods' lists {item!r} twice")
        periods.append(Period(item))
    return tuple(sorted(periods, key=list(Period).index))


def _labels(value: Any, where: str) -> Labels:
    if not isinstance(value, dict) or set(value) != _LABEL_FIELDS:
        raise ConfigError(f"{where} must have exactly the fields table, key and column")
    table = _table(value["table"], f"{where}.table")
    if label_key_name(table) in RESERVED_KEY_NAMES:
        raise ConfigError(f"{where}.table may not be named {table.name!r} (a reserved key name)")
    return Labels(
        table, _column(value["key"], f"{where}.key"), _column(value["column"], f"{where}.column")
    )


def _check_together(boards: list[Board], where: str) -> None:
    names = [b.name for b in boards]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}: board {name!r} is declared twice")
    by_table: dict[Table, Labels] = {}
    for board in boards:
        if board.labels is None:
            continue
        seen = by_table.setdefault(board.labels.table, board.labels)
        if seen != board.labels:
            raise ConfigError(
                f"{where}: board {board.name!r}: labels from {board.labels.table} must use the "
                f"same key and column as the other boards ({seen.key}, {seen.column})"
            )


def board_from_description(description: Mapping[str, Any]) -> Board:
    """The board a ``Board.description()`` describes (as recorded with the watermark)."""
    entry = {key: value for key, value in description.items() if value is not None}
    (board,) = parse_boards({"boards": [entry]}, "recorded board")
    return board


def label_key_name(table: Table) -> str:
    """The Redis key name (after the prefix) of a label table's hash: ``users`` for
    ``public.users``, ``schema.table`` elsewhere."""
    return table.name if table.schema == "public" else str(table)


def label_sources(boards: Iterable[Board]) -> tuple[Labels, ...]:
    """Each distinct label source once, in declaration order."""
    seen: dict[Table, Labels] = {}
    for board in boards:
        if board.labels is not None:
            seen.setdefault(board.labels.table, board.labels)
    return tuple(seen.values())


# -- the live schema -----------------------------------------------------------------------

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
# The fix of a board whose column went away or changed type.
RESTORE = "restore it, or change the board's definition"
_INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
_MEMBER_TYPES = _INTEGER_TYPES | {"text", "character varying", "character", "uuid", "citext"}
_IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}


@dataclass(slots=True)
class _Relation:
    """One relation of a board's table (the table, or a leaf partition of it)."""

    table: Table
    identity: str
    columns: dict[str, str] = field(default_factory=dict)  # name -> type
    covered: set[str] = field(default_factory=set)  # what the identity logs in the old row


def check_schema(conn: psycopg.Connection[tuple[object, ...]], boards: Iterable[Board]) -> None:
    """Raise one ``ConfigError`` naming board, field and fix unless the live schema fits."""
    for problem in schema_problems(conn, boards).values():
        raise ConfigError(problem)


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


def check_publication(
    conn: psycopg.Connection[tuple[object, ...]], publication: str, tables: Iterable[Table]
) -> None:
    """Raise ``ConfigError`` unless the publication publishes every table the boards read:
    the changes of a table left out would never reach Redis."""
    published = _published(conn, publication)
    for table in tables:
        if table not in published:
            raise ConfigError(
                f"publication {publication!r} does not publish {table}, which the boards read; "
                f"run `projector migrate` (or ALTER PUBLICATION {publication} ADD TABLE {table})"
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


def _identity_name(code: str | None) -> str:
    return _IDENTITY_NAMES.get(code or "", code or "unknown")


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
