"""AutoPipeline against a real Redis: batched replies reach the right callers, errors stay
with their command, and callers that give up or a Redis that dies leave no reply out of turn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from api.autopipeline import AutoPipeline
from harness import servers


def run(redis_url: str, body: Callable[[AutoPipeline], Awaitable[Any]]) -> Any:
    """Run ``body`` with an AutoPipeline on ``redis_url`` in a fresh event loop."""

    async def main() -> Any:
        pool = aioredis.ConnectionPool.from_url(redis_url, socket_connect_timeout=1)
        pipeline = AutoPipeline(pool, timeout=2.0)
        try:
            return await body(pipeline)
        finally:
            await pipeline.aclose()

    return asyncio.run(main())


@pytest.fixture
def filled(redis_url: str) -> str:
    """A Redis holding h:0..h:299 = i and a sorted set named z."""
    with redis.Redis.from_url(redis_url) as client:
        client.mset({f"h:{i}": i for i in range(300)})
        client.zadd("z", {"a": 1})
    return redis_url


def test_concurrent_commands_get_their_own_replies_in_few_connections(filled: str) -> None:
    """300 concurrent GETs each get their own value, over far fewer connections."""

    async def body(pipeline: AutoPipeline) -> tuple[list[Any], int]:
        replies = await asyncio.gather(
            *(pipeline.execute_command("GET", f"h:{i}") for i in range(300))
        )
        return replies, len(pipeline._pool._available_connections)  # type: ignore[attr-defined]

    replies, connections = run(filled, body)
    assert replies == [str(i).encode() for i in range(300)]
    assert connections < 10


def test_an_error_reply_stays_with_its_command(filled: str) -> None:
    """A WRONGTYPE among others fails that command only."""

    async def body(pipeline: AutoPipeline) -> list[Any]:
        return await asyncio.gather(
            pipeline.execute_command("GET", "h:1"),
            pipeline.execute_command("GET", "z"),
            pipeline.execute_command("GET", "h:2"),
            return_exceptions=True,
        )

    first, wrong, third = run(filled, body)
    assert (first, third) == (b"1", b"2")
    assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)


def test_a_caller_that_gives_up_leaves_the_others_in_order(filled: str) -> None:
    """Cancelled callers' replies are read and dropped; later commands get their own."""

    async def body(pipeline: AutoPipeline) -> list[Any]:
        doomed = [asyncio.ensure_future(pipeline.execute_command("GET", "h:7")) for _ in range(5)]
        kept = asyncio.ensure_future(pipeline.execute_command("GET", "h:8"))
        await asyncio.sleep(0)
        for task in doomed:
            task.cancel()
        first = await kept
        later = await asyncio.gather(*(pipeline.execute_command("GET", f"h:{i}") for i in (9, 10)))
        return [first, *later]

    assert run(filled, body) == [b"8", b"9", b"10"]


def test_commands_after_redis_restarts_use_fresh_connections(
    filled: str, redis_server: servers.RedisServer
) -> None:
    """After kill -9 and a restart, commands succeed on new connections."""

    async def body(pipeline: AutoPipeline) -> Any:
        assert await pipeline.execute_command("GET", "h:3") == b"3"
        await asyncio.to_thread(redis_server.kill9)
        with pytest.raises((redis.ConnectionError, OSError)):
            await pipeline.execute_command("GET", "h:3")
        await asyncio.to_thread(redis_server.start)
        return await pipeline.execute_command("SET", "after", "1")

    assert run(filled, body) == b"OK"
