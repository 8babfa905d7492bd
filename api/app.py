"""The ASGI application: a function of ``Settings``, with its clients made at lifespan start-up.

``create_app`` builds an ``App`` and nothing else; the Redis client and the PostgreSQL pool are
created when the server starts it (or on the first request, under a server without lifespan).
Each request is matched against the route table (``api.routes.ROUTES``) and answered by the
endpoint method its route names: validated, answered by ``Sources`` and rendered as JSON; errors
become JSON bodies with their status, and every request is counted, timed and (optionally)
logged.
``/`` and ``/static/`` serve the live page (``api.page``); ``.../events`` streams a board as
Server-Sent Events (``api.events``), pushed on the projector's watermark events (``api.feed``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api import routes
from api.answers import Answers
from api.autopipeline import AutoPipeline
from api.boards import (
    BoardPage,
    board_body,
    boards_json,
    group_json,
    standing_body,
    user_json,
)
from api.errors import ApiError, BadParameter, BodyTooLarge, MethodNotAllowed
from api.events import HEADERS as EVENT_HEADERS
from api.events import BoardEvents, BoardKey
from api.feed import WatermarkFeed
from api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from api.metrics import FLUSH_INTERVAL, Metrics
from api.openapi import openapi_document
from api.page import Page
from api.postgres_reader import PostgresReader, configure_connection
from api.redis_reader import RedisReader, generation_of
from api.routes import BoardQuery, Route
from api.sources import Sources
from api.watch import MemberEvents, MemberKey
from projector import redis_nodes
from projector.core.boards import Board
from projector.core.buckets import Period
from projector.logs import configure_logging
from projector.settings import Settings, load_settings, pg_user, redact_dsn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = structlog.get_logger("api")

_JSON = b"application/json"
# Browsers must not guess another type (a JSON body holding user text run as HTML or script).
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NO_STORE = b"no-store"
_READY_TIMEOUT = 2.0
# The largest request body (a group of members): 1,000 members of 200 characters, in UTF-8.
MAX_BODY = 1 << 20

_Args = tuple[bytes, ...]
# The kinds of kept answers (api.answers), first in their keys.
_BOARD = "board"
_STANDING = "standing"
# Status, body, content type, cache policy, other headers, and the store that answered.
_Answer = tuple[int, bytes, bytes, bytes, Sequence[tuple[bytes, bytes]], str | None]
_Endpoint = Callable[[Route, _Args, Scope, Receive, Send], Awaitable[_Answer | None]]


def create_app(settings: Settings | None = None, *, configure_logs: bool = True) -> App:
    """The read API for ``settings`` (default: from the environment); uvicorn's factory."""
    settings = settings or load_settings()
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format, settings.redact)
    return App(settings)


@dataclass(slots=True)
class _Running:
    """What lives from start-up to shutdown."""

    redis: AutoPipeline
    replica: AutoPipeline | None
    pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]
    sources: Sources
    feed: WatermarkFeed
    events: BoardEvents
    members: MemberEvents
    refresher: asyncio.Task[None] | None
    answers: Answers


class App:
    """The read API as an ASGI 3 callable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._running: _Running | None = None
        self._starting: asyncio.Lock | None = None
        self._tz = settings.zone
        self._boards = {board.name: board for board in settings.boards}
        self._default = settings.boards[0]
        self._boards_body = _encode(boards_json(settings.boards))
        self._openapi = _encode(openapi_document(settings.boards))
        self._access_log = settings.api_access_log
        self.page = Page()
        self._endpoints = self._endpoint_table()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    # -- lifespan ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Create the Redis client and open the PostgreSQL pool (without waiting for either)."""
        if self._running is not None:
            return
        s = self.settings
        # Each call is bounded as a whole (RedisReader, AutoPipeline), not per socket
        # operation: redis-py would pay for a timer task per read and per write.
        redis_options: dict[str, Any] = {
            "socket_timeout": None,
            "socket_connect_timeout": s.api_redis_timeout,
            "health_check_interval": 0,
        }
        redis_pool = redis_nodes.async_pool(s, s.api_redis, **redis_options)
        client = AutoPipeline(redis_pool, s.api_redis_timeout)
        replica: AutoPipeline | None = None
        if s.api_read_from_replicas:
            replica_pool = redis_nodes.async_pool(s, s.api_redis, replicas=True, **redis_options)
            replica = AutoPipeline(replica_pool, s.api_redis_timeout)
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            s.api_dsn,
            min_size=1,
            max_size=s.api_pg_concurrency,
            max_waiting=0,  # PostgresReader bounds the waiting (api_pg_queue)
            timeout=s.api_pg_timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(s.api_pg_timeout)),
                "application_name": "pomodoro-api",
            },
            configure=partial(configure_connection, timeout=s.api_pg_timeout),
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=0,
            name="api",
            open=False,
        )
        await pool.open(wait=False)
        metrics = self.metrics
        reader = RedisReader(client, s.keys.prefix, s.api_redis_timeout)
        feed = WatermarkFeed(redis_pool, reader.events_channel, reader.watermark_lsn)
        sources = Sources(
            reader,
            PostgresReader(
                pool,
                self._tz,
                s.timezone,
                role=pg_user(s.api_dsn),
                max_statements=s.api_pg_concurrency + s.api_pg_queue,
            ),
            tz=self._tz,
            retention=s.retention,
            min_lsn_wait=s.api_min_lsn_wait,
            cooldown=s.api_redis_down_cooldown,
            metrics=metrics,
            redact=s.redact,
            feed=feed,
            replica=(
                RedisReader(replica, s.keys.prefix, s.api_redis_timeout)
                if replica is not None
                else None
            ),
            fallback_rows=s.api_fallback_rows,
            fallback_rankings=s.api_fallback_rankings,
            fallback_ttl=s.api_fallback_ttl,
            expired_ttl=s.api_expired_ttl,
        )
        events = BoardEvents(
            partial(self._board_page, sources),
            feed,
            self._tz,
            fallback_interval=s.api_events_fallback_interval,
            max_streams=s.api_max_streams,
            max_streams_per_client=s.api_max_streams_per_client,
        )
        members = MemberEvents(
            sources.watch,
            feed,
            self._tz,
            events.admitted,
            fallback_interval=s.api_events_fallback_interval,
        )
        # Replica reads are spread over servers at different states: an answer kept from one
        # could not be vouched for by another's watermark, so none is kept then.
        answers = Answers(
            reader.generation,
            0 if s.api_read_from_replicas else s.api_answer_cache_bytes,
            read_soon=reader.generation_soon,
            generation_of=generation_of,
        )
        # Each event is a write by the projector: what was kept shows an older state.
        feed.on_event(answers.clear)
        feed.start()
        events.start()
        members.start()

        def end_streams() -> None:
            events.close()
            members.close()

        _end_streams_on_exit_signals(end_streams)
        metrics.gauge(
            "api_event_streams",
            "Connected Server-Sent Events clients.",
            lambda: float(events.streams),
        )
        metrics.gauge(
            "api_watermark_events_up",
            "1 while every worker is subscribed to the projector's watermark events.",
            lambda: float(feed.live),
            mode="livemin",
        )
        metrics.gauge(
            "api_answers_kept_bytes",
            "Bytes of rendered answers kept for the current state of Redis.",
            lambda: float(answers.size),
        )
        metrics.gauge(
            "api_answers_kept_hits",
            "Requests answered from kept answers since each live worker started.",
            lambda: float(answers.hits),
        )
        metrics.gauge(
            "api_answers_kept_misses",
            "Requests that found no kept answer since each live worker started.",
            lambda: float(answers.misses),
        )
        metrics.gauge(
            "api_redis_up",
            "1 while every worker believes Redis reachable (breaker closed).",
            lambda: float(sources.redis_breaker.is_closed),
            mode="livemin",
        )
        metrics.gauge(
            "api_postgres_up",
            "1 while every worker believes PostgreSQL reachable (breaker closed).",
            lambda: float(sources.postgres_breaker.is_closed),
            mode="livemin",
        )
        metrics.gauge(
            "api_postgres_connections_in_use",
            "Pooled PostgreSQL connections running a query.",
            lambda: float(_in_use(pool)),
        )
        metrics.gauge(
            "api_postgres_requests_waiting",
            "Fallback queries waiting for a pooled connection.",
            lambda: float(pool.get_stats().get("requests_waiting", 0)),
        )
        # A scrape reaches one worker: the others' counts and gauges must be fresh in their files.
        refresher = (
            asyncio.get_running_loop().create_task(self._refresh_gauges())
            if metrics.multiprocess
            else None
        )
        self._running = _Running(
            client, replica, pool, sources, feed, events, members, refresher, answers
        )
        # What is alive now (modules, settings, clients) lives as long as the process: freeze
        # it, so that the collections every few hundred requests set off do not rescan it all.
        gc.collect()
        gc.freeze()
        log.info(
            "api started",
            redis=redis_nodes.describe(s, s.api_redis),
            read_from_replicas=s.api_read_from_replicas,
            postgres=redact_dsn(s.api_dsn),
            timezone=s.timezone,
            prefix=s.keys.prefix,
        )

    async def shutdown(self) -> None:
        """Close the clients."""
        running, self._running = self._running, None
        if running is None:
            return
        if running.refresher is not None:
            running.refresher.cancel()
        self.metrics.close()
        await running.events.stop()
        await running.members.stop()
        await running.feed.stop()
        await running.pool.close()
        await running.redis.aclose()
        if running.replica is not None:
            await running.replica.aclose()

    async def _refresh_gauges(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.metrics.refresh()

    def close_streams(self) -> None:
        """End every event stream now (the server is about to stop); new ones get 503."""
        if self._running is not None:
            self._running.events.close()
            self._running.members.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _started(self) -> _Running:
        """The running clients, started here under a server without lifespan. Requests look
        at ``self._running`` first (``self._running or await self._started()``): awaiting this
        costs a coroutine per request."""
        if self._running is None:
            # No lifespan (some test clients and servers): start on the first request.
            if self._starting is None:
                self._starting = asyncio.Lock()
            async with self._starting:
                await self.startup()
        assert self._running is not None
        return self._running

    async def _board_page(self, sources: Sources, query: BoardQuery) -> tuple[BoardPage, str]:
        """A board's page for the event streams, and the store that gave it."""
        page, source = await sources.board(query)
        self.metrics.answered(routes.EVENTS.path, source)
        return page, source

    # -- requests ----------------------------------------------------------------------------

    def _endpoint_table(self) -> dict[Route, _Endpoint]:
        """Each route of ``routes.ROUTES`` with the method that answers it (a route naming an
        endpoint this class lacks fails here, at construction)."""
        endpoints: dict[str, _Endpoint] = {
            "board": self._board,
            "standing": self._standing,
            "user": self._user,
            "group": self._group,
            "events": self._events,
            "member_events": self._member_events,
            "boards": self._boards_list,
            "page": self._page,
            "asset": self._page,
            "health": self._health,
            "readiness": self._readiness,
            "metrics": self._metrics_text,
            "openapi": self._openapi_document,
        }
        return {route: endpoints[route.endpoint] for route in routes.ROUTES}

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        template = routes.UNMATCHED
        source: str | None = None
        extra: Sequence[tuple[bytes, bytes]]
        try:
            route, args = routes.resolve(raw_path)
            template = route.path
            if method != "GET" and method != "HEAD" and (method != "POST" or not route.body):
                if route.body:
                    raise MethodNotAllowed(
                        f"{template} answers GET, HEAD and POST only, not {method[:20]}",
                        b"GET, HEAD, POST",
                    )
                raise MethodNotAllowed(f"{template} answers GET and HEAD only, not {method[:20]}")
            answer = await self._endpoints[route](route, args, scope, receive, send)
            if answer is None:  # an event stream, answered and ended
                self._finished(scope, template, started, 200, None)
                return
            status, body, content_type, cache, extra, source = answer
        except ApiError as exc:
            status = exc.status
            body = _encode(exc.body())
            content_type, cache = _JSON, b"no-store"
            extra = exc.headers()
        except Exception:
            log.exception("unexpected error", method=method, path=scope["path"][:200])
            status = 500
            body = _encode(
                {
                    "error": {
                        "status": 500,
                        "code": "internal_error",
                        "message": "unexpected error; it has been logged",
                    }
                }
            )
            content_type, cache, extra = _JSON, b"no-store", ()
        headers = [(b"cache-control", cache), *extra]
        if _NOSNIFF not in extra:
            headers.append(_NOSNIFF)
        if status != 304:
            headers[:0] = [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        self._finished(scope, template, started, status, source)

    def _finished(
        self, scope: Scope, route: str, started: float, status: int, source: str | None
    ) -> None:
        """Count, time and log one finished request."""
        method: str = scope["method"]
        elapsed = time.perf_counter() - started
        self.metrics.observe(route, method if method in _METHODS else "other", status, elapsed)
        if self._access_log:
            query: bytes = scope["query_string"]
            log.info(
                "request",
                method=method[:20],
                path=scope["path"][:300],
                query=query[:300].decode("latin-1"),
                status=status,
                source=source,
                ms=round(elapsed * 1000, 2),
                client=(scope.get("client") or ("", 0))[0],
            )

    def _board_of(self, route: Route, args: _Args) -> tuple[Board, _Args, bool]:
        """The board a route is about, the rest of its arguments, and whether it is one of
        the default board's historical (alias) routes."""
        if route.named_board:
            return routes.board_named(args[0], self._boards), args[1:], False
        return self._default, args, True

    # -- endpoints: each answers (status, body, content type, cache policy, other headers,
    # the store that answered), or None once it has sent the response itself ----------------

    async def _board(self, route: Route, args: _Args, scope: Scope, *_: Any) -> _Answer:
        # Every parameter is validated before a store is touched.
        params = routes.parse_query_string(scope["query_string"], route)
        board, args, alias = self._board_of(route, args)
        tz = self._tz
        query = routes.board_query(args, params, tz, board, alias=alias)
        running = self._running or await self._started()
        sources, answers = running.sources, running.answers
        if answers.enabled and self._may_keep(sources, query.period, query.bucket):
            key = (_BOARD, board.name, alias, query.period, query.bucket, query.limit, query.offset)
            body = await self._kept(answers, key, query.min_lsn)
            if body is not None:
                self.metrics.answered(route.path, "redis")
                return 200, body, _JSON, _NO_STORE, (), "redis"
            read = answers.read_soon()  # sent with the page's script, just ahead of it
            page, source = await sources.board(query)
            body = board_body(query, page, source, tz)
            if source == "redis" and read is not None:
                answers.keep(key, read, page.as_of.lsn, body)
        else:
            page, source = await sources.board(query)
            body = board_body(query, page, source, tz)
        self.metrics.answered(route.path, source)
        return 200, body, _JSON, _NO_STORE, (), source

    async def _standing(self, route: Route, args: _Args, scope: Scope, *_: Any) -> _Answer:
        params = routes.parse_query_string(scope["query_string"], route)
        board, args, alias = self._board_of(route, args)
        tz = self._tz
        query = routes.standing_query(args, params, tz, board, alias=alias)
        running = self._running or await self._started()
        sources, answers = running.sources, running.answers
        if answers.enabled and self._may_keep(sources, query.period, query.bucket):
            key = (
                _STANDING,
                board.name,
                alias,
                query.period,
                query.bucket,
                query.user_id,
                query.around,
            )
            body = await self._kept(answers, key, query.min_lsn)
            if body is not None:
                self.metrics.answered(route.path, "redis")
                return 200, body, _JSON, _NO_STORE, (), "redis"
            read = answers.read_soon()
            standing, source = await sources.standing(query)
            body = standing_body(query, standing, source, tz)
            if source == "redis" and read is not None:
                answers.keep(key, read, standing.as_of.lsn, body)
        else:
            standing, source = await sources.standing(query)
            body = standing_body(query, standing, source, tz)
        self.metrics.answered(route.path, source)
        return 200, body, _JSON, _NO_STORE, (), source

    async def _group(
        self, route: Route, args: _Args, scope: Scope, receive: Receive, *_: Any
    ) -> _Answer:
        params = routes.parse_query_string(scope["query_string"], route)
        board, args, _alias = self._board_of(route, args)
        tz = self._tz
        body = await _body(receive, MAX_BODY) if scope["method"] == "POST" else None
        query = routes.group_query(args, params, tz, board, body=body)
        sources = (self._running or await self._started()).sources
        group, source = await sources.group(query)
        self.metrics.answered(route.path, source)
        return 200, _encode(group_json(query, group, source, tz)), _JSON, _NO_STORE, (), source

    @staticmethod
    async def _kept(answers: Answers, key: tuple[Any, ...], min_lsn: int | None) -> bytes | None:
        """The answer kept for ``key``, once Redis confirmed its state after the request
        arrived; None at once when none is kept (the request reads Redis without waiting)."""
        if not answers.peek(key, min_lsn):
            return None
        generation = await answers.confirmed()
        return None if generation is None else answers.get(key, generation, min_lsn)

    @staticmethod
    def _may_keep(sources: Sources, period: Period, bucket: str) -> bool:
        """Whether kept answers may serve this bucket: Redis is believed up (else the breaker
        sends requests to PostgreSQL) and the bucket is not about to expire from Redis (its
        key goes with no write by the projector)."""
        return sources.redis_breaker.is_closed and not sources.expired(period, bucket)

    async def _user(self, route: Route, args: _Args, scope: Scope, *_: Any) -> _Answer:
        params = routes.parse_query_string(scope["query_string"], route)
        query = routes.user_query(args, params, self._default)
        sources = (self._running or await self._started()).sources
        user, source = await sources.user(query)
        self.metrics.answered(route.path, source)
        body = _encode(user_json(query, user, source, self._tz))
        return 200, body, _JSON, _NO_STORE, (), source

    async def _events(
        self, route: Route, args: _Args, scope: Scope, receive: Receive, send: Send
    ) -> _Answer | None:
        """``GET``: serve the stream (None: answered); ``HEAD``: its headers."""
        key = self._board_key(route, args, scope["query_string"])
        if scope["method"] == "GET":
            client = (scope.get("client") or ("",))[0]
            await self._stream(key, client, receive, send)
            return None
        return 200, b"", EVENT_HEADERS[0][1], _NO_STORE, EVENT_HEADERS[2:], None

    async def _member_events(
        self, route: Route, args: _Args, scope: Scope, receive: Receive, send: Send
    ) -> _Answer | None:
        """``GET``: serve a watched member's stream (None: answered); ``HEAD``: its headers."""
        params = routes.parse_query_string(scope["query_string"], route)
        board, args, alias = self._board_of(route, args)
        query = routes.standing_query(args, params, self._tz, board, alias=alias)
        key = MemberKey(board, query.period, params.get("bucket") and query.bucket, query.user_id)
        if scope["method"] != "GET":
            return 200, b"", EVENT_HEADERS[0][1], _NO_STORE, EVENT_HEADERS[2:], None
        running = await self._started()
        client = (scope.get("client") or ("",))[0]
        try:
            await running.members.stream(key, receive, send, client)
        except ApiError:
            raise
        except OSError as exc:  # the client went away mid-write
            log.debug("event stream ended", error=str(exc))
        return None

    async def _boards_list(self, route: Route, args: _Args, scope: Scope, *_: Any) -> _Answer:
        routes.parse_query_string(scope["query_string"], route)
        return 200, self._boards_body, _JSON, _NO_STORE, (), None

    async def _health(self, *_: Any) -> _Answer:
        return 200, b'{"status":"ok"}', _JSON, _NO_STORE, (), None

    async def _openapi_document(self, *_: Any) -> _Answer:
        return 200, self._openapi, _JSON, _NO_STORE, (), None

    async def _metrics_text(self, *_: Any) -> _Answer:
        return 200, self.metrics.render().encode(), METRICS_CONTENT_TYPE, _NO_STORE, (), None

    async def _readiness(self, *_: Any) -> _Answer:
        """200 with the store that answers, else 503 (and no source)."""
        sources = (self._running or await self._started()).sources
        ready, state = await sources.readiness(_READY_TIMEOUT)
        source = state["source"] if ready else None
        return 200 if source is not None else 503, _encode(state), _JSON, _NO_STORE, (), source

    async def _page(self, route: Route, args: _Args, scope: Scope, *_: Any) -> _Answer:
        """The live page (``/``) and its assets (``/static/{asset}``)."""
        if_none_match = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value
        if route is routes.PAGE:
            response = self.page.index(if_none_match)
        else:
            response = self.page.asset(args[0], scope["query_string"], if_none_match)
        headers = dict(response.headers)
        content_type = headers.pop(b"content-type", b"")
        cache = headers.pop(b"cache-control")
        return response.status, response.body, content_type, cache, list(headers.items()), None

    def _board_key(self, route: Route, args: _Args, query_string: bytes) -> BoardKey:
        """What ``GET .../events`` watches; without ``bucket``, the current bucket as it
        changes."""
        params = routes.parse_query_string(query_string, route)
        board, args, alias = self._board_of(route, args)
        query = routes.board_query(args, params, self._tz, board, alias=alias)
        bucket = params.get("bucket") and query.bucket
        return BoardKey(query.period, bucket, query.limit, query.board, query.alias)

    async def _stream(self, key: BoardKey, client: str, receive: Receive, send: Send) -> None:
        """Serve one event stream; errors before the first byte become error responses."""
        running = await self._started()
        try:
            await running.events.stream(key, receive, send, client)
        except ApiError:
            raise
        except OSError as exc:  # the client went away mid-write
            log.debug("event stream ended", error=str(exc))


def _end_streams_on_exit_signals(end: Callable[[], None]) -> None:
    """End the event streams as soon as the server is told to stop.

    uvicorn tells an app of its shutdown (the lifespan event) only once every connection has
    closed, so endless streams would hold it up until its graceful timeout. Its handlers of
    SIGTERM and SIGINT are chained: ``end`` runs on the loop, then the server shuts down as
    before. Nothing is done outside the main thread or when no Python handler is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def chained(number: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(end)
            previous(number, frame)

        signal.signal(signum, chained)


# Built once: json.dumps with any option builds a JSONEncoder for every call.
_JSON_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _encode(body: Any) -> bytes:
    return _JSON_TEXT(body).encode()


async def _body(receive: Receive, limit: int) -> bytes:
    """The request's body, refused (413) once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadParameter("body", "the client went away before its body ended")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is longer than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _in_use(pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]) -> int:
    stats = pool.get_stats()
    return int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0))
