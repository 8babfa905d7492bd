"""The answers the read API gives instead of a leaderboard, each with its HTTP status.

Every ``ApiError`` becomes a JSON body ``{"error": {"status", "code", "message"[, "parameter"]}}``;
``BadParameter`` names the query or path parameter at fault. ``StoreUnavailable`` is raised by a
store reader when its server cannot answer; it never reaches a client as such.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from api.bodies import Error


class ApiError(Exception):
    """A request the API answers with an error status and a JSON body."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> Error:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


class BadParameter(ApiError):
    """A path or query parameter is malformed or out of range (400)."""

    status = 400
    code = "bad_parameter"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter

    def body(self) -> Error:
        body = super().body()
        body["error"]["parameter"] = self.parameter
        return body


class NotFound(ApiError):
    """No route matches the path (404)."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    """The route exists but answers only GET and HEAD (and POST where it takes a body)
    (405)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: bytes = b"GET, HEAD") -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", self.allow)]


class BodyTooLarge(ApiError):
    """A request body over the route's limit (413)."""

    status = 413
    code = "body_too_large"


class Unavailable(ApiError):
    """Neither Redis nor PostgreSQL can answer now (503); retrying shortly can succeed."""

    status = 503
    code = "unavailable"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class BoardUnavailable(ApiError):
    """The board's table no longer fits its definition (a column it reads was renamed,
    dropped or retyped): the projector dropped it until the schema or the definition is
    fixed (503). The other boards answer as usual."""

    status = 503
    code = "board_unavailable"

    def __init__(self, board: str) -> None:
        super().__init__(
            f"board {board!r} cannot be served now: its table no longer fits its definition"
            if board
            else "this board cannot be served now: its table no longer fits its definition"
        )
        self.board = board

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"30")]


class FallbackBusy(Unavailable):
    """This process runs and queues as many PostgreSQL fallback statements as it may (503)."""

    code = "fallback_busy"


class TooManyStreams(ApiError):
    """The process, or this client address, holds as many event streams as it may (429)."""

    status = 429
    code = "too_many_streams"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"%d" % self.retry_after)]


class StoreUnavailable(Exception):
    """Redis or PostgreSQL could not answer.

    ``down`` tells an unreachable server (worth remembering for a while) from a busy one.
    """

    def __init__(self, store: str, message: str, *, down: bool = True) -> None:
        super().__init__(f"{store}: {message}")
        self.store = store
        self.down = down


class StoreBusy(StoreUnavailable):
    """A store reader refused a statement: as many as it may run or queue are under way."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(store, message, down=False)


class NotBuilt(Exception):
    """Redis holds no watermark: the projector has not built it (yet, or again)."""
