"""Board conditions: parsing (and its error messages), three-valued evaluation on pgoutput
text values, type checks, canonical text and the SQL rendering."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import psycopg.adapt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.abc import Buffer

from projector.core.condition import (
    And,
    Compare,
    ConditionError,
    InList,
    IsNull,
    Not,
    Or,
    UnloggedValue,
    evaluate,
    parse_condition,
    predicate,
    render,
    type_problem,
)

TYPES = {
    "minutes": "integer",
    "score": "numeric",
    "ratio": "double precision",
    "status": "text",
    "done": "boolean",
    "at": "timestamp with time zone",
    "local": "timestamp without time zone",
    "id": "bigint",
}


def truth(text: str, **row: bytes | None) -> bool | None:
    return evaluate(parse_condition(text), row, TYPES)


def test_the_grammar_builds_the_tree_with_sql_precedence() -> None:
    """or binds loosest, then and, then not; comparisons, in lists and is null are leaves."""
    node = parse_condition(
        "minutes >= 20 and status = 'it''s' or not done = true and id not in (1, 2)"
    ).node
    assert node == Or(
        (
            And((Compare("minutes", ">=", 20), Compare("status", "=", "it's"))),
            And((Not(Compare("done", "=", True)), InList("id", (1, 2), negated=True))),
        )
    )
    assert parse_condition("(a = 1 or b = 2) and c is not null").node == And(
        (Or((Compare("a", "=", 1), Compare("b", "=", 2))), IsNull("c", negated=True))
    )
    assert parse_condition("x != -1.50").node == Compare("x", "<>", Decimal("-1.50"))
    assert parse_condition('"select" IS NULL AND "a""b" In (\'x\')').node == And(
        (IsNull("select"), InList('a"b', ("x",)))
    )
    assert parse_condition("at < timestamptz '2026-01-01 00:00+01'").columns == ("at",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the condition is empty"),
        ("minutes >=", "unexpected end of the condition: expected a literal"),
        ("minutes 20", "unexpected '20' at character 9: expected a comparison (=, <>"),
        ("20 <= minutes", "unexpected '20' at character 1: a comparison names the column first"),
        ("minutes = 1 status = 'a'", "unexpected 'status' at character 13: expected 'and', 'or'"),
        ("status = 'done", 'unexpected "\'" at character 10 (a string is never closed'),
        ("(minutes = 1", "unexpected end of the condition: expected ')'"),
        ("minutes = null", "unexpected 'null' at character 11: a comparison with null is never"),
        ("minutes in ()", "unexpected ')' at character 13: expected a literal"),
        ("minutes in (1, 'a')", "mixes numeric and text literals"),
        ("minutes is 1", "unexpected '1' at character 12: expected 'null'"),
        ("minutes = 1; drop table x", "unexpected ';' at character 12"),
        ("minutes = other", "unexpected 'other' at character 11: expected a literal"),
        ("at > timestamptz '2026-01-01'", "needs a time and a UTC offset"),
        ("local > timestamp '2026-01-01 00:00+02'", "has a UTC offset; write timestamptz"),
        ("at > timestamptz '2026-02-30 00:00Z'", "is not a valid instant"),
        ("at > timestamptz 5", "expected a quoted instant after timestamptz"),
        ("not " * 50 + "a = 1", "nested more than 40 deep at character 161"),
        ("a = 1 and " * 300 + "a = 1", "the condition has 3005 characters; at most 2000"),
    ],
)
def test_bad_input_is_one_error_naming_the_position_and_token(text: str, message: str) -> None:
    """Every mistake raises ConditionError with the character and the token it stopped at."""
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert message in str(caught.value)


def test_the_canonical_spelling_parses_back_to_the_same_tree() -> None:
    """Whitespace, case of keywords and != are normalised; the tree is unchanged."""
    condition = parse_condition(
        "NOT (a=1 OR b<>'x')  and  (c != 2 and \"in\" is not null) or d in (timestamptz"
        " '2026-01-01T00:00Z')"
    )
    assert condition.canonical == (
        "(not (a = 1 or b <> 'x') and (c <> 2 and \"in\" is not null)) or "
        "d in (timestamptz '2026-01-01T00:00Z')"
    )
    assert parse_condition(condition.canonical).node == condition.node


def test_comparisons_follow_the_column_type() -> None:
    """Numbers compare numerically (exactly across integer and decimal), text by code point,
    booleans false < true, instants by their UTC instant."""
    assert truth("minutes >= 20", minutes=b"25") is True
    assert truth("minutes >= 20", minutes=b"3") is False
    assert truth("minutes = 2.0", minutes=b"2") is True
    assert truth("score < 0.3", score=b"0.29999999999999999999") is True
    assert truth("ratio = 0.1", ratio=b"0.1") is True  # both read 0.1 as a float8
    assert truth("status < 'b'", status=b"a\xc3\xa9") is True
    assert truth("status < 'B'", status=b"a") is False  # code points, not a locale's order
    assert truth("done > false", done=b"t") is True
    assert truth("at = timestamptz '2026-01-01 06:30+05:30'", at=b"2026-01-01 01:00:00+00") is True
    assert truth("at < timestamptz '2026-01-01 00:00Z'", at=b"2025-12-31 23:59:59.999999+00")
    assert truth("local >= timestamp '2026-01-01'", local=b"2026-01-01 00:00:00") is True


def test_special_values_order_as_postgresql_orders_them() -> None:
    """NaN equals itself and is above every number; infinities and BC instants order."""
    assert truth("score > 10000", score=b"NaN") is True
    assert truth("score = 1", score=b"NaN") is False
    assert truth("score < 0", score=b"-Infinity") is True
    assert truth("ratio > 1000", ratio=b"NaN") is True
    assert truth("ratio in (1, 2)", ratio=b"NaN") is False
    assert truth("at > timestamptz '9999-12-31 00:00Z'", at=b"infinity") is True
    assert truth("at < timestamptz '0001-01-01 00:00Z'", at=b"0044-03-15 12:00:00+00 BC") is True
    assert truth("at > timestamptz '9999-12-31 00:00Z'", at=b"12000-01-01 00:00:00+00") is True
    assert truth("at = timestamptz '1900-01-01 00:19:32Z'", at=b"1900-01-01 00:00:00-00:19:32")


def test_null_makes_comparisons_unknown_and_only_true_qualifies() -> None:
    """SQL's three-valued logic: NULL compares unknown, not unknown is unknown, false and
    unknown is false, true or unknown is true; is null is never unknown."""
    assert truth("minutes > 1", minutes=None) is None
    assert truth("not minutes > 1", minutes=None) is None
    assert truth("minutes > 1 and status = 'x'", minutes=None, status=b"y") is False
    assert truth("minutes > 1 or status = 'x'", minutes=None, status=b"x") is True
    assert truth("minutes > 1 or status = 'x'", minutes=None, status=b"y") is None
    assert truth("minutes not in (1, 2)", minutes=None) is None
    assert truth("minutes is null", minutes=None) is True
    assert truth("minutes is not null", minutes=None) is False
    qualifies = predicate(parse_condition("not minutes > 1"), {"minutes": (0, "integer")})
    assert qualifies((None,), None) is False
    assert qualifies((b"0",), None) is True


def test_an_update_row_takes_unchanged_values_from_the_old_row() -> None:
    """A value the new row lacks (an unchanged TOASTed value) is read from the old row;
    when neither has it, UnloggedValue says which column."""
    unchanged = object()
    qualifies = predicate(parse_condition("status = 'done'"), {"status": (1, "text")})
    assert qualifies((b"1", unchanged), (b"1", b"done")) is True
    assert qualifies((b"1", unchanged), (b"1", None)) is False
    with pytest.raises(UnloggedValue, match="status"):
        qualifies((b"1", unchanged), (b"1", unchanged))
    with pytest.raises(UnloggedValue):
        qualifies((b"1", unchanged), None)


def test_type_problems_name_the_column_and_the_fix() -> None:
    """Missing columns, unsupported types and literals of another family are problems."""
    check = lambda text: type_problem(parse_condition(text), "public.t", TYPES)  # noqa: E731
    assert check("minutes > 1 and status in ('a') and at > timestamptz '2026-01-01 00:00Z'") is None
    assert check("nope = 1") == "public.t has no column 'nope'"
    assert check("minutes = 'x'") == (
        "column public.t.minutes is integer, compared with 'x'; compare it with a number"
    )
    assert "compare it with timestamptz '2026-01-01 00:00+00'" in str(check("at > '2026-01-01'"))
    assert "compare it with timestamp '2026-01-01 00:00'" in str(
        check("local > timestamptz '2026-01-01 00:00Z'")
    )
    assert "compare it with true or false" in str(check("done = 1"))
    assert "which is out of its range" in str(check("ratio < 1" + "0" * 400))
    assert check("score < 1" + "0" * 400) is None  # numeric has the range
    assert "is uuid, which a condition cannot read" in str(
        type_problem(parse_condition("u is null"), "public.t", {"u": "uuid"})
    )


def test_rendering_quotes_every_name_and_literal() -> None:
    """Identifiers and literals go through psycopg.sql; text compares under COLLATE "C";
    instants carry their type; every part is parenthesised."""
    condition = parse_condition(
        "minutes >= 20 and not (status = 'it''s' or \"we\"\"ird\" in (1.5, 2))"
        " and at < timestamptz '2026-01-01 00:00Z' and done is not null"
    )
    rendered = render(condition)
    assert isinstance(rendered, sql.Composable)
    assert rendered.as_string(None) == (
        '(("minutes" >= 20) AND (NOT (("status" COLLATE "C" = \'it\'\'s\') OR '
        '("we""ird" IN (1.5, 2)))) AND ("at" < \'2026-01-01 00:00Z\'::timestamptz) AND '
        '("done" IS NOT NULL))'
    )


# -- the same answers as PostgreSQL ----------------------------------------------------

# Columns of every family (name -> SQL type), values drawn from small pools so that
# literals hit them, NULL, NaN, infinities and instants before year 1 or after 9999.
COLUMNS = {
    "i": "integer",
    "n": "numeric",
    "f": "double precision",
    "s": "text",
    "b": "boolean",
    "tz": "timestamp with time zone",
    "ts": "timestamp without time zone",
}
_NUMBERS = ["0", "1", "-1", "2", "2.5", "-0.5", "0.1", "1000000", "3.0"]
_INSTANTS = [
    "2026-03-29 01:30:00",
    "2026-03-29 02:00:00",
    "2026-01-01 00:00:00",
    "1890-06-01 12:00:00",
    "2000-02-29 23:59:59.5",
]
_OFFSETS = ["+00", "+02", "-05:30", "Z"]
# The text column under a linguistic collation ('a' < 'B' there, not in code points): the
# rendering must compare under "C" to agree with Python whatever the column's collation.
_COLLATION = {"s": ' COLLATE "en-x-icu"'}
_SPECIAL = ["NaN", "Infinity", "-Infinity"]
_STRINGS = ["B", "a", "Z", "b", "é", "ab", "a b", "it's", "", "ä", "5%", "%s"]


def _values(name: str) -> st.SearchStrategy[str | None]:
    """Text that PostgreSQL casts to the column's type (None: NULL)."""
    pool: st.SearchStrategy[str]
    if name == "i":
        pool = st.sampled_from(["0", "1", "-1", "2", "1000000"]) | st.integers(-9, 9).map(str)
    elif name == "n":
        pool = st.sampled_from(_SPECIAL) | st.sampled_from([*_NUMBERS, "2.50"])
    elif name == "f":
        pool = st.sampled_from(_SPECIAL) | st.sampled_from([*_NUMBERS, "1e300"])
        pool |= st.floats(-10, 10).map(repr)
    elif name == "s":
        words = st.sampled_from(_STRINGS)
        pool = st.one_of(words, words, words, st.text(st.characters(codec="utf-8"), max_size=3))
    elif name == "b":
        pool = st.sampled_from(["true", "false"])
    else:
        extra = ["infinity", "-infinity", "0044-03-15 12:00:00", "12000-01-01 00:00:00"]
        pool = st.sampled_from(_INSTANTS + extra)
        if name == "tz":
            pool = st.builds(
                lambda t, o: t if "inf" in t else t + o, pool, st.sampled_from(_OFFSETS)
            )
        pool = pool.map(lambda t: t + " BC" if t.startswith("0044") else t)
    return st.none() | pool.filter(lambda v: "\x00" not in v)


def _literals(name: str) -> st.SearchStrategy[str]:
    """A literal of the column's family, in the condition language."""
    if name in ("i", "n", "f"):
        return st.sampled_from(_NUMBERS) | st.integers(-3, 3).map(str)
    if name == "s":
        words = st.sampled_from(_STRINGS)
        return st.one_of(words, words, words, st.text(max_size=2)).map(
            lambda v: "'" + v.replace("\x00", "").replace("'", "''") + "'"
        )
    if name == "b":
        return st.sampled_from(["true", "false"])
    instant = st.sampled_from(_INSTANTS).map(lambda t: t.split(".")[0][:16])
    if name == "tz":
        return st.builds(lambda t, o: f"timestamptz '{t}{o}'", instant, st.sampled_from(_OFFSETS))
    return instant.map(lambda t: f"timestamp '{t}'")


@st.composite
def _leaf(draw: st.DrawFn) -> str:
    column = draw(st.sampled_from([*sorted(COLUMNS), "s", "n", "f", "tz"]))
    kind = draw(st.sampled_from(["compare", "compare", "in", "null"]))
    if kind == "null":
        return f"{column} is {draw(st.sampled_from(['', 'not ']))}null"
    if kind == "in":
        values = draw(st.lists(_literals(column), min_size=1, max_size=3))
        return f"{column} {draw(st.sampled_from(['in', 'not in']))} ({', '.join(values)})"
    op = draw(st.sampled_from(["=", "<>", "!=", "<", "<=", ">", ">="]))
    return f"{column} {op} {draw(_literals(column))}"


_CONDITIONS = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        inner.map(lambda c: f"not ({c})"),
        st.tuples(inner, st.sampled_from([" and ", " or "]), inner).map(
            lambda t: f"({t[0]}){t[1]}({t[2]})"
        ),
    ),
    max_leaves=6,
)
_ROWS = st.lists(
    st.fixed_dictionaries({name: _values(name) for name in COLUMNS}), min_size=1, max_size=12
)


class _OutputText(psycopg.adapt.Loader):
    """A value as its type's output function writes it: what pgoutput carries."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def test_python_and_postgresql_agree_on_random_conditions_and_rows(pg_dsn: str) -> None:
    """For random conditions over every column type and random rows with NULLs, NaN and
    infinities, the Python evaluation of each row (from PostgreSQL's text output, as
    pgoutput carries it) equals PostgreSQL's value of the rendered SQL: true, false or null."""
    names = sorted(COLUMNS)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # Output in a zone with historical offsets in seconds (LMT) and half hours.
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        for type_name in set(COLUMNS.values()):
            conn.adapters.register_loader(type_name, _OutputText)

        @settings(max_examples=300, deadline=None, database=None, derandomize=True)
        @given(text=_CONDITIONS, rows=_ROWS)
        def agree(text: str, rows: list[dict[str, str | None]]) -> None:
            condition = parse_condition(text)
            assert parse_condition(condition.canonical).node == condition.node
            assert type_problem(condition, "t", COLUMNS) is None
            arrays = sql.SQL(", ").join(
                sql.SQL("{}::text[]::{}[]{}").format(
                    sql.Placeholder(), sql.SQL(COLUMNS[name]), sql.SQL(_COLLATION.get(name, ""))
                )
                for name in names
            )
            query = sql.SQL(
                "SELECT {texts}, {condition} FROM unnest({arrays}) AS v({columns})"
            ).format(
                texts=sql.SQL(", ").join(sql.Identifier(n) for n in names),
                condition=render(condition),
                arrays=arrays,
                columns=sql.SQL(", ").join(sql.Identifier(n) for n in names),
            )
            result = conn.execute(query, [[row[n] for row in rows] for n in names]).fetchall()
            # It runs without parameters too (as the all-time query does): no '%' to undouble.
            nulls = sql.SQL(", ").join(
                sql.SQL("NULL::{} AS {}").format(sql.SQL(COLUMNS[n]), sql.Identifier(n))
                for n in names
            )
            assert conn.execute(
                sql.SQL("SELECT {} FROM (SELECT {}) AS v").format(render(condition), nulls)
            ).fetchall()
            assert len(result) == len(rows)
            for *texts, value in result:
                row = dict(zip(names, texts, strict=True))
                expected = {b"t": True, b"f": False, None: None}[value]
                assert evaluate(condition, row, COLUMNS) is expected, (text, row)

        agree()


def test_a_percent_sign_in_a_string_never_reaches_the_query_text() -> None:
    """psycopg would take '%' in a query with parameters for a placeholder: it is chr(37)."""
    rendered = render(parse_condition("s in ('50%', 'x')")).as_string(None)
    assert rendered == "(\"s\" COLLATE \"C\" IN (('50' || chr(37) || ''), 'x'))"
