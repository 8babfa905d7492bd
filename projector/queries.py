"""Every aggregate query over a board's table, generated from its definition.

The rebuild, ``verify`` and the API's fallback ask the same question, "each member's score
in a bucket", with the same bucket bounds: an instant belongs to a timed bucket when its
local time (``AT TIME ZONE``) falls in it, is finite and is before local year 10000. Each
query returns the member as text, as Redis stores it, and only positive scores.
"""

from __future__ import annotations

from psycopg import sql

from projector.boards import Board, Labels
from projector.buckets import Period

_UNITS = {Period.DAY: "day", Period.WEEK: "week", Period.MONTH: "month", Period.YEAR: "year"}


def score_expression(board: Board) -> sql.Composable:
    """``count(*)``, or the sum of the board's integer column (NULL counts as 0)."""
    if board.sum is None:
        return sql.SQL("count(*)")
    return sql.SQL("coalesce(sum({}), 0)::bigint").format(sql.Identifier(board.sum))


def _having(board: Board) -> sql.Composable:
    # A count is positive by construction; a sum of 0 means the member is not ranked.
    if board.sum is None:
        return sql.SQL("")
    return sql.SQL(" HAVING coalesce(sum({}), 0) > 0").format(sql.Identifier(board.sum))


def _in_calendar(board: Board) -> sql.Composable:
    """Rows whose instant has a timed bucket (finite, local year before 10000)."""
    return sql.SQL("{t} < 'infinity' AND ({t} AT TIME ZONE %(tz)s) < '10000-01-01'").format(
        t=sql.Identifier(board.time)
    )


def period_scores(board: Board, period: Period) -> sql.Composed:
    """Per bucket start (a local date) and member, the score of every bucket of ``period``
    from ``%(since)s`` on, ordered by bucket. Parameters: ``tz``, ``since``."""
    return sql.SQL(
        "SELECT date_trunc({unit}, {t} AT TIME ZONE %(tz)s)::date, {m}::text, {score}"
        " FROM {table} WHERE {m} IS NOT NULL AND {t} >= %(since)s AND {calendar}"
        " GROUP BY 1, 2{having} ORDER BY 1"
    ).format(
        unit=sql.Literal(_UNITS[period]),
        t=sql.Identifier(board.time),
        m=sql.Identifier(board.member),
        score=score_expression(board),
        table=board.table.identifier(),
        calendar=_in_calendar(board),
        having=_having(board),
    )


def all_time_scores(board: Board) -> sql.Composed:
    """Every member's all-time score (every row counts, whatever its instant)."""
    return sql.SQL(
        "SELECT {m}::text, {score} FROM {table} WHERE {m} IS NOT NULL GROUP BY 1{having}"
    ).format(
        m=sql.Identifier(board.member),
        score=score_expression(board),
        table=board.table.identifier(),
        having=_having(board),
    )


def bucket_filter(board: Board, period: Period) -> sql.Composable:
    """The WHERE condition of one bucket: parameters ``start``, ``end`` (None: open) and
    ``tz``; nothing for the all-time bucket."""
    if period is Period.ALL:
        return sql.SQL("{m} IS NOT NULL").format(m=sql.Identifier(board.member))
    return sql.SQL(
        "{m} IS NOT NULL AND {t} >= %(start)s"
        " AND (%(end)s::timestamptz IS NULL OR {t} < %(end)s) AND {calendar}"
    ).format(
        m=sql.Identifier(board.member), t=sql.Identifier(board.time), calendar=_in_calendar(board)
    )


def bucket_scores(board: Board, period: Period) -> sql.Composed:
    """Each member's score in one bucket (see ``bucket_filter`` for the parameters)."""
    return sql.SQL(
        "SELECT {m}::text AS member, {score} AS score FROM {table} WHERE {where} GROUP BY 1{having}"
    ).format(
        m=sql.Identifier(board.member),
        score=score_expression(board),
        table=board.table.identifier(),
        where=bucket_filter(board, period),
        having=_having(board),
    )


def member_score(board: Board, period: Period) -> sql.Composed:
    """One member's score in one bucket (parameter ``member`` besides the bucket's)."""
    return sql.SQL("SELECT {score} FROM {table} WHERE {m}::text = %(member)s AND {where}").format(
        m=sql.Identifier(board.member),
        score=score_expression(board),
        table=board.table.identifier(),
        where=bucket_filter(board, period),
    )


def all_labels(labels: Labels) -> sql.Composed:
    """Every (member, label) of a label source."""
    return sql.SQL(
        "SELECT {k}::text, {c}::text FROM {table} WHERE {k} IS NOT NULL AND {c} IS NOT NULL"
    ).format(
        k=sql.Identifier(labels.key),
        c=sql.Identifier(labels.column),
        table=labels.table.identifier(),
    )


def labels_of(labels: Labels) -> sql.Composed:
    """The labels of the members in ``%(members)s`` (a text array)."""
    return sql.SQL(
        "SELECT {k}::text, {c}::text FROM {table} WHERE {k}::text = ANY(%(members)s)"
        " AND {c} IS NOT NULL"
    ).format(
        k=sql.Identifier(labels.key),
        c=sql.Identifier(labels.column),
        table=labels.table.identifier(),
    )
