"""The route table, the paths it matches, and raw parameters turned into typed queries.

``ROUTES`` is the one list of what the API answers: each ``Route`` is a path template, the
endpoint that answers it and the parameters it takes (``api.parameters``). Matching, the query
parameters each route accepts and the OpenAPI document's paths and parameters are all derived
from it. A request is matched with a few lookups: its raw path in a dict of the paths without
parameters, else its segments against the few routes with as many (split before
percent-decoding, so a user id may contain an encoded ``/``). Everything
here is a pure function of the request's bytes (and, for the default bucket, the zone and the
clock); every malformed input is a ``BadParameter``, an unknown path a ``NotFound``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from zoneinfo import ZoneInfo

from api.errors import BadParameter, NotFound
from api.parameters import (
    AROUND,
    ASSET,
    BUCKET,
    LIMIT,
    MEMBER,
    MEMBERS,
    MIN_LSN,
    OFFSET,
    PERIOD,
    USER_ID,
    Parameter,
    clip,
    decode,
)
from api.parameters import BOARD as BOARD_NAME
from projector.core.boards import Board
from projector.core.buckets import Period

UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A path template (the name used in metrics, logs and the OpenAPI document), the
    ``App`` endpoint that answers it, and the parameters it takes in document order. A route
    whose ``query`` is False leaves its query string to the endpoint (ignored, or read as
    the page's assets read ``?v=``); any other refuses query parameters it does not take."""

    path: str
    endpoint: str
    parameters: tuple[Parameter, ...] = ()
    query: bool = True
    # Whether it also answers POST, reading a JSON body (``App`` bounds its size).
    body: bool = False
    # Derived: the query parameters it accepts, and whether ``{board}`` names the board.
    accepts: frozenset[str] = field(init=False)
    named_board: bool = field(init=False)

    def __post_init__(self) -> None:
        in_path = [p.name for p in self.parameters if p.location == "path"]
        if re.findall(r"\{([a-z_]+)\}", self.path) != in_path:
            raise ValueError(f"route {self.path}: its path parameters are {in_path}, in order")
        names = frozenset(p.name for p in self.parameters if p.location == "query")
        object.__setattr__(self, "accepts", names)
        object.__setattr__(self, "named_board", BOARD_NAME in self.parameters)


BOARD = Route("/v1/leaderboards/{period}", "board", (PERIOD, BUCKET, LIMIT, OFFSET, MIN_LSN))
STANDING = Route(
    "/v1/leaderboards/{period}/users/{user_id}",
    "standing",
    (PERIOD, USER_ID, BUCKET, AROUND, MIN_LSN),
)
EVENTS = Route("/v1/leaderboards/{period}/events", "events", (PERIOD, BUCKET, LIMIT))
USER = Route("/v1/users/{user_id}", "user", (USER_ID, MIN_LSN))
BOARDS = Route("/v1/boards", "boards")
BOARD_PAGE = Route(
    "/v1/boards/{board}/{period}", "board", (BOARD_NAME, PERIOD, BUCKET, LIMIT, OFFSET, MIN_LSN)
)
MEMBER_STANDING = Route(
    "/v1/boards/{board}/{period}/members/{member}",
    "standing",
    (BOARD_NAME, PERIOD, MEMBER, BUCKET, AROUND, MIN_LSN),
)
BOARD_EVENTS = Route(
    "/v1/boards/{board}/{period}/events", "events", (BOARD_NAME, PERIOD, BUCKET, LIMIT)
)
MEMBER_EVENTS = Route(
    "/v1/boards/{board}/{period}/members/{member}/events",
    "member_events",
    (BOARD_NAME, PERIOD, MEMBER, BUCKET),
)
GROUP = Route(
    "/v1/boards/{board}/{period}/group",
    "group",
    (BOARD_NAME, PERIOD, MEMBERS, BUCKET, MIN_LSN),
    body=True,
)
PAGE = Route("/", "page", query=False)
STATIC = Route("/static/{asset}", "asset", (ASSET,), query=False)
HEALTHZ = Route("/healthz", "health", query=False)
READYZ = Route("/readyz", "readiness", query=False)
METRICS = Route("/metrics", "metrics", query=False)
OPENAPI = Route("/openapi.json", "openapi", query=False)

ROUTES = (
    BOARD,
    STANDING,
    EVENTS,
    USER,
    PAGE,
    STATIC,
    HEALTHZ,
    READYZ,
    METRICS,
    OPENAPI,
    BOARDS,
    BOARD_PAGE,
    MEMBER_STANDING,
    BOARD_EVENTS,
    GROUP,
    MEMBER_EVENTS,
)


# A route with path parameters, for matching: its literal segments (a getter and their
# values), its argument's position when it has one (else -1) and a getter of its arguments,
# and whether an empty argument matches nothing.
_Shape = tuple[
    Callable[[list[bytes]], tuple[bytes, ...]],
    tuple[bytes, ...],
    int,
    Callable[[list[bytes]], tuple[bytes, ...]],
    Route,
    bool,
]


def _matchers(table: tuple[Route, ...]) -> tuple[dict[bytes, Route], dict[int, list[_Shape]]]:
    """The routes without path parameters by path, and the others by number of segments."""
    exact: dict[bytes, Route] = {}
    by_length: dict[int, list[_Shape]] = {}
    for route in table:
        segments = route.path.encode().split(b"/")
        holes = [i for i, part in enumerate(segments) if part.startswith(b"{")]
        if not holes:
            exact[route.path.encode()] = route
            continue
        fixed = [i for i in range(len(segments)) if i not in holes]
        # The leading empty segment and one literal at least: itemgetter gives a tuple.
        assert len(fixed) >= 2, f"route {route.path} starts with a parameter"
        shape = (
            itemgetter(*fixed),
            tuple(segments[i] for i in fixed),
            holes[0] if len(holes) == 1 else -1,
            itemgetter(*holes),
            route,
            any(p.nonempty for p in route.parameters),
        )
        by_length.setdefault(len(segments), []).append(shape)
    return exact, by_length


_EXACT, _BY_LENGTH = _matchers(ROUTES)


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


@dataclass(frozen=True, slots=True)
class GroupQuery:
    """Some members ranked among themselves on one board, each with their rank on it too."""

    period: Period
    bucket: str
    members: tuple[str, ...]
    min_lsn: int | None
    board: Board


Query = BoardQuery | StandingQuery | UserQuery | GroupQuery


def resolve(raw_path: bytes) -> tuple[Route, tuple[bytes, ...]]:
    """The route of ``raw_path`` and its path arguments (still percent-encoded)."""
    route = _EXACT.get(raw_path)
    if route is not None:
        return route, ()
    parts = raw_path.split(b"/")
    for literals, expected, single, arguments, route, nonempty in _BY_LENGTH.get(len(parts), ()):
        if literals(parts) == expected:
            args = (parts[single],) if single > 0 else arguments(parts)
            if nonempty and not all(args):
                break
            return route, args
    raise NotFound(f"no route for {_shown(raw_path)}; see /openapi.json")


def parse_query_string(raw: bytes, route: Route) -> dict[str, str]:
    """Decode ``raw`` (``a=1&b=2``) into parameters the route accepts, each given once."""
    params: dict[str, str] = {}
    if not raw:
        return params
    accepts = route.accepts
    for pair in raw.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name = decode(raw_name.replace(b"+", b" "), "query")
        if name not in accepts:
            expected = ", ".join(sorted(accepts)) or "none"
            raise BadParameter(
                name[:50], f"unknown query parameter {name[:50]!r}; this route takes {expected}"
            )
        if name in params:
            raise BadParameter(name, f"query parameter {name!r} is given more than once")
        params[name] = decode(raw_value.replace(b"+", b" "), name)
    return params


def board_named(raw: bytes, boards: Mapping[str, Board]) -> Board:
    """The declared board a path names; 404 for another name."""
    name = decode(raw, BOARD_NAME.name)
    board = boards.get(name)
    if board is None:
        raise NotFound(f"no board named {clip(repr(name), 60)}; see /v1/boards")
    return board


def board_query(
    args: tuple[bytes, ...],
    params: dict[str, str],
    tz: ZoneInfo,
    board: Board,
    now: datetime | None = None,
    *,
    alias: bool = True,
) -> BoardQuery:
    """The ``BoardQuery`` of ``GET /v1/leaderboards/{period}`` (``args``: the period) or of
    ``GET /v1/boards/{board}/{period}``."""
    period = PERIOD.parse(args[0], board)
    return BoardQuery(
        period=period,
        bucket=BUCKET.parse(period, params, tz, now),
        limit=LIMIT.parse(params),
        offset=OFFSET.parse(params),
        min_lsn=MIN_LSN.parse(params),
        board=board,
        alias=alias,
    )


def standing_query(
    args: tuple[bytes, ...],
    params: dict[str, str],
    tz: ZoneInfo,
    board: Board,
    now: datetime | None = None,
    *,
    alias: bool = True,
) -> StandingQuery:
    """The ``StandingQuery`` of ``GET /v1/leaderboards/{period}/users/{user_id}``
    (``args``: period and member) or of ``GET /v1/boards/{board}/{period}/members/{member}``."""
    period = PERIOD.parse(args[0], board)
    return StandingQuery(
        period=period,
        bucket=BUCKET.parse(period, params, tz, now),
        user_id=(USER_ID if alias else MEMBER).parse(args[1]),
        around=AROUND.parse(params),
        min_lsn=MIN_LSN.parse(params),
        board=board,
        alias=alias,
    )


def group_query(
    args: tuple[bytes, ...],
    params: dict[str, str],
    tz: ZoneInfo,
    board: Board,
    now: datetime | None = None,
    *,
    body: bytes | None = None,
) -> GroupQuery:
    """The ``GroupQuery`` of ``GET /v1/boards/{board}/{period}/group`` (``args``: the period),
    or of ``POST`` with the members in ``body`` (then not in the query string)."""
    period = PERIOD.parse(args[0], board)
    if body is None:
        members = MEMBERS.parse(params)
    elif MEMBERS.name in params:
        raise BadParameter(MEMBERS.name, "give members in the body or the query, not both")
    else:
        members = MEMBERS.parse_body(body)
    return GroupQuery(
        period=period,
        bucket=BUCKET.parse(period, params, tz, now),
        members=members,
        min_lsn=MIN_LSN.parse(params),
        board=board,
    )


def user_query(args: tuple[bytes, ...], params: dict[str, str], board: Board) -> UserQuery:
    """The ``UserQuery`` of ``GET /v1/users/{user_id}``."""
    return UserQuery(user_id=USER_ID.parse(args[0]), min_lsn=MIN_LSN.parse(params), board=board)


def _shown(raw_path: bytes) -> str:
    return clip(raw_path.decode("utf-8", "backslashreplace"), 100)
