"""Paths to routes and raw parameters to typed queries; every malformed input is a ``BadParameter``.

Pure functions of the request's bytes (and, for the default bucket, the zone and the clock).
Path segments are split before percent-decoding, so a user id may contain an encoded ``/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_to_bytes
from zoneinfo import ZoneInfo

from api.errors import BadParameter, NotFound
from projector.core.boards import Board
from projector.core.buckets import ALL_BUCKET, Period, current_bucket, parse_bucket, parse_period
from projector.core.lsn import parse_lsn

# Route templates: the names used in metrics, logs and the OpenAPI document.
BOARD = "/v1/leaderboards/{period}"
STANDING = "/v1/leaderboards/{period}/users/{user_id}"
EVENTS = "/v1/leaderboards/{period}/events"
BOARDS = "/v1/boards"
BOARD_PAGE = "/v1/boards/{board}/{period}"
MEMBER = "/v1/boards/{board}/{period}/members/{member}"
BOARD_EVENTS = "/v1/boards/{board}/{period}/events"
USER = "/v1/users/{user_id}"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"
PAGE = "/"
STATIC = "/static/{asset}"
UNMATCHED = "unmatched"

MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
MAX_OFFSET = 1_000_000_000
MAX_AROUND = 100
MAX_USER_ID = 200

_OPERATIONS = {
    b"/healthz": HEALTHZ,
    b"/readyz": READYZ,
    b"/metrics": METRICS,
    b"/openapi.json": OPENAPI,
    b"/": PAGE,
}
_ALLOWED = {
    BOARD: frozenset({"bucket", "limit", "offset", "min_lsn"}),
    STANDING: frozenset({"bucket", "around", "min_lsn"}),
    EVENTS: frozenset({"bucket", "limit"}),
    BOARD_PAGE: frozenset({"bucket", "limit", "offset", "min_lsn"}),
    MEMBER: frozenset({"bucket", "around", "min_lsn"}),
    BOARD_EVENTS: frozenset({"bucket", "limit"}),
    USER: frozenset({"min_lsn"}),
}
_DIGITS = re.compile(r"[0-9]{1,12}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class BoardQuery:
    """One page of a leaderboard, in rank order; ``alias``: asked through the default
    board's historical routes (members shown as ``user_id``, labels as ``display_name``)."""

    period: Period
    bucket: str
    limit: int
    offset: int
    min_lsn: int | None
    board: Board
    alias: bool = True


@dataclass(frozen=True, slots=True)
class StandingQuery:
    """One user's place on a leaderboard with ``around`` neighbours either side."""

    period: Period
    bucket: str
    user_id: str
    around: int
    min_lsn: int | None
    board: Board
    alias: bool = True


@dataclass(frozen=True, slots=True)
class UserQuery:
    """One user's score and rank on the current board of every period."""

    user_id: str
    min_lsn: int | None
    board: Board


Query = BoardQuery | StandingQuery | UserQuery


def resolve(raw_path: bytes) -> tuple[str, list[bytes]]:
    """Return the route template of ``raw_path`` and its (still percent-encoded) arguments."""
    operation = _OPERATIONS.get(raw_path)
    if operation is not None:
        return operation, []
    parts = raw_path.split(b"/")
    if len(parts) == 3 and parts[1] == b"static" and parts[2]:
        return STATIC, [parts[2]]
    # parts[0] is the empty string before the leading slash
    if len(parts) >= 3 and parts[0] == b"" and parts[1] == b"v1" and parts[2] == b"boards":
        if len(parts) == 3:
            return BOARDS, []
        if len(parts) == 5:
            return BOARD_PAGE, [parts[3], parts[4]]
        if len(parts) == 6 and parts[5] == b"events":
            return BOARD_EVENTS, [parts[3], parts[4]]
        if len(parts) == 7 and parts[5] == b"members":
            return MEMBER, [parts[3], parts[4], parts[6]]
    if len(parts) >= 4 and parts[0] == b"" and parts[1] == b"v1":
        if parts[2] == b"leaderboards":
            if len(parts) == 4:
                return BOARD, [parts[3]]
            if len(parts) == 6 and parts[4] == b"users":
                return STANDING, [parts[3], parts[5]]
            if len(parts) == 5 and parts[4] == b"events":
                return EVENTS, [parts[3]]
        elif parts[2] == b"users" and len(parts) == 4:
            return USER, [parts[3]]
    raise NotFound(f"no route for {_shown(raw_path)}; see /openapi.json")


def parse_query_string(raw: bytes, route: str) -> dict[str, str]:
    """Decode ``raw`` (``a=1&b=2``) into parameters the route accepts, each given once."""
    allowed = _ALLOWED.get(route, frozenset())
    params: dict[str, str] = {}
    if not raw:
        return params
    for pair in raw.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name = _decode(raw_name.replace(b"+", b" "), "query")
        if name not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise BadParameter(
                name[:50], f"unknown query parameter {name[:50]!r}; this route takes {expected}"
            )
        if name in params:
            raise BadParameter(name, f"query parameter {name!r} is given more than once")
        params[name] = _decode(raw_value.replace(b"+", b" "), name)
    return params


def board_named(raw: bytes, boards: Mapping[str, Board]) -> Board:
    """The declared board a path names; 404 for another name."""
    name = _decode(raw, "board")
    board = boards.get(name)
    if board is None:
        raise NotFound(f"no board named {_clip(repr(name), 60)}; see /v1/boards")
    return board


def board_query(
    args: list[bytes],
    params: dict[str, str],
    tz: ZoneInfo,
    board: Board,
    now: datetime | None = None,
    *,
    alias: bool = True,
) -> BoardQuery:
    """The ``BoardQuery`` of ``GET /v1/leaderboards/{period}`` (``args``: the period) or of
    ``GET /v1/boards/{board}/{period}``."""
    period = _period(args[0], board)
    return BoardQuery(
        period=period,
        bucket=_bucket(period, params.get("bucket"), tz, now),
        limit=_integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=_integer(params, "offset", 0, 0, MAX_OFFSET),
        min_lsn=_min_lsn(params),
        board=board,
        alias=alias,
    )


def standing_query(
    args: list[bytes],
    params: dict[str, str],
    tz: ZoneInfo,
    board: Board,
    now: datetime | None = None,
    *,
    alias: bool = True,
) -> StandingQuery:
    """The ``StandingQuery`` of ``GET /v1/leaderboards/{period}/users/{user_id}``
    (``args``: period and member) or of ``GET /v1/boards/{board}/{period}/members/{member}``."""
    period = _period(args[0], board)
    return StandingQuery(
        period=period,
        bucket=_bucket(period, params.get("bucket"), tz, now),
        user_id=_user_id(args[1], "user_id" if alias else "member"),
        around=_integer(params, "around", 0, 0, MAX_AROUND),
        min_lsn=_min_lsn(params),
        board=board,
        alias=alias,
    )


def user_query(args: list[bytes], params: dict[str, str], board: Board) -> UserQuery:
    """The ``UserQuery`` of ``GET /v1/users/{user_id}``."""
    return UserQuery(user_id=_user_id(args[0]), min_lsn=_min_lsn(params), board=board)


# --- parameters -------------------------------------------------------------------------------


def _period(raw: bytes, board: Board) -> Period:
    text = _decode(raw, "period")
    try:
        period = parse_period(text)
    except ValueError as exc:
        raise BadParameter("period", _clip(str(exc))) from None
    if period not in board.periods:
        kept = ", ".join(p.value for p in board.periods)
        raise BadParameter("period", f"board {board.name!r} keeps the periods {kept}, not {text}")
    return period


def _bucket(period: Period, text: str | None, tz: ZoneInfo, now: datetime | None) -> str:
    if text is None:
        return (
            ALL_BUCKET
            if period == Period.ALL
            else current_bucket(period, tz, now or datetime.now(UTC))
        )
    try:
        return parse_bucket(period, text)
    except ValueError as exc:
        raise BadParameter("bucket", _clip(str(exc))) from None


def _integer(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    value = int(text) if _DIGITS.fullmatch(text) else None
    if value is None or not low <= value <= high:
        raise BadParameter(
            name, f"{name} must be a whole number from {low} to {high}, not {_clip(repr(text))}"
        )
    return value


def _min_lsn(params: dict[str, str]) -> int | None:
    text = params.get("min_lsn")
    if text is None:
        return None
    try:
        return parse_lsn(text)
    except ValueError:
        raise BadParameter(
            "min_lsn",
            f"min_lsn must be an LSN as PostgreSQL writes it (hexadecimal X/Y, like 16/B374D848), "
            f"not {_clip(repr(text))}",
        ) from None


def _user_id(raw: bytes, name: str = "user_id") -> str:
    user_id = _decode(raw, name)
    if not user_id:
        raise BadParameter(name, f"{name} must not be empty")
    if len(user_id) > MAX_USER_ID:
        raise BadParameter(
            name, f"{name} is {len(user_id)} characters long; the limit is {MAX_USER_ID}"
        )
    if _CONTROL.search(user_id):
        raise BadParameter(name, f"{name} must not contain control characters")
    return user_id


def _decode(raw: bytes, parameter: str) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter(
            parameter, f"{parameter} is not valid UTF-8 once percent-decoded"
        ) from None


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(raw_path: bytes) -> str:
    return _clip(raw_path.decode("utf-8", "backslashreplace"), 100)
