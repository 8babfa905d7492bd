"""A connection's writes of one loop turn leave together (``api.bounded_http``): a response's
head and body in one system call, nothing held past the turn or past ``close``."""

from __future__ import annotations

import asyncio

from api.bounded_http import _Coalesced


class Transport:
    """Records what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_writes_of_one_turn_leave_in_one_call_and_close_sends_what_is_held() -> None:
    """Head and body written in one turn reach the transport as one write at the turn's end;
    ``close`` sends what is held first; other attributes are the transport's."""

    async def test() -> None:
        transport = Transport()
        coalesced = _Coalesced(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        coalesced.write(b"HTTP/1.1 200 OK\r\n\r\n")
        coalesced.write(b"{}")
        assert transport.writes == []
        await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        coalesced.write(b"last")
        coalesced.close()
        assert transport.writes[-1] == b"last" and transport.closed
        await asyncio.sleep(0)
        assert len(transport.writes) == 2
        assert coalesced.get_extra_info("peername") == "info peername"

    asyncio.run(test())
