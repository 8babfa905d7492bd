"""min_lsn hardening: an LSN ahead of the server is a 400 checked cheaply, and read-your-writes
fallbacks share a query only when it was sent after they arrived."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg
import pytest

from api.boards import AsOf, BoardPage, Entry
from api.errors import BadParameter, NotBuilt
from api.metrics import Metrics
from api.postgres_reader import PostgresReader
from api.redis_reader import RedisReader
from api.routes import BoardQuery
from api.sources import Sources
from projector.commands.migrate import migrate
from projector.core.boards import DEFAULT_BOARDS, Board
from projector.core.buckets import Period, Retention
from projector.core.lsn import format_lsn, parse_lsn
from projector.settings import load_settings

from .support import current_lsn, insert_rows, serve

UTC_ZONE = ZoneInfo("UTC")
SERVER_LSN = 0x5_0000_0000


class FakeRedis:
    """Redis at watermark ``lsn`` (None: not built)."""

    def __init__(self, lsn: int | None) -> None:
        self.lsn = lsn

    async def board(
        self, board: Board, period: Period, bucket: str, offset: int, limit: int
    ) -> BoardPage:
        if self.lsn is None:
            raise NotBuilt("no watermark")
        return BoardPage(0, [], AsOf(self.lsn, datetime.now(UTC)))

    async def watermark_lsn(self) -> int | None:
        return self.lsn


class FakePostgres:
    """Counts statements; each board query waits for ``release`` after it was sent."""

    def __init__(self) -> None:
        self.position_queries = 0
        self.board_queries = 0
        self.release = asyncio.Event()
        self.sent = 0

    async def server_lsn(self, on_start: Any = None) -> int | None:
        self.position_queries += 1
        if on_start:
            on_start()
        await asyncio.sleep(0)
        return SERVER_LSN

    async def board(
        self,
        board: Board,
        period: Period,
        bucket: str,
        offset: int,
        limit: int,
        on_start: Any = None,
    ) -> BoardPage:
        self.board_queries += 1
        await asyncio.sleep(0.01)  # waiting for a pooled connection
        if on_start:
            on_start()
        self.sent += 1
        await self.release.wait()
        return BoardPage(1, [Entry(1, "ann", None, 1)], AsOf(SERVER_LSN, datetime.now(UTC)))


def _sources(redis: FakeRedis, postgres: FakePostgres) -> Sources:
    return Sources(
        cast(RedisReader, redis),
        cast(PostgresReader, postgres),
        tz=UTC_ZONE,
        retention=Retention(),
        min_lsn_wait=0.05,
        cooldown=1.0,
        metrics=Metrics(),
    )


def _query(min_lsn: int | None) -> BoardQuery:
    return BoardQuery(Period.ALL, "all", 10, 0, min_lsn, DEFAULT_BOARDS[0])


def test_min_lsn_ahead_of_the_server_is_400_and_the_position_is_cached() -> None:
    """An LSN past the server's position is BadParameter; below the cached position no query."""

    async def run() -> None:
        postgres = FakePostgres()
        postgres.release.set()
        sources = _sources(FakeRedis(SERVER_LSN - 100), postgres)
        with pytest.raises(BadParameter) as caught:
            await sources.board(_query(SERVER_LSN + 1))
        assert caught.value.parameter == "min_lsn"
        assert format_lsn(SERVER_LSN) in caught.value.message
        assert postgres.position_queries == 1 and postgres.board_queries == 0
        # Behind Redis: no question asked at all.
        assert (await sources.board(_query(SERVER_LSN - 200)))[1] == "redis"
        # Ahead of Redis but not of the cached position: no new position query.
        _, source = await sources.board(_query(SERVER_LSN - 50))
        assert source == "postgres" and postgres.position_queries == 1
        # Many bad requests at once share one position query (once the cache is stale).
        sources._server_lsn_until = 0.0
        results = await asyncio.gather(
            *(sources.board(_query(SERVER_LSN + n)) for n in range(1, 20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, BadParameter) for r in results)
        assert postgres.position_queries == 2

    asyncio.run(run())


def test_min_lsn_fallback_with_redis_down_is_checked_too() -> None:
    """Without Redis a min_lsn ahead of the server is still 400, not a PostgreSQL query."""

    async def run() -> None:
        postgres = FakePostgres()
        postgres.release.set()
        sources = _sources(FakeRedis(None), postgres)
        with pytest.raises(BadParameter):
            await sources.board(_query(SERVER_LSN + 1))
        assert postgres.board_queries == 0
        assert (await sources.board(_query(SERVER_LSN)))[1] == "postgres"

    asyncio.run(run())


def test_read_your_writes_fallbacks_share_only_a_query_sent_after_them() -> None:
    """Requests arriving while a query waits for a connection share it; those arriving after
    it was sent get the next one; plain requests share any."""

    async def run() -> None:
        postgres = FakePostgres()
        sources = _sources(FakeRedis(None), postgres)
        first = [asyncio.ensure_future(sources.board(_query(1))) for _ in range(5)]
        await asyncio.sleep(0.05)  # the first query is sent now
        assert postgres.board_queries == 1 and postgres.sent == 1
        later = [asyncio.ensure_future(sources.board(_query(1))) for _ in range(5)]
        plain = [asyncio.ensure_future(sources.board(_query(None))) for _ in range(5)]
        await asyncio.sleep(0.05)
        postgres.release.set()
        answers = await asyncio.gather(*first, *later, *plain)
        assert all(source == "postgres" for _, source in answers)
        # One for the first five, one for the five that came after it was sent; the plain
        # requests joined a running one.
        assert postgres.board_queries == 2

    asyncio.run(run())


def test_api_answers_400_for_min_lsn_ahead_of_the_server(pg_dsn: str, redis_url: str) -> None:
    """Over HTTP, on real servers: ahead of pg_current_wal_lsn() is 400 naming min_lsn; a
    position the client read after its commit is answered."""
    migrate(pg_dsn, "projector")
    insert_rows(pg_dsn, [("ann", None)])
    settings = load_settings(
        pg_dsn=pg_dsn, redis_url=redis_url, api_access_log=False, api_min_lsn_wait=0.05
    )
    with serve(settings) as api:  # Redis is not built: PostgreSQL answers
        ahead = format_lsn(current_lsn(pg_dsn) + (1 << 32))
        response = api.get("/v1/leaderboards/all", min_lsn=ahead)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["parameter"] == "min_lsn" and "ahead of the server" in error["message"]
        insert_rows(pg_dsn, [("bob", None)])
        mine = format_lsn(current_lsn(pg_dsn))
        body = api.json("/v1/leaderboards/all", min_lsn=mine)
        assert body["source"] == "postgres" and body["total"] == 2
        assert parse_lsn(body["as_of"]["lsn"]) >= parse_lsn(mine)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pomodoros").fetchone() == (2,)
