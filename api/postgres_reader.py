"""Answers the same queries as ``RedisReader`` straight from the ``pomodoros`` and ``users`` tables.

The fallback: each answer is one SQL statement (one snapshot) counting the rows inside the
bucket's bounds from ``projector.buckets``, the bounds the projector uses, through the
``(completed_at) INCLUDE (user_id)`` index, and ranking with the same rule as Redis: ``rank()``
over score for competition ranks, ties ordered by user id under the byte-order "C" collation.
Concurrency is bounded by the pool size, so a Redis outage cannot flood PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from api.boards import AsOf, BoardPage, Entry, PeriodStanding, Standing, UserPeriods
from api.errors import StoreUnavailable
from projector.buckets import Period, bucket_bounds
from projector.lsn import parse_lsn
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
    SELECT user_id, score, rank() OVER (ORDER BY score DESC) AS rank
    FROM scores
    ORDER BY score DESC, user_id COLLATE "C"
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT t.total, {as_of}, p.rank, p.user_id, u.display_name, p.score
FROM (SELECT count(*) AS total FROM scores) AS t
LEFT JOIN page AS p ON true
LEFT JOIN users AS u ON u.id = p.user_id
ORDER BY p.score DESC, p.user_id COLLATE "C"
"""

_STANDING_SQL = """
WITH scores AS MATERIALIZED ({scores}),
ranked AS (
    SELECT user_id, score,
           rank() OVER (ORDER BY score DESC) AS rank,
           row_number() OVER (ORDER BY score DESC, user_id COLLATE "C") AS position
    FROM scores
),
me AS (SELECT position FROM ranked WHERE user_id = %(user)s)
SELECT t.total, {as_of}, (SELECT display_name FROM users WHERE id = %(user)s),
       r.user_id = %(user)s, r.rank, r.user_id, u.display_name, r.score
FROM (SELECT count(*) AS total FROM scores) AS t
LEFT JOIN (
    ranked AS r JOIN me
    ON r.position BETWEEN me.position - %(around)s AND me.position + %(around)s
) ON true
LEFT JOIN users AS u ON u.id = r.user_id
ORDER BY r.position
"""


class PostgresReader:
    """Answers queries from PostgreSQL with at most ``pool.max_size`` statements at once."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]],
        tz: ZoneInfo,
        timezone: str,
        role: str | None = None,
    ) -> None:
        self._pool = pool
        self._role = role
        self._tz = tz
        self._timezone = timezone

    async def board(
        self, period: Period, bucket: str, offset: int, limit: int, on_start: OnStart = None
    ) -> BoardPage:
        """A page of ``limit`` entries from position ``offset`` (0-based) in rank order."""
        params = self._bounds("", period, bucket)
        params.update(limit=limit, offset=offset)
        statement = _BOARD_SQL.format(scores=self._scores("", period, bucket), as_of=_AS_OF)
        rows = await self._fetch(statement, params, on_start)
        total, lsn, now = rows[0][:3]
        entries = [
            Entry(rank=int(rank), user_id=user_id, display_name=name, score=int(score))
            for _, _, _, rank, user_id, name, score in rows
            if user_id is not None
        ]
        return BoardPage(total=int(total), entries=entries, as_of=AsOf(parse_lsn(lsn), now))

    async def standing(
        self, period: Period, bucket: str, user_id: str, around: int, on_start: OnStart = None
    ) -> Standing:
        """``user_id``'s rank and score with up to ``around`` neighbours either side."""
        params = self._bounds("", period, bucket)
        params.update(user=user_id, around=around)
        statement = _STANDING_SQL.format(scores=self._scores("", period, bucket), as_of=_AS_OF)
        rows = await self._fetch(statement, params, on_start)
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
        self, user_id: str, buckets: list[tuple[Period, str]], on_start: OnStart = None
    ) -> UserPeriods:
        """``user_id``'s score and rank on the board of each (period, bucket)."""
        params: dict[str, Any] = {"user": user_id}
        ctes, selects = [], []
        for index, (period, bucket) in enumerate(buckets):
            name = f"p{index}_"
            params.update(self._bounds(name, period, bucket))
            ctes.append(f"{name}scores AS MATERIALIZED ({self._scores(name, period, bucket)})")
            mine = f"(SELECT score FROM {name}scores WHERE user_id = %(user)s)"
            selects.append(
                f"SELECT {index} AS i, (SELECT count(*) FROM {name}scores), {mine},"
                f" (SELECT count(*) FROM {name}scores WHERE score > {mine}) + 1"
            )
        statement = (
            f"WITH {', '.join(ctes)}"
            f" SELECT b.*, {_AS_OF}, (SELECT display_name FROM users WHERE id = %(user)s)"
            f" FROM ({' UNION ALL '.join(selects)}) AS b ORDER BY b.i"
        )
        rows = await self._fetch(statement, params, on_start)
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

    async def ping(self) -> dict[str, Any]:
        """Whether PostgreSQL answers, for ``/readyz``."""
        rows = await self._fetch(f"SELECT {_AS_OF}", {})
        return {"up": True, "as_of": AsOf(parse_lsn(rows[0][0]), rows[0][1]).to_json()}

    async def server_lsn(self, on_start: OnStart = None) -> int | None:
        """The primary's current WAL position; None on a standby (it cannot tell)."""
        rows = await self._fetch(_SERVER_LSN_SQL, {}, on_start)
        value = rows[0][0]
        return None if value is None else parse_lsn(value)

    # -- internals -------------------------------------------------------------------------

    def _scores(self, name: str, period: Period, bucket: str) -> str:
        """SQL of (user_id, score) rows for one bucket; parameters come from ``_bounds``."""
        if period == Period.ALL:
            where = ""
        elif bucket_bounds(period, bucket, self._tz)[1] is None:
            # The bucket reaches past 9999-12-31: rows from there on belong to no bucket.
            where = (
                f" WHERE completed_at >= %({name}start)s AND completed_at < 'infinity'"
                f" AND (completed_at AT TIME ZONE %(tz)s) < '10000-01-01'"
            )
        else:
            where = f" WHERE completed_at >= %({name}start)s AND completed_at < %({name}end)s"
        return f"SELECT user_id, count(*) AS score FROM pomodoros{where} GROUP BY user_id"

    def _bounds(self, name: str, period: Period, bucket: str) -> dict[str, Any]:
        start, end = bucket_bounds(period, bucket, self._tz)
        return {f"{name}start": start, f"{name}end": end, "tz": self._timezone}

    async def _fetch(
        self, statement: str, params: dict[str, Any], on_start: OnStart = None
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
