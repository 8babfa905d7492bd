"""Kept answers (``api.answers``): served only for the generation of Redis they were read in,
dropped by the projector's watermark events, never older than ``min_lsn``, within their bound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from api.answers import ENTRY_OVERHEAD, Answers, Generation
from api.errors import StoreUnavailable
from api.feed import WatermarkFeed

G1: Generation = (b"0/10", b"0000000000000010:0:0:f", b"t1", b"")
G2: Generation = (b"0/20", b"0000000000000020:0:0:f", b"t2", b"")


class Redis:
    """The generation reads ``Answers`` makes, answered with ``current`` (or an error)."""

    def __init__(self, current: Generation | None = G1) -> None:
        self.current = current
        self.reads = 0
        self.error: Exception | None = None

    async def generation(self) -> Generation | None:
        # Redis answers with the state when the read reaches it, the reply comes later.
        self.reads += 1
        current, error = self.current, self.error
        await asyncio.sleep(0)
        if error is not None:
            raise error
        return current


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())  # type: ignore[arg-type]


def test_a_kept_answer_is_served_while_its_generation_is_confirmed() -> None:
    """An answer kept in a generation is served again once a read confirms that generation."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 1 << 20)
        generation = await answers.confirmed()
        assert generation == G1
        assert answers.get("top", generation, None) is None
        answers.put("top", generation, 0x10, b"body")
        assert answers.get("top", await answers.confirmed(), None) == b"body"
        assert (answers.hits, answers.misses) == (1, 1)

    run(test)


def test_a_watermark_event_drops_every_kept_answer() -> None:
    """Each event on the projector's watermark channel (a write) drops what was kept."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 1 << 20)
        feed = WatermarkFeed(None, b"pomo:events", redis.generation)  # type: ignore[arg-type]
        feed.on_event(answers.clear)
        generation = await answers.confirmed()
        answers.get("top", generation, None)
        answers.put("top", generation, 0x10, b"body")
        assert len(answers) == 1
        feed._heard_text(b"0/10")  # the same LSN: a chunk of a large transaction
        assert len(answers) == 0 and answers.size == 0
        # A confirmation that was sent before the event still names the old generation; the
        # answer it finds kept was read after it, so it is no older than that read.
        assert answers.get("top", generation, None) is None

    run(test)


def test_another_generation_drops_every_kept_answer() -> None:
    """A read that finds Redis in another state (a batch, a rebuild) drops every kept answer."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 1 << 20)
        first = await answers.confirmed()
        answers.get("top", first, None)
        answers.put("top", first, 0x10, b"old")
        redis.current = G2
        second = await answers.confirmed()
        assert second == G2
        assert answers.get("top", second, None) is None
        assert len(answers) == 0
        # An answer read under the old generation, landing late, is never served as current.
        answers.put("top", first, 0x10, b"old")
        assert answers.get("top", second, None) is None

    run(test)


@pytest.mark.parametrize("lost", [None, "down"])
def test_nothing_is_served_when_redis_holds_no_watermark_or_does_not_answer(
    lost: str | None,
) -> None:
    """Flushed Redis (no watermark) or a failing read: no generation, and nothing kept."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 1 << 20)
        generation = await answers.confirmed()
        answers.get("top", generation, None)
        answers.put("top", generation, 0x10, b"body")
        if lost is None:
            redis.current = None
        else:
            redis.error = StoreUnavailable("redis", "connection refused")
        assert await answers.confirmed() is None
        assert len(answers) == 0

    run(test)


def test_an_answer_older_than_min_lsn_is_never_served() -> None:
    """A request whose min_lsn is past the kept answer's as_of does not get it."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 1 << 20)
        generation = await answers.confirmed()
        answers.get("top", generation, None)
        answers.put("top", generation, 0x10, b"body")
        assert answers.get("top", generation, 0x10) == b"body"
        assert answers.get("top", generation, 0x0F) == b"body"
        assert answers.get("top", generation, 0x11) is None

    run(test)


def test_requests_share_one_read_sent_after_they_arrived() -> None:
    """Concurrent requests share a read; a request arriving once it is sent waits for the next."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 1 << 20)
        together = await asyncio.gather(*(answers.confirmed() for _ in range(50)))
        assert together == [G1] * 50 and redis.reads == 1
        first = asyncio.ensure_future(answers.confirmed())
        while redis.reads < 2:  # until the first read is on its way
            await asyncio.sleep(0)
        redis.current = G2
        later = await answers.confirmed()
        assert await first == G1
        assert later == G2 and redis.reads == 3

    run(test)


def test_kept_answers_stay_within_the_memory_bound() -> None:
    """Bodies and their overhead never exceed ``max_bytes``; the oldest go first."""

    async def test() -> None:
        redis = Redis()
        body = b"x" * 600
        answers = Answers(redis.generation, 10 * (len(body) + ENTRY_OVERHEAD))
        generation = await answers.confirmed()
        answers.get(0, generation, None)
        for key in range(25):
            answers.put(key, generation, 0x10, body)
            assert answers.size <= answers.max_bytes
        assert len(answers) == 10
        assert answers.get(14, generation, None) is None
        assert answers.get(15, generation, None) == body
        answers.put("huge", generation, 0x10, b"x" * answers.max_bytes)
        assert answers.get("huge", generation, None) is None
        assert answers.size == 10 * (len(body) + ENTRY_OVERHEAD)

    run(test)


def test_a_zero_bound_keeps_nothing() -> None:
    """``PROJECTOR_API_ANSWER_CACHE_BYTES=0`` turns keeping off."""

    async def test() -> None:
        redis = Redis()
        answers = Answers(redis.generation, 0)
        assert not answers.enabled
        generation = await answers.confirmed()
        answers.get("top", generation, None)
        answers.put("top", generation, 0x10, b"body")
        assert answers.get("top", generation, None) is None

    run(test)


def test_a_miss_keeps_its_answer_under_the_generation_read_ahead_of_it() -> None:
    """A request with nothing kept reads at once; its answer is kept under the generation that
    the read sent ahead of its script found, and only a read that succeeded keeps anything."""

    async def test() -> None:
        redis = Redis()
        loop = asyncio.get_running_loop()
        reads: list[asyncio.Future[Any]] = []

        def read_soon() -> asyncio.Future[Any]:
            reads.append(loop.create_future())
            return reads[-1]

        answers = Answers(redis.generation, 1 << 20, read_soon=read_soon)
        assert not answers.peek("top", None)
        read = answers.read_soon()
        assert read is not None
        read.set_result(G2)
        answers.keep("top", read, 0x20, b"body")
        assert answers.peek("top", 0x20) and not answers.peek("top", 0x21)
        redis.current = G2
        assert answers.get("top", await answers.confirmed(), None) == b"body"
        failed = answers.read_soon()
        assert failed is not None
        failed.set_exception(StoreUnavailable("redis", "connection refused"))
        answers.keep("other", failed, 0x20, b"body")
        assert not answers.peek("other", None)

    run(test)
