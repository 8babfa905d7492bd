"""Watching a member: a Server-Sent Events stream of one member's standing on one board.

Clients of ``GET /v1/boards/{board}/{period}/members/{member}/events`` watch (board, period,
bucket or the current one, member). The watched members of one board's bucket are read
together: one read (``Sources.watch``, one Redis call for all of them) after the projector
moved the watermark, at most every ``min_interval`` seconds; so each watched member's
standing is computed once per update, shared by every stream that watches it. A client gets
an event on connect, then whenever the member's rank or score changes (someone passing it
included), carrying the previous rank and score and the members directly above and below.

The streams count against the same caps as the board streams (``BoardEvents.admitted``:
429 beyond), are written the same way (``api.events.serve``: a slow client skips to the
newest standing and delays no other), get a keep-alive comment after ``heartbeat`` seconds
of silence, and end when their client leaves or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from api.boards import Standing, Watched, bucket_fields
from api.errors import ApiError, Unavailable
from api.events import HEARTBEAT, Message, Receive, Send, Subscriber, event_frame, serve
from api.feed import WatermarkFeed
from projector.core.boards import Board
from projector.core.buckets import ALL_BUCKET, Period, current_bucket

log = structlog.get_logger("api")

ReadWatch = Callable[[Board, Period, str, tuple[str, ...]], Awaitable[tuple[Watched, str]]]
Admit = Callable[[str], AbstractContextManager[None]]

# A member Redis answers for is re-read at least this often, in case a change went unheard.
_SAFETY_REREAD = 30.0


@dataclass(frozen=True, slots=True)
class MemberKey:
    """What a client watches; ``bucket`` None follows the current bucket across midnight."""

    board: Board
    period: Period
    bucket: str | None
    member: str


@dataclass(eq=False, slots=True)
class _Watched:
    """One watched member: its clients and the standing of its last event."""

    subscribers: set[Subscriber] = field(default_factory=set)
    rank: int | None = None
    score: int | None = None
    message: Message | None = None  # its last event, which a new client gets first


@dataclass(eq=False, slots=True)
class _Group:
    """The watched members of one (board, period, bucket), read together."""

    board: Board
    period: Period
    bucket: str | None
    members: dict[str, _Watched] = field(default_factory=dict)
    source: str = "redis"
    failed: bool = False
    read_bucket: str = ""
    read_lsn: int = -1
    read_reconnects: int = -1
    read_at: float = 0.0
    loading: asyncio.Task[None] | None = None
    refresher: asyncio.Task[None] | None = None


class MemberEvents:
    """The members that connected clients watch, each board's bucket refreshed by a task."""

    def __init__(
        self,
        read: ReadWatch,
        feed: WatermarkFeed,
        tz: ZoneInfo,
        admitted: Admit,
        *,
        heartbeat: float = 15.0,
        min_interval: float = 0.1,
        fallback_interval: float = 2.0,
    ) -> None:
        self._read = read
        self._feed = feed
        self._tz = tz
        self._admitted = admitted
        self.heartbeat = heartbeat
        self.min_interval = min_interval
        self.fallback_interval = fallback_interval
        self._groups: dict[tuple[str, Period, str | None], _Group] = {}
        self._beater: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self.reads = 0  # reads made (each of every watched member of a group), for tests

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._beater = asyncio.create_task(self._beat(), name="member-events-heartbeat")
            for group in self._groups.values():
                self._follow(group)

    def close(self) -> None:
        """End every stream (server shutdown) and refuse new ones."""
        self._closing = True
        for group in self._groups.values():
            for watched in group.members.values():
                for subscriber in watched.subscribers:
                    subscriber.close()

    async def stop(self) -> None:
        self.close()
        tasks = [group.refresher for group in self._groups.values() if group.refresher]
        if self._beater is not None:
            tasks.append(self._beater)
        self._beater = None
        self._started = False
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stream(self, key: MemberKey, receive: Receive, send: Send, client: str = "") -> bool:
        """Serve one client until it leaves or the server stops; False if it left first.

        Raises ``ApiError`` (before anything is sent) when the board cannot be read at all,
        and ``TooManyStreams`` when the process or ``client`` holds its limit of streams.
        """
        if self._closing:
            raise Unavailable("the server is shutting down; retry shortly")
        with self._admitted(client):
            subscriber, group, watched = await self._subscribe(key, send)
            try:
                return await serve(subscriber, receive, send)
            finally:
                self._unsubscribe(group, key.member, watched, subscriber)

    # -- internals -------------------------------------------------------------------------

    async def _subscribe(self, key: MemberKey, send: Send) -> tuple[Subscriber, _Group, _Watched]:
        ident = (key.board.name, key.period, key.bucket)
        group = self._groups.get(ident)
        if group is None:
            group = self._groups[ident] = _Group(key.board, key.period, key.bucket)
            if self._started:
                self._follow(group)
        watched = group.members.get(key.member)
        if watched is None:
            watched = group.members[key.member] = _Watched()
        subscriber = Subscriber(send)
        watched.subscribers.add(subscriber)
        try:
            while watched.message is None:  # its first read (shared with whoever waits)
                await self._load(group)
        except BaseException:
            self._unsubscribe(group, key.member, watched, subscriber)
            raise
        subscriber.pending = watched.message
        return subscriber, group, watched

    def _unsubscribe(
        self, group: _Group, member: str, watched: _Watched, subscriber: Subscriber
    ) -> None:
        watched.subscribers.discard(subscriber)
        subscriber.closed = True
        if not watched.subscribers and group.members.get(member) is watched:
            del group.members[member]
        ident = (group.board.name, group.period, group.bucket)
        if not group.members and self._groups.get(ident) is group:
            del self._groups[ident]
            if group.refresher is not None:
                group.refresher.cancel()

    async def _load(self, group: _Group) -> None:
        """One read of ``group`` shared by everyone waiting for it; raises what it raised."""
        if group.loading is None or group.loading.done():
            group.loading = asyncio.ensure_future(self._refresh(group))
            group.loading.add_done_callback(_loaded(group))
        await asyncio.shield(group.loading)

    def _follow(self, group: _Group) -> None:
        name = f"member-events-{group.board.name}-{group.period.value}-{group.bucket}"
        group.refresher = asyncio.create_task(self._refresher(group), name=name)

    async def _refresher(self, group: _Group) -> None:
        """Re-read ``group`` whenever its standings can have changed, never more often than
        every ``min_interval`` seconds."""
        feed = self._feed
        version = feed.version
        while True:
            version = await feed.wait(version, self._pause(group))
            if not self._due(group):
                continue
            wait = group.read_at + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self._load(group)
            except ApiError as exc:
                log.debug("members not refreshed", board=group.board.name, error=exc.message)
            except Exception:
                log.exception("members not refreshed", board=group.board.name)

    def _pause(self, group: _Group) -> float:
        if group.failed or group.source != "redis":
            left = group.read_at + self.fallback_interval - time.monotonic()
            return max(0.01, min(left, 2 * self._feed.poll_interval))
        return 2 * self._feed.poll_interval

    def _due(self, group: _Group) -> bool:
        """Whether ``group``'s standings can have changed since its last read."""
        now = time.monotonic()
        if group.failed or group.source != "redis":
            return now - group.read_at >= self.fallback_interval
        if group.bucket is None and self._bucket(group) != group.read_bucket:
            return True
        feed = self._feed
        return (
            feed.lsn != group.read_lsn
            or feed.reconnects != group.read_reconnects
            or now - group.read_at >= _SAFETY_REREAD
        )

    def _bucket(self, group: _Group) -> str:
        if group.bucket is not None:
            return group.bucket
        if group.period == Period.ALL:
            return ALL_BUCKET
        return current_bucket(group.period, self._tz, datetime.now(UTC))

    async def _refresh(self, group: _Group) -> None:
        """Read every watched member of ``group`` once; an event for each whose rank or
        score moved (or that has none yet), written to its clients."""
        members = tuple(group.members)
        if not members:
            return
        bucket = self._bucket(group)
        feed = self._feed
        group.read_lsn, group.read_reconnects = feed.lsn, feed.reconnects
        group.read_at = time.monotonic()
        self.reads += 1
        try:
            watched, source = await self._read(group.board, group.period, bucket, members)
        except BaseException:
            group.failed = True
            raise
        group.source, group.failed, group.read_bucket = source, False, bucket
        now = time.monotonic()
        for member, standing in zip(members, watched.standings, strict=True):
            entry = group.members.get(member)
            if entry is None:
                continue
            if entry.message is not None and (entry.rank, entry.score) == (
                standing.rank,
                standing.score,
            ):
                continue
            body = self._event(group, bucket, member, standing, entry, source)
            entry.rank, entry.score = standing.rank, standing.score
            entry.message = {
                "type": "http.response.body",
                "body": event_frame(body),
                "more_body": True,
            }
            for subscriber in list(entry.subscribers):
                subscriber.deliver(entry.message, now)

    def _event(
        self,
        group: _Group,
        bucket: str,
        member: str,
        standing: Standing,
        entry: _Watched,
        source: str,
    ) -> dict[str, Any]:
        first = entry.message is None
        above = standing.above[-1].to_member_json() if standing.above else None
        below = standing.below[0].to_member_json() if standing.below else None
        return {
            "board": group.board.name,
            **dict(bucket_fields(group.period, bucket, self._tz)),
            "total": standing.total,
            "member": member,
            "label": standing.display_name,
            "rank": standing.rank,
            "score": standing.score,
            "previous_rank": None if first else entry.rank,
            "previous_score": None if first else entry.score,
            "above": above,
            "below": below,
            "source": source,
            "as_of": standing.as_of.to_json(),
        }

    async def _beat(self) -> None:
        """A comment to every stream silent for ``heartbeat`` seconds."""
        while True:
            await asyncio.sleep(min(self.heartbeat / 4, 1.0))
            now = time.monotonic()
            silent = now - self.heartbeat
            for group in self._groups.values():
                for watched in group.members.values():
                    for subscriber in list(watched.subscribers):
                        if subscriber.sent_at <= silent and subscriber.pending is None:
                            subscriber.deliver(HEARTBEAT, now)


def _loaded(group: _Group) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that lets the next reader of ``group`` read it again."""

    def reset(task: asyncio.Task[None]) -> None:
        if group.loading is task:
            group.loading = None
        if not task.cancelled():
            task.exception()  # retrieved: the clients that waited have seen it

    return reset
