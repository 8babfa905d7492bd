"""Board definitions: what is ranked, declared rather than coded.

A board ranks the values of one column (the member) of one table, by the number of rows
(``count``) or the sum of an integer column, in the buckets of one timestamptz column, for
the periods it keeps; display labels may come from another table. ``load_boards`` reads
them from the TOML file named by ``PROJECTOR_BOARDS_FILE`` (the built-in default is the
pomodoro board); ``projector.schema`` checks them against the live schema. Everything else
(keys, queries, the projection, the API) is derived from these definitions. A board may
count only the rows that satisfy a condition (``where``, ``projector.core.condition``),
parsed here once.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from projector.core.buckets import CALENDAR_PERIODS, WINDOW_LENGTHS, Period
from projector.core.condition import Condition, ConditionError, parse_condition
from projector.core.errors import ConfigError

_NAME = re.compile(r"\A[a-z0-9_-]{1,40}\Z")
_IDENT = re.compile(r"\A[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")
_PERIOD_NAMES = frozenset(p.value for p in Period)
_FIELDS = frozenset({"name", "table", "member", "time", "periods", "score", "labels", "where"})
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
    """One declared board; ``sum`` is the summed column, None for a count of rows; ``where``
    the condition a row must satisfy to count (None: every row counts)."""

    name: str
    table: Table
    member: str
    time: str
    periods: tuple[Period, ...]
    sum: str | None = None
    labels: Labels | None = None
    where: Condition | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column of ``table`` this board reads (so the replica identity must cover)."""
        read = (self.member, self.time) + ((self.sum,) if self.sum else ())
        if self.where is None:
            return read
        return read + tuple(c for c in self.where.columns if c not in read)

    def description(self) -> dict[str, Any]:
        """A canonical, JSON-able description (the fingerprint covers it). A condition is
        recorded in its canonical spelling, and only when there is one (so the boards
        recorded before conditions existed keep their description)."""
        described = {
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
        if self.where is not None:
            described["where"] = self.where.canonical
        return described

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
        periods=CALENDAR_PERIODS,
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
    periods = _periods(entry.get("periods", [p.value for p in CALENDAR_PERIODS]), where)
    windows = [p for p in periods if p in WINDOW_LENGTHS]
    if windows and Period.DAY not in periods:
        # A window is kept from the board's day buckets (projector.core.windows).
        raise ConfigError(
            f"{where}: field 'periods' has {windows[0].value!r}, which is kept from the board's"
            ' day buckets: add "day" to its periods'
        )
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
    condition = None
    if "where" in entry:
        try:
            condition = parse_condition(entry["where"])
        except ConditionError as exc:
            raise ConfigError(f"{where}: field 'where': {exc}") from None
    return Board(name, table, member, time_column, periods, sum_column, labels, condition)


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


# REPLICA IDENTITY as ``pg_class.relreplident`` (and pgoutput's Relation message) spells it.
IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}
# The fix of a board whose column went away or changed type.
RESTORE = "restore it, or change the board's definition"
