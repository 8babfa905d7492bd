"""HTTP/1.1 connections that refuse what would cost too much: uvicorn's httptools protocol, bounded.

A request line longer than ``max_request_line`` bytes is answered 414; a head (request line
and headers) over ``max_head_bytes`` or with more than ``max_headers`` fields 431; a head not
complete ``head_timeout`` seconds after the connection opened (or after its previous response
ended) 408; a request beyond ``max_connections`` open connections 503 with ``Retry-After``.
Each refusal is a JSON error body, then the connection closes. Bytes are counted as they
arrive, so a refused head costs at most its limit plus one socket read of memory (the parser
alone would buffer a 32 MiB request line whole). A connection's writes of one event-loop turn
leave in one system call (uvicorn writes a response's head and body apart).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from projector.settings import Settings

_RETRY_AFTER = b"1"


@dataclass(frozen=True, slots=True)
class HttpBounds:
    """The limits of one connection's requests (bytes, fields, seconds, connections)."""

    max_request_line: int
    max_head_bytes: int
    max_headers: int
    head_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> HttpBounds:
        return cls(
            max_request_line=settings.api_max_request_line,
            max_head_bytes=settings.api_max_header_bytes,
            max_headers=settings.api_max_headers,
            head_timeout=settings.api_header_timeout,
            max_connections=settings.api_max_connections,
        )

    def protocol(self) -> Callable[..., asyncio.Protocol]:
        """What uvicorn's ``http`` option takes: a protocol factory (picklable, so that
        ``--workers`` can hand it to each worker process)."""
        return partial(BoundedHttpProtocol, bounds=self)


class _Coalesced:
    """A connection's transport whose writes of one event-loop turn go out in one system call.

    uvicorn writes a response's head and its body separately, and each write is a system call
    (the larger part of a small response's cost): held until the end of the turn, they leave
    as one. ``close`` sends what is held first; everything else is the transport's own.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = [data]
            self._loop.call_soon(self._send)
        else:
            held.append(data)

    def writelines(self, lines: list[bytes]) -> None:
        for data in lines:
            self.write(data)

    def close(self) -> None:
        self._send()
        self._transport.close()

    def _send(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that is refused."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``HttpBounds``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        bounds: HttpBounds,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._bounds = bounds
        self._in_head = True  # the bytes arriving belong to a request's head
        self._head_bytes = 0
        self._head_fields = 0
        self._head_size = 0  # bytes of the request line and fields parsed so far
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Coalesced(transport, self.loop))  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self._bounds.max_head_bytes:
            self._refuse(
                431,
                "headers_too_large",
                f"the request head is larger than {self._bounds.max_head_bytes} bytes",
            )

    def send_400_response(self, msg: str) -> None:
        """Every parse error (and a refusal raised from a callback) as a JSON body."""
        refusal, self._refusal = self._refusal, None
        status, code, message = refusal or (400, "bad_request", "malformed HTTP request")
        self._refuse(status, code, message)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_fields = 0
        self._head_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        limit = self._bounds.max_request_line
        if len(self.url) + len(url) > limit:
            self._refusal = (414, "request_line_too_long", f"the URL is longer than {limit} bytes")
            raise _Refused
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_fields > self._bounds.max_headers:
            self._refusal = (
                431,
                "headers_too_large",
                f"the request has more than {self._bounds.max_headers} header fields",
            )
            raise _Refused
        if self._head_size > self._bounds.max_head_bytes:
            self._refusal = (
                431,
                "headers_too_large",
                f"the request head is larger than {self._bounds.max_head_bytes} bytes",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        limit = self._bounds.max_connections
        if len(self.connections) >= limit or len(self.tasks) >= limit:
            self._refusal = (
                503,
                "too_many_connections",
                f"this server process holds its limit of {limit} connections; retry shortly",
            )
            raise _Refused
        super().on_headers_complete()

    # -- internals -----------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._bounds.head_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        busy = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        if busy or self.transport.is_closing():
            return  # a response is on its way; its end arms the timer again
        self._refuse(
            408,
            "request_timeout",
            f"the request head did not arrive within {self._bounds.head_timeout:g} s",
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error body and close the connection."""
        self._in_head = False
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps(
            {"error": {"status": status, "code": code, "message": message}},
            separators=(",", ":"),
        ).encode()
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode(),
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"x-content-type-options: nosniff",
            b"cache-control: no-store",
            b"connection: close",
        ]
        if status == 503:
            head.append(b"retry-after: " + _RETRY_AFTER)
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
