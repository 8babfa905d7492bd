"""Automatic pipelining: Redis commands issued in the same event-loop turn share one round trip.

Under load many requests reach their Redis call in the same turn of the loop; sending their
commands in one write, on one pooled ``redis.asyncio`` connection, and reading the replies in
order costs one system call each way instead of one per request (ioredis calls this
auto-pipelining). A lone command waits for nothing: the batch is flushed at the end of the
turn. A caller that gives up (its timeout) leaves the batch to finish; a failed batch fails
every command still waiting in it and drops its connection, so no reply is read out of turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

_Batch = list[tuple[tuple[Any, ...], "asyncio.Future[Any]"]]


class AutoPipeline:
    """``execute_command`` over ``pool``'s connections, batched per loop turn."""

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._pending: _Batch = []
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute_command(self, *command: Any) -> Any:
        """Send ``command`` with the others of this turn; return its reply or raise its error.

        ``command``: a one-word command name (not split as redis-py splits ``"CONFIG GET"``)
        and its arguments, each str, bytes, int or float."""
        return await self.submit(*command)

    def submit(self, *command: Any) -> asyncio.Future[Any]:
        """Queue ``command`` now; the future gets its reply. The commands of one turn are
        sent in the order they were queued, on one connection: Redis runs them in that order."""
        loop = self._loop or self._bind()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((command, future))
        return future

    async def aclose(self) -> None:
        """Wait for the batches in flight, then close the pool's connections."""
        if self._running:
            await asyncio.wait(self._running, timeout=self._timeout)
        await self._pool.aclose()

    def _bind(self) -> asyncio.AbstractEventLoop:
        # Once: on Python 3.11 each get_running_loop() asks the kernel for the PID.
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, batch: _Batch) -> None:
        connection: AbstractConnection | None = None
        try:
            async with asyncio.timeout(self._timeout):
                connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                # One C call per command: redis-py's pack_commands takes a dozen Python steps
                # per argument.
                await connection.send_packed_command(
                    b"".join([hiredis.pack_command(command) for command, _ in batch])
                )
                for _, future in batch:
                    try:
                        reply = await connection.read_response()
                    except ResponseError as exc:  # this command's error; the stream is intact
                        _settle(future, exc=exc)
                    else:
                        _settle(future, reply)
        except (Exception, asyncio.CancelledError) as exc:
            if connection is not None:
                await connection.disconnect(nowait=True)
            error = exc if isinstance(exc, Exception) else RedisConnectionError("cancelled")
            for _, future in batch:
                _settle(future, exc=error)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if connection is not None:
                await self._pool.release(connection)


def _settle(
    future: asyncio.Future[Any], reply: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():  # its caller gave up
        return
    if exc is None:
        future.set_result(reply)
    else:
        future.set_exception(exc)
