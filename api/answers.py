"""Rendered answers kept per state of Redis: the response bytes of each board page and member
standing that Redis gave, served again while Redis provably still holds that state.

A state is named by its *generation*: the watermark's ``position``, ``updated_at`` and
``unavailable`` fields, which the projector rewrites in the same atomic step as every change it
makes to Redis (each batch, each chunk of a large transaction, each rebuild swap, each board it
stops), and which vanish with the data (flush, restart without persistence). A kept answer is
served only when a read of the generation that was sent after the request arrived returned the
generation the answer was kept under; so every answer shows a state Redis held while its request
was in flight, as an answer read from Redis would. Requests share that read: all that arrive
before it is sent wait for the same one (one ``HMGET`` per batch of concurrent requests, instead
of one script each). An answer is kept under the generation read before its script was sent, and
only while that generation is still the current one; a read that returns another generation, or
the projector's watermark event (``WatermarkFeed``), drops every kept answer. When the read fails
or Redis holds no watermark, nothing is served from here: the request goes to ``Sources`` as
before (Redis, else PostgreSQL, with the same ``min_lsn`` and fallback rules).

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
    ) -> None:
        self._read_generation = read_generation
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

    def put(self, key: Hashable, generation: Generation, lsn: int, body: bytes) -> None:
        """Keep ``body`` (whose ``as_of`` is ``lsn``), read from Redis after ``generation`` was
        confirmed; not if the generation has moved on since (the body may predate the new
        one), nor beyond the memory bound."""
        if generation != self.generation or not self.enabled:
            return
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


def _pop_oldest(kept: dict[Hashable, tuple[int, bytes]]) -> tuple[Hashable, tuple[int, bytes]]:
    key = next(iter(kept))
    return key, kept.pop(key)
