"""Which store answers a query: Redis when it can, PostgreSQL otherwise, 503 when neither can.

Redis answers unless it is down (remembered by a ``Breaker`` for a cooldown), not built (no
watermark), the bucket's board has expired from it, or it is behind the client's ``min_lsn``
after waiting up to ``api_min_lsn_wait`` for the projector (a ``min_lsn`` ahead of the
server's WAL position is a ``BadParameter``). PostgreSQL then answers the same query, at most
``api_pg_concurrency`` statements at once per process (and ``api_pg_queue`` waiting; more get
``FallbackBusy``, 503), and identical queries share one statement (read-your-writes queries
only one sent after they arrived). Board pages share more: one statement reads the bucket's
ranking (its first ``fallback_rows``), kept briefly (``api.rankings``), and every page of it,
whatever its offset and limit, is a slice; so is a member's standing in an expired bucket.
When PostgreSQL cannot answer either, the request gets ``Unavailable`` (503). A ``min_lsn``
wait wakes on the projector's watermark events (the ``WatermarkFeed``), with a slow read of
the watermark as a safety net.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import structlog

from api.boards import AsOf, BoardPage, GroupRanking, Standing, UserPeriods, Watched
from api.breaker import Breaker
from api.errors import (
    BadParameter,
    FallbackBusy,
    NotBuilt,
    StoreBusy,
    StoreUnavailable,
    Unavailable,
)
from api.feed import WatermarkFeed
from api.metrics import Metrics
from api.postgres_reader import PostgresReader
from api.rankings import Ranking, Rankings
from api.redis_reader import RedisReader
from api.routes import BoardQuery, GroupQuery, StandingQuery, UserQuery
from projector.core.boards import Board
from projector.core.buckets import (
    ALL_BUCKET,
    TIMED_PERIODS,
    Period,
    Retention,
    current_bucket,
    expires_at,
)
from projector.core.lsn import format_lsn

log = structlog.get_logger("api")

# A board this close to its expiry may already be gone from Redis (clocks differ): ask PostgreSQL.
_EXPIRY_MARGIN = 60.0
# Without events (no feed, or its subscription is down) a min_lsn wait polls the watermark.
_POLL_FIRST = 0.002
_POLL_MAX = 0.025


_SERVER_LSN_TTL = 1.0

OnStart = Callable[[], None]


class _Answer(Protocol):
    @property
    def as_of(self) -> AsOf: ...


T = TypeVar("T", bound=_Answer)
R = TypeVar("R")


class _Flight:
    """One fallback query and whether its statement was sent (its snapshot taken)."""

    __slots__ = ("started", "task")

    def __init__(self) -> None:
        self.started = False
        self.task: asyncio.Future[Any]

    def start(self) -> None:
        self.started = True


class Sources:
    """Answers queries from the best store available; says which one answered."""

    def __init__(
        self,
        redis: RedisReader,
        postgres: PostgresReader,
        *,
        tz: ZoneInfo,
        retention: Retention,
        min_lsn_wait: float,
        cooldown: float,
        metrics: Metrics,
        redact: Callable[[str], str] = str,
        feed: WatermarkFeed | None = None,
        safety_poll: float = 0.1,
        replica: RedisReader | None = None,
        fallback_rows: int = 100_000,
        fallback_rankings: int = 4,
        fallback_ttl: float = 0.0,
        expired_ttl: float = 60.0,
    ) -> None:
        self._redis = redis
        # PostgreSQL pages share one ranking per bucket (api.rankings).
        self.fallback_rows = fallback_rows
        self._rankings = Rankings(fallback_rankings)
        self._fallback_ttl = fallback_ttl
        self._expired_ttl = expired_ttl
        # Replicas answer first where their watermark satisfies the request's min_lsn.
        self._replica = replica
        self.replica_breaker = Breaker(cooldown)
        self._feed = feed
        # With events, how often a waiter still reads the watermark in case one was missed.
        self.safety_poll = safety_poll
        self._postgres = postgres
        self._tz = tz
        self._retention = retention
        self._min_lsn_wait = min_lsn_wait
        self._metrics = metrics
        self._redact = redact
        # A lower bound of the server's WAL position, trusted until the deadline.
        self._server_lsn = 0
        self._server_lsn_until = 0.0
        self.redis_breaker = Breaker(cooldown)
        self.postgres_breaker = Breaker(cooldown)
        self._expiry = lru_cache(maxsize=1024)(self._expiry_of)
        self._in_flight: dict[tuple[Any, ...], _Flight] = {}

    async def board(self, query: BoardQuery) -> tuple[BoardPage, str]:
        """A page of a leaderboard and the store that gave it."""
        board, p, b = query.board, query.period, query.bucket
        expired = self.expired(p, b)
        return await self._answer(
            query.min_lsn,
            expired,
            ("board", board.name, p, b, query.offset, query.limit),
            lambda redis: redis.board(board, p, b, query.offset, query.limit),
            lambda start: self._postgres.board(board, p, b, query.offset, query.limit, start),
            ranked=partial(self._ranked_page, query, expired),
        )

    async def standing(self, query: StandingQuery, *, replica: bool = True) -> tuple[Standing, str]:
        """A user's place on a leaderboard and the store that gave it (``replica``: a replica
        may)."""
        board, p, b = query.board, query.period, query.bucket
        user, around = query.user_id, query.around
        expired = self.expired(p, b)
        return await self._answer(
            query.min_lsn,
            expired,
            ("standing", board.name, p, b, user, around),
            lambda redis: redis.standing(board, p, b, user, around),
            lambda start: self._postgres.standing(board, p, b, user, around, start),
            # An expired bucket's ranking is kept a while: standings are slices of it too.
            ranked=partial(self._ranked_standing, query) if expired else None,
        )

    async def user(self, query: UserQuery, now: datetime | None = None) -> tuple[UserPeriods, str]:
        """A user's standing in every current bucket and the store that gave it."""
        board = query.board
        buckets = [(p, b) for p, b in current_buckets(self._tz, now) if p in board.periods]
        user = query.user_id
        return await self._answer(
            query.min_lsn,
            False,
            ("user", board.name, user, *buckets),
            lambda redis: redis.user(board, user, buckets),
            lambda start: self._postgres.user(board, user, buckets, start),
        )

    async def group(self, query: GroupQuery) -> tuple[GroupRanking, str]:
        """Some members' standings on a leaderboard and the store that gave them."""
        board, p, b, members = query.board, query.period, query.bucket, query.members
        return await self._answer(
            query.min_lsn,
            self.expired(p, b),
            ("group", board.name, p, b, members),
            lambda redis: redis.group(board, p, b, members),
            lambda start: self._postgres.group(board, p, b, members, start),
        )

    async def watch(
        self, board: Board, period: Period, bucket: str, members: tuple[str, ...]
    ) -> tuple[Watched, str]:
        """Watched members' standings (one neighbour either side) and the store that gave
        them: from Redis one call; from PostgreSQL slices of the bucket's shared ranking (a
        member past it, its own statement)."""
        return await self._answer(
            None,
            self.expired(period, bucket),
            ("watch", board.name, period, bucket, members),
            lambda redis: redis.watch(board, period, bucket, members),
            lambda start: self._watched_from_postgres(board, period, bucket, members, start),
        )

    async def _watched_from_postgres(
        self,
        board: Board,
        period: Period,
        bucket: str,
        members: tuple[str, ...],
        on_start: OnStart,
    ) -> Watched:
        key = ("ranking", board.name, period, bucket)
        ranking = self._rankings.get(key)
        if ranking is None:
            ranking = await self._ranking(
                board, period, bucket, key, self.expired(period, bucket), on_start
            )
        found: dict[str, Standing | None] = {m: ranking.standing(m, 1) for m in members}
        absent = tuple(member for member, standing in found.items() if standing is None)
        if absent and ranking.complete:
            # Off the board: only their labels are to be read (one statement for all).
            group = await self._postgres.group(board, period, bucket, absent)
            for asked in group.members:
                found[asked.member] = Standing(
                    ranking.total, asked.label, None, 0, [], [], ranking.as_of
                )
        else:
            for member in absent:  # past the ranking's rows: rare, one statement each
                found[member] = await self._postgres.standing(board, period, bucket, member, 1)
        standings: list[Standing] = []
        for member in members:
            standing = found[member]
            assert standing is not None
            standings.append(standing)
        return Watched(ranking.total, standings, ranking.as_of)

    async def readiness(self, timeout: float) -> tuple[bool, dict[str, Any]]:
        """Whether a query can be answered now, and by which store, for ``/readyz``."""

        async def check(
            store: str, probe: Callable[[], Awaitable[dict[str, Any]]]
        ) -> dict[str, Any]:
            # The body is public: it says what failed, never how (no hosts, no server text).
            try:
                async with asyncio.timeout(timeout):
                    return await probe()
            except TimeoutError:
                return {"up": False, "error": f"no answer within {timeout:g} s"}
            except StoreUnavailable as exc:
                log.warning("readiness probe failed", store=store, error=self._redact(str(exc)))
                return {"up": False, "error": "unavailable" if exc.down else "busy"}

        redis_state, pg_state = await asyncio.gather(
            check("redis", self._redis.ping), check("postgres", self._postgres.ping)
        )
        if redis_state.get("built"):
            source: str | None = "redis"
        elif pg_state["up"]:
            source = "postgres"
        else:
            source = None
        body = {
            "ready": source is not None,
            "source": source,
            "redis": redis_state,
            "postgres": pg_state,
        }
        return source is not None, body

    # -- internals -------------------------------------------------------------------------

    async def _answer(
        self,
        min_lsn: int | None,
        expired: bool,
        key: tuple[Any, ...],
        from_redis: Callable[[RedisReader], Awaitable[T]],
        from_postgres: Callable[[OnStart], Awaitable[T]],
        ranked: Callable[[int | None, str, Callable[[OnStart], Awaitable[T]]], Awaitable[T]]
        | None = None,
    ) -> tuple[T, str]:
        if self._replica is not None and not expired:
            answer = await self._from_replica(self._replica, min_lsn, from_redis)
            if answer is not None:
                return answer, "redis"
        if expired:
            reason = "expired"
        elif not self.redis_breaker.allow():
            reason = "redis_down"
        else:
            breaker = self.redis_breaker
            try:
                answer = await from_redis(self._redis)
                if min_lsn is not None and answer.as_of.lsn < min_lsn:
                    await self._require_reached(min_lsn)
                    self._metrics.min_lsn_waited()
                    if await self._wait_for(min_lsn):
                        answer = await from_redis(self._redis)
            except StoreUnavailable as exc:
                breaker.failed()
                log.warning(
                    "redis unavailable; answering from postgres", error=self._redact(str(exc))
                )
                reason = "redis_down"
            except NotBuilt:
                breaker.succeeded()
                reason = "not_built"
            except BadParameter:
                breaker.succeeded()  # Redis answered; the client asked for the impossible
                raise
            except BaseException:
                breaker.released()
                raise
            else:
                breaker.succeeded()
                if min_lsn is None or answer.as_of.lsn >= min_lsn:
                    return answer, "redis"
                reason = "min_lsn"
        if min_lsn is not None and reason != "min_lsn":
            await self._require_reached(min_lsn)
        self._metrics.fell_back(reason)
        if ranked is not None:
            return await ranked(min_lsn, reason, from_postgres), "postgres"
        answer = await self._shared(
            key,
            lambda start: self._from_postgres(lambda: from_postgres(start), reason),
            fresh=min_lsn is not None,
        )
        return answer, "postgres"

    async def _ranked_page(
        self,
        query: BoardQuery,
        expired: bool,
        min_lsn: int | None,
        reason: str,
        from_postgres: Callable[[OnStart], Awaitable[BoardPage]],
    ) -> BoardPage:
        """A page from PostgreSQL, sliced from the bucket's ranking (one statement for every
        page of it, whatever its offset and limit); a page past ``fallback_rows`` has its
        own statement, shared only by the same page."""
        board, p, b = query.board, query.period, query.bucket
        key = ("ranking", board.name, p, b)
        offset, limit = query.offset, query.limit
        ranking = self._rankings.get(key, min_lsn)
        if ranking is None and offset + limit <= self.fallback_rows:
            ranking = await self._shared(
                key,
                lambda start: self._from_postgres(
                    lambda: self._ranking(board, p, b, key, expired, start), reason
                ),
                fresh=min_lsn is not None,
            )
        if ranking is not None and ranking.covers(offset, limit):
            return ranking.page(offset, limit)
        return await self._shared(
            ("board", board.name, p, b, offset, limit),
            lambda start: self._from_postgres(lambda: from_postgres(start), reason),
            fresh=min_lsn is not None,
        )

    async def _ranked_standing(
        self,
        query: StandingQuery,
        min_lsn: int | None,
        reason: str,
        from_postgres: Callable[[OnStart], Awaitable[Standing]],
    ) -> Standing:
        """A standing from PostgreSQL, sliced from the bucket's ranking when the member is in
        it; else (off the board, or past ``fallback_rows``) its own statement."""
        board, p, b = query.board, query.period, query.bucket
        key = ("ranking", board.name, p, b)
        ranking = self._rankings.get(key, min_lsn)
        if ranking is None:
            ranking = await self._shared(
                key,
                lambda start: self._from_postgres(
                    lambda: self._ranking(board, p, b, key, True, start), reason
                ),
                fresh=min_lsn is not None,
            )
        standing = ranking.standing(query.user_id, query.around)
        if standing is not None:
            return standing
        return await self._shared(
            ("standing", board.name, p, b, query.user_id, query.around),
            lambda start: self._from_postgres(lambda: from_postgres(start), reason),
            fresh=min_lsn is not None,
        )

    async def _ranking(
        self,
        board: Board,
        period: Period,
        bucket: str,
        key: tuple[Any, ...],
        expired: bool,
        on_start: OnStart,
    ) -> Ranking:
        """Read the first ``fallback_rows`` of the bucket's ranking and keep them."""
        top = await self._postgres.board(board, period, bucket, 0, self.fallback_rows, on_start)
        ranking = Ranking(top.total, top.entries, top.as_of)
        self._rankings.put(key, ranking, self._expired_ttl if expired else self._fallback_ttl)
        return ranking

    async def _from_replica(
        self,
        replica: RedisReader,
        min_lsn: int | None,
        from_redis: Callable[[RedisReader], Awaitable[T]],
    ) -> T | None:
        """A replica's answer if one gives it at or past ``min_lsn``; else None (the master
        answers). A failing replica is skipped for the breaker's cooldown."""
        breaker = self.replica_breaker
        if not breaker.allow():
            return None
        try:
            answer = await from_redis(replica)
        except (StoreUnavailable, NotBuilt) as exc:
            breaker.failed()
            self._metrics.replica_read("failed")
            log.debug("replica cannot answer; asking the master", error=self._redact(str(exc)))
            return None
        except BaseException:
            breaker.released()
            raise
        breaker.succeeded()
        if min_lsn is not None and answer.as_of.lsn < min_lsn:
            self._metrics.replica_read("behind")
            return None
        self._metrics.replica_read("served")
        return answer

    async def _require_reached(self, min_lsn: int) -> None:
        """``BadParameter`` when ``min_lsn`` is ahead of the server's WAL position: no commit
        can have given it to the client, and waiting for it would be in vain.

        The position is cached for ``_SERVER_LSN_TTL``; PostgreSQL is asked (one query for
        all waiting requests) only for a ``min_lsn`` above the cached one. When PostgreSQL
        cannot tell (down, or a standby), the request goes on as before.
        """
        now = time.monotonic()
        if min_lsn <= self._server_lsn and now < self._server_lsn_until:
            return
        if not self.postgres_breaker.allow():
            return
        try:
            current = await self._shared(("server_lsn",), self._server_position, fresh=True)
        except StoreUnavailable:
            self.postgres_breaker.released()
            return
        except BaseException:
            self.postgres_breaker.released()
            raise
        self.postgres_breaker.succeeded()
        if current is None:
            return
        self._server_lsn, self._server_lsn_until = current, time.monotonic() + _SERVER_LSN_TTL
        if min_lsn > current:
            raise BadParameter(
                "min_lsn",
                f"min_lsn {format_lsn(min_lsn)} is ahead of the server's current WAL position "
                f"{format_lsn(current)}; pass the pg_current_wal_lsn() read after your commit",
            )

    async def _server_position(self, on_start: OnStart) -> int | None:
        return await self._postgres.server_lsn(on_start)

    async def _shared(
        self, key: tuple[Any, ...], read: Callable[[OnStart], Awaitable[R]], *, fresh: bool
    ) -> R:
        """Run ``read`` once for all concurrent callers with the same ``key`` (single flight).

        While Redis is down, a thousand clients asking for the same top 10 cost PostgreSQL one
        query at a time, not a thousand. A caller that goes away does not cancel the others'.
        A ``fresh`` caller (read-your-writes) needs a snapshot taken after it arrived: it
        joins only a query whose statement has not been sent yet (``read`` calls its
        ``on_start`` argument just before sending), else starts the next one.
        """
        flight = self._in_flight.get(key)
        if flight is None or (fresh and flight.started):
            flight = _Flight()
            flight.task = asyncio.ensure_future(read(flight.start))
            self._in_flight[key] = flight
            flight.task.add_done_callback(partial(self._landed, key, flight))
        else:
            self._metrics.fallback_shared()
        answer: R = await asyncio.shield(flight.task)
        return answer

    def _landed(self, key: tuple[Any, ...], flight: _Flight, task: asyncio.Future[Any]) -> None:
        if self._in_flight.get(key) is flight:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def _from_postgres(self, read: Callable[[], Awaitable[T]], reason: str) -> T:
        breaker = self.postgres_breaker
        if not breaker.allow():
            raise Unavailable(_unavailable(reason))
        try:
            answer = await read()
        except StoreBusy as exc:
            breaker.succeeded()
            raise FallbackBusy(
                f"too many PostgreSQL fallback queries at once ({exc}); retry shortly"
            ) from exc
        except StoreUnavailable as exc:
            if exc.down:
                breaker.failed()
            else:
                breaker.succeeded()
            log.warning("postgres cannot answer", error=self._redact(str(exc)), redis=reason)
            raise Unavailable(_unavailable(reason)) from exc
        except BaseException:
            breaker.released()
            raise
        breaker.succeeded()
        return answer

    async def _wait_for(self, min_lsn: int) -> bool:
        """Wait until the watermark reaches ``min_lsn``; False after ``api_min_lsn_wait``.

        Woken by the feed's events; the watermark is read only every ``safety_poll`` seconds
        (or, while no subscription is live, polled quickly as it was before events).
        """
        feed = self._feed
        deadline = time.monotonic() + self._min_lsn_wait
        delay = _POLL_FIRST
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if feed is not None and feed.live:
                version = feed.version
                if feed.lsn >= min_lsn:
                    return True
                await feed.wait(version, min(self.safety_poll, left))
                if feed.lsn >= min_lsn:
                    return True
                if feed.version != version:
                    continue  # an event, not the timeout: no need to read
            else:
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _POLL_MAX)
            lsn = await self._redis.watermark_lsn()
            if lsn is None:
                raise NotBuilt("Redis lost its watermark while we waited")
            if lsn >= min_lsn:
                return True

    def expired(self, period: Period, bucket: str) -> bool:
        """Whether the bucket's board may be gone from Redis (PostgreSQL answers for it)."""
        expiry = self._expiry(period, bucket)
        return expiry is not None and expiry <= time.time() + _EXPIRY_MARGIN

    def _expiry_of(self, period: Period, bucket: str) -> int | None:
        return expires_at(period, bucket, self._tz, self._retention)


def current_buckets(tz: ZoneInfo, now: datetime | None = None) -> list[tuple[Period, str]]:
    """(period, bucket) of the current bucket of every period, the all-time board last."""
    moment = datetime.now(UTC) if now is None else now
    buckets = [(period, current_bucket(period, tz, moment)) for period in TIMED_PERIODS]
    buckets.append((Period.ALL, ALL_BUCKET))
    return buckets


def _unavailable(reason: str) -> str:
    why = {
        "redis_down": "Redis is unreachable",
        "not_built": "Redis is not built yet",
        "expired": "this bucket has expired from Redis",
        "min_lsn": "Redis has not caught up with min_lsn",
    }.get(reason, "Redis cannot answer")
    return f"leaderboards are unavailable: {why} and PostgreSQL cannot answer; retry shortly"
