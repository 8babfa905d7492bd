"""A board's qualifying condition (``where = "minutes >= 20 and status = 'done'"``).

A small, safe language, a subset of SQL: comparisons of a column with a literal, ``in``
and ``not in`` lists of literals, ``is [not] null``, ``and``, ``or``, ``not`` and
parentheses. ``parse_condition`` turns the text into an immutable tree (or one
``ConditionError`` naming the character and the token); ``type_problem`` checks it against
the column types; ``predicate`` evaluates it on a decoded pgoutput row (text values
converted by the column's type, SQL's three-valued logic: a row qualifies only when the
condition is TRUE); ``render`` writes it as SQL with ``psycopg.sql`` (identifiers and
literals quoted by psycopg, text compared under ``COLLATE "C"`` so that PostgreSQL orders
strings by code point, as Python does). Both evaluations agree by construction and by a
property test against PostgreSQL (tests/core/test_condition.py).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

from psycopg import sql

MAX_LENGTH = 2000  # characters of a condition
MAX_DEPTH = 40  # nested parentheses and nots

# Column types a condition can read, by the name ``format_type``/``regtype`` gives and by
# the type OID of pgoutput's Relation message, with the family of literals they compare to.
FAMILIES: dict[str, str] = {
    "smallint": "numeric",
    "integer": "numeric",
    "bigint": "numeric",
    "numeric": "numeric",
    "double precision": "numeric",
    "text": "text",
    "character varying": "text",
    "boolean": "boolean",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
}
TYPE_NAMES: dict[int, str] = {
    21: "smallint",
    23: "integer",
    20: "bigint",
    1700: "numeric",
    701: "double precision",
    25: "text",
    1043: "character varying",
    16: "boolean",
    1184: "timestamp with time zone",
    1114: "timestamp without time zone",
}
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")


class ConditionError(ValueError):
    """A condition that cannot be parsed, one sentence naming the position and the token."""


class UnloggedValue(LookupError):
    """A column the condition reads was not in the row the stream carried (an unchanged
    TOASTed value without a whole old row): only a snapshot can say whether it qualifies."""


# -- the tree ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A ``timestamptz '...'`` (``zoned``) or ``timestamp '...'`` literal as written, and
    its instant in microseconds since 1970-01-01 (UTC for a zoned one)."""

    text: str
    zoned: bool
    micros: int


Literal: TypeAlias = int | Decimal | str | bool | Timestamp


@dataclass(frozen=True, slots=True)
class Compare:
    column: str
    op: str  # one of = <> < <= > >=
    value: Literal


@dataclass(frozen=True, slots=True)
class InList:
    column: str
    values: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsNull:
    column: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


Node: TypeAlias = Compare | InList | IsNull | Not | And | Or


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: ``text`` as written, ``node`` its tree."""

    text: str
    node: Node

    @property
    def canonical(self) -> str:
        """The condition in one canonical spelling (recorded in the board's definition)."""
        return _format(self.node)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column it reads, in order of first mention."""
        found: dict[str, None] = {}
        _collect(self.node, found)
        return tuple(found)

    def __str__(self) -> str:
        return self.canonical


def _collect(node: Node, found: dict[str, None]) -> None:
    if isinstance(node, Compare | InList | IsNull):
        found.setdefault(node.column)
    elif isinstance(node, Not):
        _collect(node.operand, found)
    else:
        for operand in node.operands:
            _collect(operand, found)


# -- tokens --------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+(?:\.\d*)?|\.\d+))
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op><>|!=|<=|>=|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number, string, word (an identifier), keyword, quoted, op, punct, end
    text: str
    position: int  # 1-based character

    def shown(self) -> str:
        return "end of the condition" if self.kind == "end" else repr(self.text)


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            char = text[at]
            hint = ""
            if char == "'":
                hint = " (a string is never closed: write '' for a quote inside one)"
            elif char == '"':
                hint = " (a quoted name is never closed)"
            raise ConditionError(f"unexpected {char!r} at character {at + 1}{hint}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            word = match.group()
            if kind == "word" and word.lower() in _KEYWORDS:
                kind = "keyword"
            tokens.append(_Token(kind, word, at + 1))
        at = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


# -- parser --------------------------------------------------------------------------


def parse_condition(text: str) -> Condition:
    """Parse a condition; ``ConditionError`` names the first problem and where it is."""
    if not isinstance(text, str):
        raise ConditionError(f"the condition must be a string, not {text!r}")
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"the condition has {len(text)} characters; at most {MAX_LENGTH}")
    if not text.strip():
        raise ConditionError("the condition is empty")
    return Condition(text, _Parser(_tokens(text)).condition())


class _Parser:
    """Recursive descent over the tokens; precedence (loosest first): or, and, not, a
    predicate (a comparison, ``in``, ``is null``) or parentheses."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._at = 0
        self._depth = 0

    def condition(self) -> Node:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._unexpected(token, "'and', 'or' or the end of the condition")
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _next(self) -> _Token:
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token.kind == "keyword" and token.text.lower() == word:
            self._at += 1
            return True
        return False

    def _expect(self, kind: str, text: str, wanted: str) -> _Token:
        token = self._next()
        if token.kind != kind or token.text.lower() != text:
            raise self._unexpected(token, wanted)
        return token

    @staticmethod
    def _unexpected(token: _Token, wanted: str) -> ConditionError:
        where = "" if token.kind == "end" else f" at character {token.position}"
        return ConditionError(f"unexpected {token.shown()}{where}: expected {wanted}")

    def _nested(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConditionError(f"nested more than {MAX_DEPTH} deep at character {token.position}")

    def _or(self) -> Node:
        operands = [self._and()]
        while self._keyword("or"):
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self) -> Node:
        operands = [self._not()]
        while self._keyword("and"):
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _not(self) -> Node:
        token = self._peek()
        if self._keyword("not"):
            self._nested(token)
            node: Node = Not(self._not())
            self._depth -= 1
            return node
        return self._primary()

    def _primary(self) -> Node:
        token = self._peek()
        if token.kind == "punct" and token.text == "(":
            self._next()
            self._nested(token)
            node = self._or()
            self._depth -= 1
            self._expect("punct", ")", "')'")
            return node
        if token.kind in ("number", "string") or (
            token.kind == "keyword" and token.text.lower() in ("true", "false", "null")
        ):
            raise ConditionError(
                f"unexpected {token.shown()} at character {token.position}: a comparison "
                "names the column first, e.g. minutes >= 20"
            )
        column = self._column()
        token = self._next()
        if token.kind == "op":
            op = "<>" if token.text == "!=" else token.text
            return Compare(column, op, self._literal())
        if token.kind == "keyword":
            word = token.text.lower()
            if word == "is":
                negated = self._keyword("not")
                self._expect("keyword", "null", "'null'")
                return IsNull(column, negated)
            if word == "not":
                self._expect("keyword", "in", "'in'")
                return InList(column, self._list(), negated=True)
            if word == "in":
                return InList(column, self._list())
        raise self._unexpected(
            token, "a comparison (=, <>, !=, <, <=, >, >=), 'in', 'not in' or 'is'"
        )

    def _column(self) -> str:
        token = self._next()
        if token.kind == "word":
            if not _IDENT.match(token.text):
                raise ConditionError(
                    f"column name {token.text!r} at character {token.position} is longer "
                    "than 63 characters"
                )
            return token.text
        if token.kind == "quoted":
            name = token.text[1:-1].replace('""', '"')
            if not name or len(name) > 63 or "\x00" in name:
                raise ConditionError(
                    f"column name {token.text} at character {token.position} must have 1 to "
                    "63 characters"
                )
            return name
        raise self._unexpected(token, "a column name")

    def _list(self) -> tuple[Literal, ...]:
        self._expect("punct", "(", "'(' and a list of literals")
        values = [self._literal()]
        while self._peek().kind == "punct" and self._peek().text == ",":
            self._next()
            values.append(self._literal())
        self._expect("punct", ")", "',' or ')'")
        families = {_literal_family(v) for v in values}
        if len(families) > 1:
            raise ConditionError(
                f"the list ending at character {self._tokens[self._at - 1].position} mixes "
                f"{' and '.join(sorted(families))} literals"
            )
        return tuple(values)

    def _literal(self) -> Literal:
        token = self._next()
        if token.kind == "number":
            if "." in token.text:
                return Decimal(token.text)
            return int(token.text)
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "keyword" and token.text.lower() in ("true", "false"):
            return token.text.lower() == "true"
        if token.kind == "word" and token.text.lower() in ("timestamptz", "timestamp"):
            string = self._next()
            if string.kind != "string":
                raise self._unexpected(string, f"a quoted instant after {token.text}")
            return parse_timestamp_literal(
                string.text[1:-1].replace("''", "'"),
                zoned=token.text.lower() == "timestamptz",
                position=string.position,
            )
        if token.kind == "keyword" and token.text.lower() == "null":
            raise ConditionError(
                f"unexpected 'null' at character {token.position}: a comparison with null is "
                "never true; write 'is null' or 'is not null'"
            )
        raise self._unexpected(
            token,
            "a literal (a number, a 'string', true, false or timestamptz '2026-01-01 00:00+00')",
        )


# -- instants ------------------------------------------------------------------------

_LITERAL_INSTANT = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)(?:[ T](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?"
    r"(Z|[+-]\d\d(?::\d\d)?)?)?\Z"
)
# PostgreSQL's ISO output of a timestamp[tz] (DateStyle ISO), as pgoutput carries it.
_OUTPUT_INSTANT = re.compile(
    rb"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    rb"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?( BC)?\Z"
)
_DAY = 86_400_000_000


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 in the proleptic Gregorian calendar (astronomical years)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def parse_timestamp_literal(text: str, *, zoned: bool, position: int = 0) -> Timestamp:
    """A ``timestamptz '...'`` literal (with a UTC offset: PostgreSQL would read one without
    in its session's zone) or a ``timestamp '...'`` literal (without one: PostgreSQL would
    drop it silently). ISO 8601: ``2026-01-01``, ``2026-01-01 08:30[:00[.000000]]``, then
    ``Z``, ``+01`` or ``-05:30`` for timestamptz."""
    where = f" at character {position}" if position else ""
    kind = "timestamptz" if zoned else "timestamp"
    match = _LITERAL_INSTANT.match(text)
    if match is None:
        example = "2026-01-01 08:30+00" if zoned else "2026-01-01 08:30"
        raise ConditionError(f"{kind} {text!r}{where} is not an instant like '{example}'")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if zoned and offset is None:
        raise ConditionError(
            f"timestamptz {text!r}{where} needs a time and a UTC offset, e.g. "
            "'2026-01-01 00:00+00' (without one its meaning would depend on a session's zone)"
        )
    if not zoned and offset is not None:
        raise ConditionError(
            f"timestamp {text!r}{where} has a UTC offset; write timestamptz '{text}' for an "
            "instant, or leave the offset out"
        )
    try:
        datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError as exc:
        raise ConditionError(f"{kind} {text!r}{where} is not a valid instant ({exc})") from None
    seconds = 0
    if offset and offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        hours, _, minutes = offset[1:].partition(":")
        if int(hours) > 15 or int(minutes or 0) > 59:
            raise ConditionError(f"timestamptz {text!r}{where} has an offset beyond ±15:59")
        seconds = sign * (int(hours) * 3600 + int(minutes or 0) * 60)
    micros = (
        _days_from_civil(int(year), int(month), int(day)) * _DAY
        + ((int(hour or 0) * 60 + int(minute or 0)) * 60 + int(second or 0) - seconds) * 1_000_000
        + int((fraction or "").ljust(6, "0"))
    )
    return Timestamp(text, zoned, micros)


def _instant_key(value: bytes) -> tuple[int, int]:
    """An output timestamp[tz] as an ordered key: infinities around the finite instants,
    which are microseconds since 1970-01-01 (UTC when there is an offset)."""
    if value == b"infinity":
        return (1, 0)
    if value == b"-infinity":
        return (-1, 0)
    match = _OUTPUT_INSTANT.match(value)
    if match is None:
        raise ValueError(f"not an ISO timestamp: {value!r}")
    year, month, day, hour, minute, second, fraction, sign, oh, om, os_, bc = match.groups()
    astronomical = 1 - int(year) if bc else int(year)
    offset = 0
    if sign:
        offset = int(oh) * 3600 + int(om or 0) * 60 + int(os_ or 0)
        offset = -offset if sign == b"-" else offset
    micros = (
        _days_from_civil(astronomical, int(month), int(day)) * _DAY
        + ((int(hour) * 60 + int(minute)) * 60 + int(second) - offset) * 1_000_000
        + int((fraction or b"").ljust(6, b"0"))
    )
    return (0, micros)


# -- types ---------------------------------------------------------------------------


def _literal_family(value: Literal) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | Decimal):
        return "numeric"
    if isinstance(value, str):
        return "text"
    return "timestamptz" if value.zoned else "timestamp"


def _shown(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return f"{'timestamptz' if value.zoned else 'timestamp'} {_shown(value.text)}"


_WANTED = {
    "numeric": "a number",
    "text": "a 'string'",
    "boolean": "true or false",
    "timestamptz": "timestamptz '2026-01-01 00:00+00'",
    "timestamp": "timestamp '2026-01-01 00:00'",
}


def type_problem(condition: Condition, table: str, types: Mapping[str, str]) -> str | None:
    """Why ``condition`` cannot be evaluated over a table whose columns have ``types``
    (name -> type name, as ``FAMILIES`` spells them), or None."""
    for column in condition.columns:
        if column not in types:
            return f"{table} has no column {column!r}"
        if types[column] not in FAMILIES:
            return (
                f"column {table}.{column} is {types[column]}, which a condition cannot read "
                "(integer, numeric, double precision, text, varchar, boolean, timestamptz or "
                "timestamp columns only)"
            )
    return _literal_problem(condition.node, table, types)


def _literal_problem(node: Node, table: str, types: Mapping[str, str]) -> str | None:
    if isinstance(node, Compare | InList):
        family = FAMILIES[types[node.column]]
        values = (node.value,) if isinstance(node, Compare) else node.values
        for value in values:
            if _literal_family(value) != family:
                return (
                    f"column {table}.{node.column} is {types[node.column]}, compared with "
                    f"{_shown(value)}; compare it with {_WANTED[family]}"
                )
            if types[node.column] == "double precision" and not _fits_float(value):
                # PostgreSQL would fail every query casting it to float8.
                return (
                    f"column {table}.{node.column} is double precision, compared with "
                    f"{_shown(value)}, which is out of its range"
                )
        return None
    if isinstance(node, IsNull):
        return None
    for operand in (node.operand,) if isinstance(node, Not) else node.operands:
        problem = _literal_problem(operand, table, types)
        if problem is not None:
            return problem
    return None


def _fits_float(value: Literal) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:
        return False


# -- evaluation ----------------------------------------------------------------------
#
# A condition compiles to two two-valued tests, "is TRUE" and "is FALSE"; SQL's unknown is
# neither. not swaps them; "a and b" is TRUE when both are, FALSE when either is; "a or b"
# the other way round; a comparison with NULL is neither. A row qualifies when the
# condition is TRUE, and the stream needs no more: no value is ever built for unknown.

Row: TypeAlias = Sequence[object]
# A test on (row, old row or None): the row's value in a column, the old row's when the
# row lacks it (an update's unchanged TOASTed value).
Test: TypeAlias = Callable[[Row, Row | None], bool]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NAN = (1, 0)  # numeric and double precision NaN: equal to itself, above every number


def _decoder(type_name: str) -> Callable[[bytes], object] | None:
    """Text output of a column of ``type_name`` to a key that orders as PostgreSQL does
    (None: the bytes themselves, for text: UTF-8 orders and compares as code points do)."""
    if type_name in ("smallint", "integer", "bigint"):
        return int
    if type_name == "numeric":
        return lambda v: _NAN if v == b"NaN" else (0, Decimal(v.decode()))
    if type_name == "double precision":
        return lambda v: _NAN if v == b"NaN" else (0, float(v))
    if type_name in ("text", "character varying"):
        return None
    if type_name == "boolean":
        return lambda v: v == b"t"
    return _instant_key  # timestamp with or without time zone


def _literal_key(value: Literal, type_name: str) -> object:
    """A literal as a key comparable with ``_decoder(type_name)``'s."""
    if type_name == "numeric":
        return (0, value)
    if type_name == "double precision":
        assert isinstance(value, int | Decimal)
        return (0, float(value))  # PostgreSQL casts a numeric literal to float8 too
    if isinstance(value, Timestamp):
        return (0, value.micros)
    if isinstance(value, str):
        return value.encode()
    return value


def predicate(condition: Condition, columns: Mapping[str, tuple[int, str]]) -> Test:
    """``condition`` over rows whose column ``name`` is at ``columns[name]`` = (position,
    type name), as raw text values (bytes, None for NULL). The predicate takes the row and
    the old row (None but for an update's new row), whose value stands in for one the row
    lacks (an unchanged TOASTed value); it is True only when the condition is TRUE, and
    raises ``UnloggedValue`` when neither row holds a value it reads. ``type_problem`` must
    have passed."""
    return _compile(condition.node, columns, True)


def evaluate(
    condition: Condition, row: Mapping[str, bytes | None], types: Mapping[str, str]
) -> bool | None:
    """The condition's SQL truth value (True, False or None for unknown) on one row given as
    column name -> text value (None for NULL), columns typed by ``types``."""
    names = list(row)
    columns = {name: (index, types[name]) for index, name in enumerate(names)}
    values = [row[n] for n in names]
    if _compile(condition.node, columns, True)(values, None):
        return True
    if _compile(condition.node, columns, False)(values, None):
        return False
    return None


def _compile(node: Node, columns: Mapping[str, tuple[int, str]], truth: bool) -> Test:
    """The test that ``node`` is TRUE (``truth``) or that it is FALSE."""
    if isinstance(node, Not):
        return _compile(node.operand, columns, not truth)
    if isinstance(node, And | Or):
        parts = [_compile(operand, columns, truth) for operand in node.operands]
        # TRUE of an and, FALSE of an or: every part; else any part.
        return _every(parts) if isinstance(node, And) == truth else _any(parts)
    index, type_name = columns[node.column]
    raw = _raw(node.column, index)
    if isinstance(node, IsNull):
        wanted_null = node.negated != truth

        def is_null(row: Row, old: Row | None) -> bool:
            return (raw(row, old) is None) == wanted_null

        return is_null
    decode = _decoder(type_name)
    if isinstance(node, InList):
        keys = frozenset(_literal_key(v, type_name) for v in node.values)
        inside = node.negated != truth

        def in_list(row: Row, old: Row | None) -> bool:
            value = raw(row, old)
            if value is None:
                return False
            return ((value if decode is None else decode(value)) in keys) == inside

        return in_list
    compare, literal = _OPS[node.op], _literal_key(node.value, type_name)
    index_ = index

    def comparison(row: Row, old: Row | None) -> bool:
        value = row[index_]
        if type(value) is not bytes:
            value = raw(row, old)
            if value is None:
                return False
        return compare(value if decode is None else decode(value), literal) == truth

    return comparison


def _every(parts: list[Test]) -> Test:
    if len(parts) == 2:
        first, second = parts

        def both(row: Row, old: Row | None) -> bool:
            return first(row, old) and second(row, old)

        return both

    def every(row: Row, old: Row | None) -> bool:
        return all(part(row, old) for part in parts)

    return every


def _any(parts: list[Test]) -> Test:
    if len(parts) == 2:
        first, second = parts

        def either(row: Row, old: Row | None) -> bool:
            return first(row, old) or second(row, old)

        return either

    def any_(row: Row, old: Row | None) -> bool:
        return any(part(row, old) for part in parts)

    return any_


def _raw(column: str, index: int) -> Callable[[Row, Row | None], bytes | None]:
    """The column's raw value (None for NULL), from the old row when the row lacks it."""

    def raw(row: Row, old: Row | None) -> bytes | None:
        value = row[index]
        if value is None or type(value) is bytes:
            return value
        # an unchanged TOASTed value: the old row has it
        value = old[index] if old is not None else value
        if value is None or type(value) is bytes:
            return value
        raise UnloggedValue(column)

    return raw


# -- SQL -----------------------------------------------------------------------------


def render(condition: Condition) -> sql.Composable:
    """The condition as an SQL boolean expression, every part parenthesised. A string
    literal is compared under ``COLLATE "C"`` (code point order, as Python compares str);
    an instant is cast with its type, so it never depends on a session's zone."""
    return _sql(condition.node)


def _sql(node: Node) -> sql.Composable:
    if isinstance(node, And | Or):
        joiner = sql.SQL(" AND " if isinstance(node, And) else " OR ")
        return sql.SQL("({})").format(joiner.join(_sql(operand) for operand in node.operands))
    if isinstance(node, Not):
        return sql.SQL("(NOT {})").format(_sql(node.operand))
    column: sql.Composable = sql.Identifier(node.column)
    if isinstance(node, IsNull):
        return sql.SQL("({} IS NOT NULL)" if node.negated else "({} IS NULL)").format(column)
    if isinstance(node, InList):
        if isinstance(node.values[0], str):
            column = sql.SQL('{} COLLATE "C"').format(column)
        return sql.SQL("({} NOT IN ({}))" if node.negated else "({} IN ({}))").format(
            column, sql.SQL(", ").join(_sql_literal(v) for v in node.values)
        )
    if isinstance(node.value, str):
        column = sql.SQL('{} COLLATE "C"').format(column)
    return sql.SQL("({} {} {})").format(column, sql.SQL(node.op), _sql_literal(node.value))


def _sql_literal(value: Literal) -> sql.Composable:
    if isinstance(value, Timestamp):
        cast = "timestamptz" if value.zoned else "timestamp"
        return sql.SQL("{}::{}").format(sql.Literal(value.text), sql.SQL(cast))
    if isinstance(value, str) and "%" in value:
        # A '%' in the query text would be taken for a placeholder by psycopg when the query
        # runs with parameters (and must not be doubled when it runs without): spell it out.
        parts = sql.SQL(" || chr(37) || ").join(sql.Literal(p) for p in value.split("%"))
        return sql.SQL("({})").format(parts)
    return sql.Literal(value)


# -- canonical text ------------------------------------------------------------------


def _format(node: Node) -> str:
    if isinstance(node, And | Or):
        word = " and " if isinstance(node, And) else " or "
        return word.join(
            f"({_format(o)})" if isinstance(o, And | Or) else _format(o) for o in node.operands
        )
    if isinstance(node, Not):
        inner = _format(node.operand)
        return f"not ({inner})" if isinstance(node.operand, And | Or) else f"not {inner}"
    column = _name(node.column)
    if isinstance(node, IsNull):
        return f"{column} is {'not ' if node.negated else ''}null"
    if isinstance(node, InList):
        values = ", ".join(_shown(v) for v in node.values)
        return f"{column} {'not in' if node.negated else 'in'} ({values})"
    return f"{column} {node.op} {_shown(node.value)}"


def _name(column: str) -> str:
    if _IDENT.match(column) and column.lower() not in _KEYWORDS:
        return column
    return '"' + column.replace('"', '""') + '"'
