"""Answers the same queries as ``RedisReader`` straight from each board's table.

The fallback: each answer is one SQL statement (one snapshot) aggregating the board's rows
inside the bucket's bounds from ``projector.core.buckets`` with the board's query from
``projector.core.queries`` (the rebuild's and verify's), and ranking with the same rule as Redis:
``rank()`` over score for competition ranks, ties ordered by member under the byte-order "C"
collation.
Concurrency is bounded by the pool size, and statements beyond ``max_statements`` running or
waiting are refused at once (``StoreBusy``), so a Redis outage cannot flood PostgreSQL nor pile
up waiting requests. Every pooled session has a ``statement_timeout`` (``api_pg_timeout``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import structlog
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from api.boards import (
    Asked,
    AsOf,
    BoardPage,
    Entry,
    GroupRanking,
    PeriodStanding,
    Standing,
    UserPeriods,
)
from api.errors import BoardUnavailable, StoreBusy, StoreUnavailable
from projector.core import queries
from projector.core.boards import Board
from projector.core.buckets import Period, bucket_bounds
from projector.core.lsn import parse_lsn
from projector.privileges import privilege_denial

log = structlog.get_logger("api")

# The primary's WAL position (what a client's pg_current_wal_lsn() can have returned at most).
_SERVER_LSN_SQL = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END"
)

OnStart = Callable[[], None] | None

# The position the answer includes: on a standby, what it has replayed.
_AS_OF = (
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END)::text, now()"
)

_BOARD_SQL = """
WITH scores AS MATERIALIZED ({scores}),
page AS (
    SELECT member, score, rank() OVER (ORDER BY score DESC) AS rank
    FROM scores
    ORDER BY score DESC, member COLLATE "C"
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT t.total, {as_of}, p.rank, p.member, {label}, p.score
FROM (SELECT count(*) AS total FROM scores) AS t
LEFT JOIN page AS p ON true{join}
ORDER BY p.score DESC, p.member COLLATE "C"
"""
_STANDING_SQL = """
WITH scores AS MATERIALIZED ({scores}),
ranked AS (
    SELECT member, score,
           rank() OVER (ORDER BY score DESC) AS rank,
           row_number() OVER (ORDER BY score DESC, member COLLATE "C") AS position
    FROM scores
),
me AS (SELECT position FROM ranked WHERE member = %(user)s)
SELECT t.total, {as_of}, {my_label},
       r.member = %(user)s, r.rank, r.member, {label}, r.score
FROM (SELECT count(*) AS total FROM scores) AS t
LEFT JOIN (
    ranked AS r JOIN me
    ON r.position BETWEEN me.position - %(around)s AND me.position + %(around)s
) ON true{join}
ORDER BY r.position
"""

_GROUP_SQL = """
WITH scores AS MATERIALIZED ({scores}),
ranked AS (SELECT member, score, rank() OVER (ORDER BY score DESC) AS rank FROM scores)
SELECT t.total, {as_of}, a.member, r.score, r.rank, {label}
FROM (SELECT count(*) AS total FROM scores) AS t
CROSS JOIN unnest(%(members)s::text[]) AS a(member)
LEFT JOIN ranked AS r ON r.member = a.member{join}
"""


class PostgresReader:
    """Answers queries from PostgreSQL with at most ``pool.max_size`` statements at once.

    Statements are made from the board definitions (``projector.core.queries``) once per shape
    and kept.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]],
        tz: ZoneInfo,
        timezone: str,
        role: str | None = None,
        max_statements: int | None = None,
    ) -> None:
        self._pool = pool
        # Statements running or waiting for a connection; beyond max_statements, refused.
        self.max_statements = max_statements
        self.statements = 0
        self._role = role
        self._tz = tz
        self._timezone = timezone
        self._statements: dict[tuple[Any, ...], bytes] = {}

    async def board(
        self,
        board: Board,
        period: Period,
        bucket: str,
        offset: int,
        limit: int,
        on_start: OnStart = None,
    ) -> BoardPage:
        """A page of ``limit`` entries from position ``offset`` (0-based) in rank order."""
        params, open_end = self._bounds("", period, bucket)
        params.update(limit=limit, offset=offset)
        rows = await self._fetch(self._board_sql(board, period, open_end), params, on_start)
        total, lsn, now = rows[0][:3]
        entries = [
            Entry(rank=int(rank), user_id=member, display_name=label, score=int(score))
            for _, _, _, rank, member, label, score in rows
            if member is not None
        ]
        return BoardPage(total=int(total), entries=entries, as_of=AsOf(parse_lsn(lsn), now))

    async def standing(
        self,
        board: Board,
        period: Period,
        bucket: str,
        user_id: str,
        around: int,
        on_start: OnStart = None,
    ) -> Standing:
        """``user_id``'s rank and score with up to ``around`` neighbours either side."""
        params, open_end = self._bounds("", period, bucket)
        params.update(user=user_id, around=around)
        rows = await self._fetch(self._standing_sql(board, period, open_end), params, on_start)
        total, lsn, now, display_name = rows[0][:4]
        as_of = AsOf(parse_lsn(lsn), now)
        entries: list[Entry] = []
        mine: int | None = None
        for row in rows:
            is_me, rank, member, name, score = row[4:]
            if member is None:
                continue
            if is_me:
                mine = len(entries)
            entries.append(Entry(int(rank), member, name, int(score)))
        if mine is None:
            return Standing(int(total), display_name, None, 0, [], [], as_of)
        me = entries[mine]
        return Standing(
            total=int(total),
            display_name=display_name,
            rank=me.rank,
            score=me.score,
            above=entries[:mine],
            below=entries[mine + 1 :],
            as_of=as_of,
        )

    async def user(
        self,
        board: Board,
        user_id: str,
        buckets: list[tuple[Period, str]],
        on_start: OnStart = None,
    ) -> UserPeriods:
        """``user_id``'s score and rank on the board of each (period, bucket)."""
        params: dict[str, Any] = {"user": user_id}
        ctes, selects = [], []
        for index, (period, bucket) in enumerate(buckets):
            name = f"p{index}_"
            bounds, open_end = self._bounds(name, period, bucket)
            params.update(bounds)
            scores = sql.Identifier(f"{name}scores")
            ctes.append(
                sql.SQL("{} AS MATERIALIZED ({})").format(
                    scores, queries.bucket_scores(board, period, open_end=open_end, name=name)
                )
            )
            mine = sql.SQL("(SELECT score FROM {} WHERE member = %(user)s)").format(scores)
            selects.append(
                sql.SQL(
                    "SELECT {index} AS i, (SELECT count(*) FROM {scores}), {mine},"
                    " (SELECT count(*) FROM {scores} WHERE score > {mine}) + 1"
                ).format(index=sql.Literal(index), scores=scores, mine=mine)
            )
        statement = sql.SQL("WITH {} SELECT b.*, {}, {} FROM ({}) AS b ORDER BY b.i").format(
            sql.SQL(", ").join(ctes),
            sql.SQL(_AS_OF),
            queries.label_of(board, sql.Placeholder("user")),
            sql.SQL(" UNION ALL ").join(selects),
        )
        rows = await self._fetch(statement.as_string(None).encode(), params, on_start)
        periods = []
        for (period, bucket), (_, total, score, rank, *_rest) in zip(buckets, rows, strict=True):
            periods.append(
                PeriodStanding(
                    period=period,
                    bucket=bucket,
                    total=int(total),
                    rank=None if score is None else int(rank),
                    score=0 if score is None else int(score),
                )
            )
        lsn, now, display_name = rows[0][4:7]
        return UserPeriods(display_name, periods, AsOf(parse_lsn(lsn), now))

    async def group(
        self,
        board: Board,
        period: Period,
        bucket: str,
        members: tuple[str, ...],
        on_start: OnStart = None,
    ) -> GroupRanking:
        """Each of ``members``'s score and rank on the board, in one statement."""
        params, open_end = self._bounds("", period, bucket)
        params["members"] = list(members)
        rows = await self._fetch(self._group_sql(board, period, open_end), params, on_start)
        total, lsn, now = rows[0][:3]
        found = {
            member: Asked(
                member,
                label,
                None if score is None else int(score),
                None if rank is None else int(rank),
            )
            for _, _, _, member, score, rank, label in rows
        }
        asked = [found[member] for member in members]
        return GroupRanking(int(total), asked, AsOf(parse_lsn(lsn), now))

    async def ping(self) -> dict[str, Any]:
        """Whether PostgreSQL answers, for ``/readyz``."""
        rows = await self._fetch(b"SELECT " + _AS_OF.encode(), {})
        return {"up": True, "as_of": AsOf(parse_lsn(rows[0][0]), rows[0][1]).to_json()}

    async def server_lsn(self, on_start: OnStart = None) -> int | None:
        """The primary's current WAL position; None on a standby (it cannot tell)."""
        rows = await self._fetch(_SERVER_LSN_SQL.encode(), {}, on_start)
        value = rows[0][0]
        return None if value is None else parse_lsn(value)

    # -- internals -------------------------------------------------------------------------

    def _board_sql(self, board: Board, period: Period, open_end: bool) -> bytes:
        key = ("board", board, period, open_end)
        statement = self._statements.get(key)
        if statement is None:
            join, label = queries.label_join(board, "l", sql.SQL("p.member"))
            statement = self._statements[key] = self._compose(
                _BOARD_SQL, board, period, open_end, join=join, label=label
            )
        return statement

    def _standing_sql(self, board: Board, period: Period, open_end: bool) -> bytes:
        key = ("standing", board, period, open_end)
        statement = self._statements.get(key)
        if statement is None:
            join, label = queries.label_join(board, "l", sql.SQL("r.member"))
            statement = self._statements[key] = self._compose(
                _STANDING_SQL,
                board,
                period,
                open_end,
                join=join,
                label=label,
                my_label=queries.label_of(board, sql.Placeholder("user")),
            )
        return statement

    def _group_sql(self, board: Board, period: Period, open_end: bool) -> bytes:
        key = ("group", board, period, open_end)
        statement = self._statements.get(key)
        if statement is None:
            join, label = queries.label_join(board, "l", sql.SQL("a.member"))
            statement = self._statements[key] = self._compose(
                _GROUP_SQL, board, period, open_end, join=join, label=label
            )
        return statement

    @staticmethod
    def _compose(
        template: str, board: Board, period: Period, open_end: bool, **parts: sql.Composable
    ) -> bytes:
        scores = queries.bucket_scores(board, period, open_end=open_end)
        return (
            sql.SQL(template)
            .format(scores=scores, as_of=sql.SQL(_AS_OF), **parts)
            .as_string(None)
            .encode()
        )

    def _bounds(self, name: str, period: Period, bucket: str) -> tuple[dict[str, Any], bool]:
        """The bucket's bounds as parameters ``{name}start``/``{name}end`` (and ``tz``), and
        whether its end lies past local year 9999."""
        start, end = bucket_bounds(period, bucket, self._tz)
        bounds = {f"{name}start": start, f"{name}end": end, "tz": self._timezone}
        return bounds, period is not Period.ALL and end is None

    async def _fetch(
        self, statement: bytes, params: dict[str, Any], on_start: OnStart = None
    ) -> list[tuple[Any, ...]]:
        if self.max_statements is not None and self.statements >= self.max_statements:
            raise StoreBusy(
                "postgres",
                f"{self.statements} fallback statements are running or waiting in this "
                "process, its limit",
            )
        self.statements += 1
        try:
            return await self._run(statement, params, on_start)
        finally:
            self.statements -= 1

    async def _run(
        self, statement: bytes, params: dict[str, Any], on_start: OnStart
    ) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                if on_start is not None:
                    on_start()  # the statement's snapshot is taken after this instant
                cursor = await conn.execute(statement, params)
                rows = await cursor.fetchall()
        except TooManyRequests as exc:
            raise StoreUnavailable("postgres", "too many requests waiting", down=False) from exc
        except PoolTimeout as exc:
            # An empty pool cannot connect at all; a full one is only busy.
            down = self._pool.get_stats().get("pool_size", 0) == 0
            raise StoreUnavailable("postgres", str(exc), down=down) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            denial = privilege_denial(exc, role=self._role)
            log.error("postgres refused the fallback query", error=str(denial or exc))
            raise StoreUnavailable("postgres", "permission denied", down=False) from exc
        except (
            psycopg.errors.UndefinedColumn,
            psycopg.errors.UndefinedTable,
            psycopg.errors.DatatypeMismatch,
            psycopg.errors.UndefinedFunction,
        ) as exc:
            # A migration broke the board's definition; the projector has dropped the board
            # too (or will at its next look) and names the fix.
            raise BoardUnavailable("") from exc
        except psycopg.errors.QueryCanceled as exc:
            raise StoreUnavailable("postgres", f"statement timed out: {exc}", down=False) from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable("postgres", str(exc).strip() or "connection lost") from exc
        return rows


async def configure_connection(conn: AsyncConnection[tuple[Any, ...]], timeout: float) -> None:
    """Session settings of every pooled connection: read-only, bounded, no JIT stalls, and
    room to aggregate a busy day's board in memory rather than in temporary files."""
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, false),"
        " set_config('default_transaction_read_only', 'on', false),"
        " set_config('jit', 'off', false),"
        " set_config('work_mem', '32MB', false)",
        [str(max(1, int(timeout * 1000)))],
    )
