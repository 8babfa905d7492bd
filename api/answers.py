"""Rendered answers kept per state of Redis: the response bytes of each board page and member
standing that Redis gave, served again while Redis provably still holds that state.

A state is named by its *generation*: the watermark's ``position``, ``updated_at`` and
``unavailable`` fields, which the projector rewrites in the same atomic step as every change it
makes to Redis (each batch, each chunk of a large transaction, each rebuild swap, each board it
stops), and which vanish with the data (flush, restart without persistence). A kept answer is
served only when a read of the generation that was sent after the request arrived returned the
generation the answer was kept under; so every answer shows a state Redis held while its request
was in flight, as an answer read from Redis would. Requests share that read: one is in flight
at a time, and all that arrive meanwhile wait for the next (one ``HMGET`` per round trip to
Redis, instead of one script per request). A request with no answer kept does not wait: it
reads Redis at once, and its answer is kept under the generation read just ahead of its script,
in the same pipeline on the same connection (so the answer shows that state or a later one).
Keeping under another generation, a confirming read that finds another one, or the projector's
watermark event (``WatermarkFeed``) drops every kept answer. When the read fails or Redis holds
no watermark, nothing is served from here: the request goes to ``Sources`` as before (Redis,
else PostgreSQL, with the same ``min_lsn`` and fallback rules).

Memory: at most ``max_bytes`` of bodies and keys per process, oldest kept first out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any

import structlog

log = structlog.get_logger("api")

Generation = tuple[bytes | None, ...]
# What an entry costs beyond its body's bytes: the key tuple and its member string, the entry
# tuple, the bytes object's header, the dict slot (about 300 bytes measured with tracemalloc
# for a member standing's key; rounded up).
ENTRY_OVERHEAD = 400


class Answers:
    """Rendered answers by key, for the generation of Redis they were read in."""

    def __init__(
        self,
        read_generation: Callable[[], Awaitable[Generation | None]],
        max_bytes: int,
        *,
        read_soon: Callable[[], asyncio.Future[Any]] | None = None,
        generation_of: Callable[[Any], Generation | None] = lambda fields: fields,
    ) -> None:
        self._read_generation = read_generation
        self._read_soon = read_soon
        self._generation_of = generation_of
        self.max_bytes = max_bytes
        self.enabled = max_bytes > 0
        self.size = 0  # bytes held (bodies and the per-entry overhead)
        self.hits = 0
        self.misses = 0
        self.drops = 0  # times every kept answer was dropped
        self.generation: Generation | None = None
        self._kept: dict[Hashable, tuple[int, bytes]] = {}
        self._waiters: list[asyncio.Future[Generation | None]] = []
        # One read at a time: the requests arriving meanwhile share the next one, sent when it
        # returns (under load, one read per round trip to Redis, whatever the request rate).
        self._reading = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._kept)

    async def confirmed(self) -> Generation | None:
        """Redis's generation, read by a read sent after this call (shared by every call made
        before it is sent); None when Redis holds no watermark or does not answer."""
        loop = self._loop or self._bind()
        waiter: asyncio.Future[Generation | None] = loop.create_future()
        if not self._waiters and not self._reading:
            loop.call_soon(self._send)
        self._waiters.append(waiter)
        return await waiter

    def get(self, key: Hashable, generation: Generation, min_lsn: int | None) -> bytes | None:
        """The answer kept for ``key`` in ``generation`` (confirmed current), if it reflects
        ``min_lsn``; a generation other than the kept one drops every kept answer."""
        if generation != self.generation:
            self._move_to(generation)
            self.misses += 1
            return None
        kept = self._kept.get(key)
        if kept is None or (min_lsn is not None and kept[0] < min_lsn):
            self.misses += 1
            return None
        self.hits += 1
        return kept[1]

    def peek(self, key: Hashable, min_lsn: int | None) -> bool:
        """Whether an answer for ``key`` reflecting ``min_lsn`` is kept (unconfirmed: worth
        waiting for a confirmation, else the request reads Redis at once)."""
        kept = self._kept.get(key)
        if kept is not None and (min_lsn is None or kept[0] >= min_lsn):
            return True
        self.misses += 1
        return False

    def read_soon(self) -> asyncio.Future[Any] | None:
        """A read of the generation sent ahead of the next Redis command of this turn (the
        answer's script), for ``keep``; None without ``read_soon``."""
        if self._read_soon is None:
            return None
        read = self._read_soon()
        read.add_done_callback(_retrieved)
        return read

    def keep(self, key: Hashable, read: asyncio.Future[Any], lsn: int, body: bytes) -> None:
        """Keep ``body`` (read from Redis, its ``as_of`` at ``lsn``) under the generation that
        ``read`` (``read_soon``, sent before the body's script) found."""
        if not read.done() or read.cancelled() or read.exception() is not None:
            return
        generation = self._generation_of(read.result())
        if generation is not None:
            self.put(key, generation, lsn, body)

    def put(self, key: Hashable, generation: Generation, lsn: int, body: bytes) -> None:
        """Keep ``body`` (whose ``as_of`` is ``lsn``), read from Redis by a script sent after
        ``generation`` was read: it shows that state or a later one. Another generation than
        the kept one drops what was kept: a body is served only once a read confirms its own
        generation, so one kept under an older generation is simply never served."""
        if not self.enabled:
            return
        if generation != self.generation:
            self._move_to(generation)
        cost = len(body) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        old = self._kept.pop(key, None)
        if old is not None:
            self.size -= len(old[1]) + ENTRY_OVERHEAD
        kept = self._kept
        while self.size + cost > self.max_bytes:
            # Oldest first: a dict keeps insertion order.
            _, (_, evicted) = _pop_oldest(kept)
            self.size -= len(evicted) + ENTRY_OVERHEAD
        kept[key] = (lsn, body)
        self.size += cost

    def clear(self) -> None:
        """Drop every kept answer (the projector wrote, or Redis cannot vouch for them)."""
        self._move_to(None)

    def _move_to(self, generation: Generation | None) -> None:
        if self._kept:
            self._kept = {}
            self.drops += 1
        self.size = 0
        self.generation = generation

    def _bind(self) -> asyncio.AbstractEventLoop:
        # Once: on Python 3.11 each get_running_loop() asks the kernel for the PID.
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _send(self) -> None:
        waiters, self._waiters = self._waiters, []
        self._reading = True
        task = asyncio.ensure_future(self._read_generation())
        task.add_done_callback(partial(self._settle, waiters))

    def _settle(
        self, waiters: list[asyncio.Future[Generation | None]], task: asyncio.Future[Any]
    ) -> None:
        generation: Generation | None = None
        if task.cancelled():
            log.debug("generation read cancelled; not answering from kept answers")
        elif (error := task.exception()) is not None:
            # The request goes on to Sources, which reports and remembers the failure.
            log.debug("generation read failed; not answering from kept answers", error=str(error))
        else:
            generation = task.result()
        if generation is None:
            self.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(generation)
        self._reading = False
        if self._waiters:
            self._send()


def _retrieved(read: asyncio.Future[Any]) -> None:
    """Mark a failed read's error as seen: a request that went to PostgreSQL never asks."""
    if not read.cancelled():
        read.exception()


def _pop_oldest(kept: dict[Hashable, tuple[int, bytes]]) -> tuple[Hashable, tuple[int, bytes]]:
    key = next(iter(kept))
    return key, kept.pop(key)
