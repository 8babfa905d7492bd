"""Live leaderboards over Server-Sent Events, driven by the projector's watermark events.

Clients of ``GET /v1/leaderboards/{period}/events`` subscribe to a board: (period, bucket or
"the current one", limit). On each tick of the ``WatermarkFeed`` every distinct board with
subscribers is read once, whatever the number of clients, and its JSON (the body of
``GET /v1/leaderboards/{period}``) is pushed only to that board's subscribers and only when
it changed (``as_of`` alone moving is no change). Reads start at most every
``min_interval`` seconds (ticks meanwhile coalesce): a lone commit is pushed at once, a busy
board at most ten times a second, which nobody can read faster and which bounds the writes
a thousand clients cost. A slow client skips to the newest state instead of queueing old
ones. The first event is sent on connect, a comment keeps a stream that has been silent for
``heartbeat`` seconds open through proxies, and every stream ends cleanly when the client
goes away or the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from api.errors import ApiError, Unavailable
from api.feed import WatermarkFeed
from api.routes import BoardQuery
from projector.boards import Board
from projector.buckets import ALL_BUCKET, Period, current_bucket

log = structlog.get_logger("api")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass events through unbuffered
]
# Browsers reconnect this many milliseconds after a stream ends (e.g. a server restart).
_RETRY = b"retry: 1000\n\n"
_HEARTBEAT = b": keep-alive\n\n"


@dataclass(frozen=True, slots=True)
class BoardKey:
    """What a client watches; ``bucket`` None follows the current bucket across midnight."""

    period: Period
    bucket: str | None
    limit: int
    board: Board
    alias: bool = True


class _Subscriber:
    """One stream's mailbox: only the newest frame is kept."""

    __slots__ = ("_wake", "closed", "pending", "sent_at")

    def __init__(self) -> None:
        self.pending: bytes | None = None
        self.closed = False
        self.sent_at = time.monotonic()
        self._wake = asyncio.Event()

    def push(self, frame: bytes) -> None:
        self.pending = frame
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def take(self) -> bytes | None:
        """The newest frame not yet sent, if any."""
        self._wake.clear()
        frame, self.pending = self.pending, None
        return frame

    async def next(self) -> bytes | None:
        """The newest frame not yet sent (None once closed)."""
        if self.pending is None and not self.closed:
            await self._wake.wait()
        return self.take()


@dataclass(eq=False, slots=True)
class _Board:
    key: BoardKey
    subscribers: set[_Subscriber] = field(default_factory=set)
    shown: Any = None  # the last answer pushed, less as_of
    frame: bytes | None = None  # that answer as an event
    seq: int = 0  # the read it came from: a slower, older read never overwrites it
    loading: asyncio.Task[None] | None = None


class BoardEvents:
    """The boards that connected clients watch, refreshed on the feed's ticks."""

    def __init__(
        self,
        read: Callable[[BoardQuery], Awaitable[dict[str, Any]]],
        feed: WatermarkFeed,
        tz: ZoneInfo,
        *,
        heartbeat: float = 15.0,
        min_interval: float = 0.1,
    ) -> None:
        self._read = read
        self._feed = feed
        self._tz = tz
        self.heartbeat = heartbeat
        self.min_interval = min_interval
        self._boards: dict[BoardKey, _Board] = {}
        self._seq = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.reads = 0  # board reads made, for tests and metrics

    @property
    def streams(self) -> int:
        """Connected clients."""
        return sum(len(board.subscribers) for board in self._boards.values())

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._pump(), name="board-events"),
                asyncio.create_task(self._beat(), name="board-events-heartbeat"),
            ]

    def close(self) -> None:
        """End every stream (server shutdown) and refuse new ones."""
        self._closing = True
        for board in self._boards.values():
            for subscriber in board.subscribers:
                subscriber.close()

    async def stop(self) -> None:
        self.close()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stream(self, key: BoardKey, receive: Receive, send: Send) -> bool:
        """Serve one client until it leaves or the server stops; False if it left first.

        Raises ``ApiError`` (before anything is sent) when the board cannot be read at all.
        """
        subscriber = await self._subscribe(key)
        watcher = asyncio.create_task(_watch_disconnect(receive, subscriber))
        left = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            first = subscriber.take() or b""
            await send({"type": "http.response.body", "body": _RETRY + first, "more_body": True})
            while True:
                frame = await subscriber.next()
                if subscriber.closed:
                    break
                if frame is not None:
                    subscriber.sent_at = time.monotonic()
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
            left = watcher.done()
            if not left:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._unsubscribe(key, subscriber)
        return not left

    # -- internals -------------------------------------------------------------------------

    async def _subscribe(self, key: BoardKey) -> _Subscriber:
        if self._closing:
            raise Unavailable("the server is shutting down; retry shortly")
        board = self._boards.get(key)
        if board is None:
            board = self._boards[key] = _Board(key)
        subscriber = _Subscriber()
        board.subscribers.add(subscriber)
        try:
            if board.frame is None:
                # Clients arriving together for a new board share one read.
                if board.loading is None:
                    board.loading = asyncio.ensure_future(self._refresh(board))
                    board.loading.add_done_callback(_loaded(board))
                await asyncio.shield(board.loading)
        except BaseException:
            self._unsubscribe(key, subscriber)
            raise
        assert board.frame is not None
        subscriber.pending = board.frame
        return subscriber

    def _unsubscribe(self, key: BoardKey, subscriber: _Subscriber) -> None:
        board = self._boards.get(key)
        if board is None:
            return
        board.subscribers.discard(subscriber)
        if not board.subscribers:
            del self._boards[key]

    async def _pump(self) -> None:
        """Refresh the watched boards after each tick; ticks during a refresh coalesce."""
        feed = self._feed
        version = feed.version
        started = 0.0
        while True:
            # The feed ticks at least every poll interval; the timeout only guards a dead feed.
            version = await feed.wait(version, 2 * feed.poll_interval)
            wait = started + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            boards = list(self._boards.values())
            if boards:
                await asyncio.gather(*(self._refresh_quietly(board) for board in boards))

    async def _beat(self) -> None:
        """A comment to every stream silent for ``heartbeat`` seconds."""
        while True:
            await asyncio.sleep(min(self.heartbeat / 4, 1.0))
            silent = time.monotonic() - self.heartbeat
            for board in self._boards.values():
                for subscriber in board.subscribers:
                    if subscriber.sent_at <= silent and subscriber.pending is None:
                        subscriber.push(_HEARTBEAT)

    async def _refresh_quietly(self, board: _Board) -> None:
        try:
            await self._refresh(board)
        except ApiError as exc:
            log.debug("board not refreshed", key=str(board.key), error=exc.message)
        except Exception:
            log.exception("board not refreshed", key=str(board.key))

    async def _refresh(self, board: _Board) -> None:
        """Read ``board`` once; push it to its subscribers if it changed."""
        seq = next(self._seq)
        key = board.key
        bucket = key.bucket or (
            ALL_BUCKET if key.period == Period.ALL else current_bucket(key.period, self._tz)
        )
        self.reads += 1
        body = await self._read(
            BoardQuery(key.period, bucket, key.limit, 0, None, key.board, key.alias)
        )
        if seq < board.seq:
            return
        board.seq = seq
        shown = {k: v for k, v in body.items() if k != "as_of"}
        if shown == board.shown:
            return
        board.shown = shown
        board.frame = event_frame(body)
        for subscriber in board.subscribers:
            subscriber.push(board.frame)


def _loaded(board: _Board) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that lets the next new client of ``board`` read it again if need be."""

    def reset(task: asyncio.Task[None]) -> None:
        board.loading = None
        if not task.cancelled():
            task.exception()  # retrieved: the clients that waited have seen it

    return reset


def event_frame(body: dict[str, Any]) -> bytes:
    """One SSE event: the board JSON as ``data``, the watermark LSN as ``id``."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"id: {body['as_of']['lsn']}\ndata: {data}\n\n".encode()


async def _watch_disconnect(receive: Receive, subscriber: _Subscriber) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscriber.close()
