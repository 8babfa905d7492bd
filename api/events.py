"""Live leaderboards over Server-Sent Events, driven by the projector's watermark events.

Clients of ``GET /v1/leaderboards/{period}/events`` watch a board: (board, period, bucket or
"the current one"), with their own ``limit``. Each watched board is read by its own task,
whatever the number of clients and limits: one read of the largest limit asked, sliced for
each (its entries encoded once), pushed only to the clients whose slice changed (``as_of``
alone moving is no change). A board is re-read only when its data can have changed: after the
projector moved the watermark (a past bucket changes no other way), at a new day for a stream
following the current bucket, and at most every ``fallback_interval`` seconds while
PostgreSQL answers it; and a slow board delays no other. A client gets at most one event
every ``min_interval`` seconds, always the newest: a lone commit is pushed at once, a burst
coalesced, and under a steady stream of commits each client is sent the newest state as soon
as its own interval has passed (not all at the next read: the clients of a large board,
written one after the other, stay spread out). So a board is read at most every
``read_interval`` seconds (a quarter of ``min_interval``) while some of its clients are due,
and otherwise not before the first one will be: the state each client is sent is at most
``read_interval`` old, and a board whose clients are all served together, or whose last read
changed nothing, is read at most once per ``min_interval``.

Each update is written to the board's clients by its refresher, in one pass over them: one
encoding shared by all, and no task woken per client (a write that flow control holds back
is finished by that stream's own task, and meanwhile newer frames replace each other: a slow
or unread client skips to the newest state, its socket holding at most what uvicorn's flow
control lets through). A client gets a first event on connect and a comment after
``heartbeat`` seconds of silence. A process holds at most ``max_streams`` streams and
``max_streams_per_client`` per client address; more are refused with ``TooManyStreams``
(429). Every stream ends cleanly when its client goes away or the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Generator, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from api.boards import BoardPage, board_json
from api.errors import ApiError, TooManyStreams, Unavailable
from api.feed import WatermarkFeed
from api.routes import BoardQuery
from projector.core.boards import Board
from projector.core.buckets import ALL_BUCKET, Period, current_bucket

log = structlog.get_logger("api")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
ReadBoard = Callable[[BoardQuery], Awaitable[tuple[BoardPage, str]]]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass events through unbuffered
]
# Browsers reconnect this many milliseconds after a stream ends (e.g. a server restart).
_RETRY = b"retry: 1000\n\n"
HEARTBEAT: Message = {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
# A refused client may try again after this many seconds.
_RETRY_AFTER = 10
# A board Redis answers is re-read at least this often, in case a change went unheard.
_SAFETY_REREAD = 30.0

_NOT_STARTED = object()  # a send that _Resume awaits from its start

_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class BoardKey:
    """What a client watches; ``bucket`` None follows the current bucket across midnight."""

    period: Period
    bucket: str | None
    limit: int
    board: Board
    alias: bool = True


class Subscriber:
    """One stream's writer: the board's refresher writes each new frame itself, at once.

    ``deliver`` starts the client's ``send`` right there and then: uvicorn's returns without
    suspending while the socket takes bytes, so an update reaches every fast client in one
    pass over them, with no task woken per client. A ``send`` that suspends (flow control:
    the client reads slower than its events come) is handed to the stream's own task to
    finish; meanwhile newer frames replace each other in ``pending`` (a client that is behind
    skips to the newest state) and the next client is served at once.
    """

    __slots__ = (
        "_send",
        "_wake",
        "busy",
        "closed",
        "error",
        "event_at",
        "last",
        "pending",
        "sent_at",
        "stalled",
    )

    def __init__(self, send: Send) -> None:
        self._send = send
        self.pending: Message | None = None  # the newest message its task must send
        self.busy = True  # its own task is sending (the first event, or catching up)
        self.stalled: _Resume | None = None  # a send that suspended, for its task to finish
        self.error: BaseException | None = None  # what a send started here raised
        self.closed = False
        self.sent_at = time.monotonic()  # its last write, a keep-alive comment included
        self.last: Message | None = None  # the last event given to it (sent or pending)
        self.event_at = -math.inf  # when it was given that event
        self._wake = asyncio.Event()

    def deliver(self, message: Message, now: float) -> None:
        """Send ``message`` now if the client can take it, else keep it as the newest."""
        if self.closed:
            return
        if self.busy:
            self.pending = message
            return
        sending = self._send(message)
        step = getattr(sending, "send", None)  # a coroutine's, as ASGI servers' sends are
        if step is None:
            self.busy = True
            self.stalled = _Resume(sending, _NOT_STARTED)
            self._wake.set()
            return
        try:
            waiting = step(None)
        except StopIteration:
            self.sent_at = now
            return
        except Exception as exc:
            self.error = exc
            self.close()
            return
        self.busy = True
        self.stalled = _Resume(sending, waiting)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self) -> None:
        """Until a send stalled or the stream is closed."""
        if self.stalled is None and not self.closed:
            await self._wake.wait()
        self._wake.clear()


class _Resume:
    """Awaiting this finishes a coroutine that was started elsewhere and suspended, waiting
    for ``waiting`` (what it yielded): the awaiting task waits for that in its place. With
    ``_NOT_STARTED``, it just awaits ``coro`` (an awaitable that is no coroutine)."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Awaitable[None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        if self._waiting is not _NOT_STARTED:
            try:
                yield self._waiting
            except BaseException:
                self.close()
                raise
        yield from self._coro.__await__()

    def close(self) -> None:
        """Abandon the send (its stream ends without it)."""
        close = getattr(self._coro, "close", None)
        if close is not None:
            close()


class _Encoded:
    """One read of a board as the JSON of one route form (alias or not), encoded once: any
    limit up to the read's is a slice of its entries."""

    __slots__ = ("_as_of", "_entries", "_id", "_parts")

    def __init__(self, body: dict[str, Any]) -> None:
        self._parts: list[bytes | None] = []  # None: where "limit" and then "entries" go
        for name, value in body.items():
            if name in ("limit", "entries"):
                self._parts.append(None)
            elif name != "as_of":
                self._parts.append(_DUMPS(name).encode() + b":" + _DUMPS(value).encode())
        self._entries = [_DUMPS(entry).encode() for entry in body["entries"]]
        self._as_of = b'"as_of":' + _DUMPS(body["as_of"]).encode()
        self._id = str(body["as_of"]["lsn"]).encode()

    def view(self, limit: int) -> tuple[bytes, bytes]:
        """The body for ``limit`` entries less ``as_of`` (what a change is judged by), and
        its event frame: exactly ``event_frame`` of the route's JSON at that limit."""
        slots = iter(
            (b'"limit":%d' % limit, b'"entries":[' + b",".join(self._entries[:limit]) + b"]")
        )
        shown = b",".join(part if part is not None else next(slots) for part in self._parts)
        frame = b"id: " + self._id + b"\ndata: {" + shown + b"," + self._as_of + b"}\n\n"
        return shown, frame


@dataclass(eq=False, slots=True)
class _View:
    """The clients of one board asking for the same limit in the same route form."""

    limit: int
    alias: bool
    subscribers: set[Subscriber] = field(default_factory=set)
    # Its clients by when they were last given an event, oldest first (those that left are
    # dropped as they come up): the ones due for the newest event are at the front.
    queue: deque[Subscriber] = field(default_factory=deque)
    shown: bytes | None = None  # the last body pushed, less as_of
    message: Message | None = None  # that body as an event, the ASGI message every client gets


@dataclass(eq=False, slots=True)
class _Board:
    """One watched (board, period, bucket): its views, its last read, its refresher."""

    board: Board
    period: Period
    bucket: str | None
    views: dict[tuple[int, bool], _View] = field(default_factory=dict)
    page: BoardPage | None = None
    source: str = "redis"
    read_bucket: str = ""  # the bucket id the last read was of
    read_limit: int = 0  # the limit the last read was made with
    read_lsn: int = -1  # the feed's watermark when the last read started
    read_reconnects: int = -1  # the feed's reconnections then
    read_at: float = 0.0  # when the last read started (monotonic)
    failed: bool = False  # the last refresh could not read
    encoded: dict[bool, _Encoded] = field(default_factory=dict)  # the page, per route form
    seq: int = 0  # the read the page came from: a slower, older read never overwrites it
    catch_up_at: float | None = None  # when clients skipped by pacing become due
    changed: bool = False  # the last read changed what some view shows
    loading: asyncio.Task[None] | None = None
    refresher: asyncio.Task[None] | None = None

    def largest_limit(self) -> int:
        return max((view.limit for view in self.views.values()), default=1)


class BoardEvents:
    """The boards that connected clients watch, each refreshed by its own task."""

    def __init__(
        self,
        read: ReadBoard,
        feed: WatermarkFeed,
        tz: ZoneInfo,
        *,
        heartbeat: float = 15.0,
        min_interval: float = 0.1,
        read_interval: float | None = None,
        fallback_interval: float = 2.0,
        max_streams: int = 1000,
        max_streams_per_client: int = 1000,
    ) -> None:
        self._read = read
        self._feed = feed
        self._tz = tz
        self.heartbeat = heartbeat
        self.min_interval = min_interval
        self.read_interval = min_interval / 4 if read_interval is None else read_interval
        self.fallback_interval = fallback_interval
        self.max_streams = max_streams
        self.max_streams_per_client = max_streams_per_client
        self._boards: dict[tuple[str, Period, str | None], _Board] = {}
        self._per_client: Counter[str] = Counter()
        self.streams = 0  # connected clients
        self._seq = itertools.count(1)
        self._beater: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self.reads = 0  # board reads made, for tests and metrics

    def start(self) -> None:
        """Start the heartbeat; boards are refreshed from now on."""
        if not self._started:
            self._started = True
            self._beater = asyncio.create_task(self._beat(), name="board-events-heartbeat")
            for board in self._boards.values():
                self._follow(board)

    def close(self) -> None:
        """End every stream (server shutdown) and refuse new ones."""
        self._closing = True
        for board in self._boards.values():
            for view in board.views.values():
                for subscriber in view.subscribers:
                    subscriber.close()

    async def stop(self) -> None:
        self.close()
        tasks = [board.refresher for board in self._boards.values() if board.refresher]
        if self._beater is not None:
            tasks.append(self._beater)
        self._beater = None
        self._started = False
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stream(self, key: BoardKey, receive: Receive, send: Send, client: str = "") -> bool:
        """Serve one client until it leaves or the server stops; False if it left first.

        Raises ``ApiError`` (before anything is sent) when the board cannot be read at all,
        and ``TooManyStreams`` when the process or ``client`` (its address) holds its limit.
        """
        with self.admitted(client):
            return await self._serve(key, receive, send)

    # -- internals -------------------------------------------------------------------------

    def _admit(self, client: str) -> None:
        if self._closing:
            raise Unavailable("the server is shutting down; retry shortly")
        if self.streams >= self.max_streams:
            raise TooManyStreams(
                f"this server process holds its limit of {self.max_streams} event streams; "
                "retry later",
                _RETRY_AFTER,
            )
        if self._per_client[client] >= self.max_streams_per_client:
            raise TooManyStreams(
                f"this client address holds its limit of {self.max_streams_per_client} event "
                "streams on this server process; close one before opening another",
                _RETRY_AFTER,
            )

    @contextlib.contextmanager
    def admitted(self, client: str) -> Iterator[None]:
        """Hold one of the process's streams (and one of ``client``'s) while inside: every
        kind of stream shares the same caps."""
        self._admit(client)
        self.streams += 1
        self._per_client[client] += 1
        try:
            yield
        finally:
            self.streams -= 1
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]

    async def _serve(self, key: BoardKey, receive: Receive, send: Send) -> bool:
        subscriber, board, view = await self._subscribe(key, send)
        try:
            return await serve(subscriber, receive, send)
        finally:
            self._unsubscribe(board, view, subscriber)

    async def _subscribe(self, key: BoardKey, send: Send) -> tuple[Subscriber, _Board, _View]:
        ident = (key.board.name, key.period, key.bucket)
        board = self._boards.get(ident)
        if board is None:
            board = self._boards[ident] = _Board(key.board, key.period, key.bucket)
            if self._started:
                self._follow(board)
        view = board.views.get((key.limit, key.alias))
        if view is None:
            view = board.views[(key.limit, key.alias)] = _View(key.limit, key.alias)
        subscriber = Subscriber(send)
        view.subscribers.add(subscriber)
        try:
            # Clients arriving together share one read; a larger limit than read so far
            # needs a read of its own.
            while board.page is None or board.read_limit < key.limit:
                await self._load(board)
            if view.message is None:
                self._render(board, view)
        except BaseException:
            self._unsubscribe(board, view, subscriber)
            raise
        assert view.message is not None
        subscriber.pending = subscriber.last = view.message
        subscriber.event_at = time.monotonic()
        view.queue.append(subscriber)
        return subscriber, board, view

    def _unsubscribe(self, board: _Board, view: _View, subscriber: Subscriber) -> None:
        view.subscribers.discard(subscriber)
        subscriber.closed = True
        if len(view.queue) > 2 * len(view.subscribers) + 64:
            view.queue = deque(s for s in view.queue if not s.closed)
        if not view.subscribers and board.views.get((view.limit, view.alias)) is view:
            del board.views[(view.limit, view.alias)]
        ident = (board.board.name, board.period, board.bucket)
        if not board.views and self._boards.get(ident) is board:
            del self._boards[ident]
            if board.refresher is not None:
                board.refresher.cancel()

    async def _load(self, board: _Board) -> None:
        """One read of ``board`` shared by everyone waiting for it; raises what it raised."""
        # A finished read whose done-callback has not run yet is no read to join: awaiting it
        # would not yield, and a caller that needs another read would spin.
        if board.loading is None or board.loading.done():
            board.loading = asyncio.ensure_future(self._refresh(board))
            board.loading.add_done_callback(_loaded(board))
        await asyncio.shield(board.loading)

    def _follow(self, board: _Board) -> None:
        name = f"board-events-{board.board.name}-{board.period.value}-{board.bucket}"
        board.refresher = asyncio.create_task(self._refresher(board), name=name)

    async def _refresher(self, board: _Board) -> None:
        """Re-read ``board`` whenever its data can have changed, never more often."""
        feed = self._feed
        version = feed.version
        while True:
            # The feed ticks at least every poll interval; the timeout guards a dead feed and
            # times PostgreSQL re-reads and the clients that pacing held back.
            pause = self._pause(board)
            if board.catch_up_at is not None:
                pause = min(pause, max(0.0, board.catch_up_at - time.monotonic()))
            version = await feed.wait(version, pause)
            if board.catch_up_at is not None and time.monotonic() >= board.catch_up_at:
                board.catch_up_at = None
                for view in list(board.views.values()):
                    if view.message is not None:
                        self._deliver(board, view)
            if not self._due(board):
                continue
            # Every read_interval while the board changes and some client is due for an event,
            # else not before the first one will be: a board whose clients are all served
            # together is read at most every min_interval, as is one that did not change.
            interval = self.read_interval if board.changed else self.min_interval
            wait = max(board.read_at + interval, self._first_due(board))
            wait -= time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self._load(board)
            except ApiError as exc:
                log.debug("board not refreshed", board=board.board.name, error=exc.message)
            except Exception:
                log.exception("board not refreshed", board=board.board.name)

    def _first_due(self, board: _Board) -> float:
        """When the first of ``board``'s clients may be sent its next event."""
        first = math.inf
        for view in board.views.values():
            if view.queue:
                first = min(first, view.queue[0].event_at)
            elif view.subscribers:
                return -math.inf  # clients joining: their first event is the next read
        return first + self.min_interval if first < math.inf else -math.inf

    def _pause(self, board: _Board) -> float:
        if board.failed or board.source != "redis":
            left = board.read_at + self.fallback_interval - time.monotonic()
            return max(0.01, min(left, 2 * self._feed.poll_interval))
        return 2 * self._feed.poll_interval

    def _due(self, board: _Board) -> bool:
        """Whether ``board``'s data can have changed since its last read."""
        now = time.monotonic()
        if board.failed or board.source != "redis":
            return now - board.read_at >= self.fallback_interval
        if board.bucket is None and self._bucket(board) != board.read_bucket:
            return True  # a new day (week, ...) began
        feed = self._feed
        return (
            feed.lsn != board.read_lsn
            or feed.reconnects != board.read_reconnects
            or now - board.read_at >= _SAFETY_REREAD
        )

    def _bucket(self, board: _Board) -> str:
        if board.bucket is not None:
            return board.bucket
        if board.period == Period.ALL:
            return ALL_BUCKET
        return current_bucket(board.period, self._tz, datetime.now(UTC))

    async def _refresh(self, board: _Board) -> None:
        """Read ``board`` once, at the largest limit watched; push each view that changed."""
        seq = next(self._seq)
        bucket = self._bucket(board)
        limit = board.largest_limit()
        feed = self._feed
        board.read_lsn, board.read_reconnects = feed.lsn, feed.reconnects
        board.read_at = time.monotonic()
        self.reads += 1
        query = BoardQuery(board.period, bucket, limit, 0, None, board.board, True)
        try:
            page, source = await self._read(query)
        except BaseException:
            board.failed = True
            raise
        if seq < board.seq:
            return
        board.seq = seq
        board.page, board.source, board.failed = page, source, False
        board.read_bucket, board.read_limit = bucket, limit
        board.encoded = {}
        changed = False
        for view in list(board.views.values()):
            if view.limit <= limit:
                changed |= self._render(board, view)
        board.changed = changed

    def _render(self, board: _Board, view: _View) -> bool:
        """Slice the last read for ``view``; push it to its clients if it changed (True)."""
        assert board.page is not None
        form = board.encoded.get(view.alias)
        if form is None:
            query = BoardQuery(
                board.period,
                board.read_bucket,
                board.read_limit,
                0,
                None,
                board.board,
                view.alias,
            )
            form = board.encoded[view.alias] = _Encoded(
                board_json(query, board.page, board.source, self._tz)
            )
        shown, frame = form.view(view.limit)
        if shown == view.shown:
            return False
        view.shown = shown
        view.message = {"type": "http.response.body", "body": frame, "more_body": True}
        self._deliver(board, view)
        return True

    def _deliver(self, board: _Board, view: _View) -> None:
        """Give ``view``'s event to each of its clients that lacks it, if its last event is
        ``min_interval`` old; the others get the newest one when it is (``catch_up_at``).

        The clients are taken from the front of ``view.queue`` and put back at its end: only
        the clients served (and one more) are looked at. Every event given is the newest, so
        once a client at the front has this one, everyone behind it has it too."""
        message = view.message
        assert message is not None
        queue = view.queue
        now = time.monotonic()
        due = now - self.min_interval
        clock = time.monotonic
        while queue:
            subscriber = queue[0]
            if subscriber.closed:
                queue.popleft()
                continue
            if subscriber.last is message:
                return
            if subscriber.event_at > due:
                # Not sooner than the next read could come: the passes stay few.
                at = max(subscriber.event_at + self.min_interval, now + self.read_interval)
                if board.catch_up_at is None or at < board.catch_up_at:
                    board.catch_up_at = at
                return
            queue.popleft()
            # Stamped when written, not when the pass began: the clients of a pass that took
            # a while become due again as spread out as they were written.
            written = clock()
            subscriber.last, subscriber.event_at = message, written
            subscriber.deliver(message, written)
            queue.append(subscriber)

    async def _beat(self) -> None:
        """A comment to every stream silent for ``heartbeat`` seconds."""
        while True:
            await asyncio.sleep(min(self.heartbeat / 4, 1.0))
            now = time.monotonic()
            silent = now - self.heartbeat
            for board in self._boards.values():
                for view in board.views.values():
                    for subscriber in list(view.subscribers):
                        if subscriber.sent_at <= silent and subscriber.pending is None:
                            subscriber.deliver(HEARTBEAT, now)


async def serve(subscriber: Subscriber, receive: Receive, send: Send) -> bool:
    """Write ``subscriber``'s stream until it closes; False if its client left first.

    The first event is its ``pending`` message; then whoever refreshes what it watches writes
    to it (``Subscriber.deliver``) and this task finishes the writes that stalled.
    """
    watcher = asyncio.create_task(_watch_disconnect(receive, subscriber))
    left = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        first, subscriber.pending = subscriber.pending, None
        body = _RETRY + (first["body"] if first is not None else b"")
        await send({"type": "http.response.body", "body": body, "more_body": True})
        subscriber.sent_at = time.monotonic()
        while not subscriber.closed:
            # What arrived while this task was sending, newest only; then the refresher
            # writes to this client itself until a write stalls.
            stalled, subscriber.stalled = subscriber.stalled, None
            if stalled is not None:
                await stalled
                subscriber.sent_at = time.monotonic()
            while subscriber.pending is not None and not subscriber.closed:
                message, subscriber.pending = subscriber.pending, None
                await send(message)
                subscriber.sent_at = time.monotonic()
            subscriber.busy = False
            await subscriber.wait()
        if subscriber.error is not None:
            raise subscriber.error
        left = watcher.done()
        if not left:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        subscriber.closed = True
        if subscriber.stalled is not None:
            subscriber.stalled.close()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return not left


def _loaded(board: _Board) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that lets the next reader of ``board`` read it again."""

    def reset(task: asyncio.Task[None]) -> None:
        if board.loading is task:
            board.loading = None
        if not task.cancelled():
            task.exception()  # retrieved: the clients that waited have seen it

    return reset


def event_frame(body: dict[str, Any]) -> bytes:
    """One SSE event: the board JSON as ``data``, the watermark LSN as ``id``."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"id: {body['as_of']['lsn']}\ndata: {data}\n\n".encode()


async def _watch_disconnect(receive: Receive, subscriber: Subscriber) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscriber.close()
