"""Every aggregate query over a board's table, generated from its definition.

The rebuild, ``verify`` and the API's fallback ask the same question, "each member's score
in a bucket", with the same bucket bounds: an instant belongs to a timed bucket when its
local time (``AT TIME ZONE``) falls in it, is finite and is before local year 10000. Each
query returns the member as text, as Redis stores it, and only positive scores. Every one
reads the board's table through ``counted_rows``: a ranked member and the board's condition.
"""

from __future__ import annotations

from psycopg import sql

from projector.core.boards import Board, Labels
from projector.core.buckets import Period
from projector.core.condition import render
from projector.core.limits import clean_label_sql, ranked_member_sql

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


def counted_rows(board: Board) -> sql.Composable:
    """The rows of the board's table that count: a ranked member (``limits``) and, for a
    board with a ``where``, a TRUE condition. Every query over the table filters with it."""
    ranked = ranked_member_sql(sql.Identifier(board.member))
    if board.where is None:
        return ranked
    return sql.SQL("{} AND {}").format(ranked, render(board.where))


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
        " FROM {table} WHERE {ranked} AND {t} >= %(since)s AND {calendar}"
        " GROUP BY 1, 2{having} ORDER BY 1"
    ).format(
        unit=sql.Literal(_UNITS[period]),
        t=sql.Identifier(board.time),
        m=sql.Identifier(board.member),
        ranked=counted_rows(board),
        score=score_expression(board),
        table=board.table.identifier(),
        calendar=_in_calendar(board),
        having=_having(board),
    )


def all_time_scores(board: Board) -> sql.Composed:
    """Every member's all-time score (every row counts, whatever its instant)."""
    return sql.SQL(
        "SELECT {m}::text, {score} FROM {table} WHERE {ranked} GROUP BY 1{having}"
    ).format(
        m=sql.Identifier(board.member),
        ranked=counted_rows(board),
        score=score_expression(board),
        table=board.table.identifier(),
        having=_having(board),
    )


def bucket_filter(
    board: Board, period: Period, *, open_end: bool, name: str = ""
) -> sql.Composable:
    """The WHERE condition of one bucket. Parameters ``{name}start`` and ``{name}end`` are
    its bounds (``bucket_bounds``); a bucket whose end lies past local year 9999
    (``open_end``) is bounded by the calendar instead, with parameter ``tz``. Nothing
    bounds the all-time bucket."""
    member = counted_rows(board)
    if period is Period.ALL:
        return member
    start = sql.Placeholder(f"{name}start")
    if open_end:
        return sql.SQL("{m} AND {t} >= {start} AND {calendar}").format(
            m=member, t=sql.Identifier(board.time), start=start, calendar=_in_calendar(board)
        )
    return sql.SQL("{m} AND {t} >= {start} AND {t} < {end}").format(
        m=member, t=sql.Identifier(board.time), start=start, end=sql.Placeholder(f"{name}end")
    )


def bucket_scores(board: Board, period: Period, *, open_end: bool, name: str = "") -> sql.Composed:
    """Each member's score in one bucket, as columns ``member`` and ``score`` (see
    ``bucket_filter`` for the parameters)."""
    return sql.SQL(
        "SELECT {m}::text AS member, {score} AS score FROM {table} WHERE {where} GROUP BY 1{having}"
    ).format(
        m=sql.Identifier(board.member),
        score=score_expression(board),
        table=board.table.identifier(),
        where=bucket_filter(board, period, open_end=open_end, name=name),
        having=_having(board),
    )


def label_join(
    board: Board, alias: str, member: sql.Composable
) -> tuple[sql.Composable, sql.Composable]:
    """A LEFT JOIN of the board's label table as ``alias`` on ``member``, and the label
    expression (NULL for a board without labels)."""
    labels = board.labels
    if labels is None:
        return sql.SQL(""), sql.SQL("NULL::text")
    join = sql.SQL(" LEFT JOIN {table} AS {alias} ON {alias}.{key}::text = {member}").format(
        table=labels.table.identifier(),
        alias=sql.Identifier(alias),
        key=sql.Identifier(labels.key),
        member=member,
    )
    return join, clean_label_sql(
        sql.SQL("{}.{}::text").format(sql.Identifier(alias), sql.Identifier(labels.column))
    )


def label_of(board: Board, member: sql.Composable) -> sql.Composable:
    """A scalar subquery: the label of ``member`` (NULL without labels or without a row)."""
    labels = board.labels
    if labels is None:
        return sql.SQL("NULL::text")
    return sql.SQL("(SELECT {c} FROM {table} WHERE {k}::text = {member} LIMIT 1)").format(
        c=clean_label_sql(sql.SQL("{}::text").format(sql.Identifier(labels.column))),
        table=labels.table.identifier(),
        k=sql.Identifier(labels.key),
        member=member,
    )


def all_labels(labels: Labels) -> sql.Composed:
    """Every (member, label) of a label source."""
    return sql.SQL(
        "SELECT {k}::text, {c} FROM {table} WHERE {k} IS NOT NULL AND {column} IS NOT NULL"
    ).format(
        k=sql.Identifier(labels.key),
        c=clean_label_sql(sql.SQL("{}::text").format(sql.Identifier(labels.column))),
        column=sql.Identifier(labels.column),
        table=labels.table.identifier(),
    )


def labels_of(labels: Labels) -> sql.Composed:
    """The labels of the members in ``%(members)s`` (a text array)."""
    return sql.SQL(
        "SELECT {k}::text, {c} FROM {table} WHERE {k}::text = ANY(%(members)s)"
        " AND {column} IS NOT NULL"
    ).format(
        k=sql.Identifier(labels.key),
        c=clean_label_sql(sql.SQL("{}::text").format(sql.Identifier(labels.column))),
        column=sql.Identifier(labels.column),
        table=labels.table.identifier(),
    )
