"""The projector's watermark as it moves: one Redis subscription per process, many waiters.

After each applied batch (and each rebuild) the projector publishes the new watermark LSN on
``{prefix}events``. ``WatermarkFeed`` subscribes once (its own pub/sub connection) and wakes
everyone waiting: ``min_lsn`` requests and the live board streams. Messages can be missed
(the subscription drops while Redis restarts), so it also reads the watermark itself every
``poll_interval`` seconds, which doubles as a periodic tick (boards change at midnight or when
Redis goes away too), and it resubscribes with backoff, logging each retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from api.errors import StoreUnavailable
from projector.core.lsn import parse_lsn

log = structlog.get_logger("api")

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0


class WatermarkFeed:
    """The newest watermark LSN this process heard of, and a way to wait for the next one.

    ``lsn`` is a hint for waking up, never proof: an answer is still checked against its own
    ``as_of``. ``version`` counts ticks (messages, polls, reconnections); ``wait`` returns
    when it moves past the caller's.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        channel: bytes,
        read_lsn: Callable[[], Awaitable[int | None]],
        *,
        poll_interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._read_lsn = read_lsn
        self.poll_interval = poll_interval
        self.lsn = 0
        self.version = 0
        self.live = False  # subscribed, so messages arrive
        self.messages = 0
        self.reconnects = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    def start(self) -> None:
        """Subscribe in the background (retrying until Redis answers)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="watermark-feed")

    async def stop(self) -> None:
        """Unsubscribe and wake every waiter one last time."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.live = False
        self._tick()

    def on_event(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on each watermark event (each one is a write by the projector)."""
        self._listeners.append(listener)

    async def wait(self, version: int, timeout: float) -> int:
        """Wait until ``version`` is passed (or ``timeout`` seconds); return the current one."""
        if self.version == version:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
        return self.version

    def heard(self, lsn: int) -> None:
        """Record a watermark (from a message or a read) and wake the waiters."""
        if lsn > self.lsn:
            self.lsn = lsn
        self._tick()

    def _tick(self) -> None:
        self.version += 1
        # Waiters hold the old event: set it, then hand newcomers a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        delay = _BACKOFF_FIRST
        while True:
            client = Redis(connection_pool=self._pool)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.live = True
                if self.reconnects:
                    log.info("resubscribed to watermark events", channel=self._channel.decode())
                delay = _BACKOFF_FIRST
                # Messages published while we were away are lost: read the watermark now.
                await self._poll()
                await self._listen(pubsub)
            except (RedisError, OSError, StoreUnavailable) as exc:
                self.live = False
                self.reconnects += 1
                log.warning(
                    "watermark events unavailable; resubscribing",
                    error=str(exc) or type(exc).__name__,
                    retry_in=round(delay, 2),
                )
                self._tick()  # streams re-read their boards (from PostgreSQL if need be)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
            finally:
                self.live = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def _listen(self, pubsub: Any) -> None:
        next_poll = time.monotonic() + self.poll_interval
        while True:
            left = max(0.0, next_poll - time.monotonic())
            message = await pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "message":
                self.messages += 1
                self._heard_text(message["data"])
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval
                await self._poll()

    async def _poll(self) -> None:
        """The safety net: a read of the watermark, and a tick either way."""
        lsn = await self._read_lsn()
        self.heard(lsn or 0)

    def _heard_text(self, data: bytes | str) -> None:
        try:
            lsn = parse_lsn(data.decode() if isinstance(data, bytes) else data)
        except (UnicodeDecodeError, ValueError):
            log.warning("ignoring an unreadable watermark event", data=repr(data)[:80])
            return
        for listener in self._listeners:
            listener()
        self.heard(lsn)
