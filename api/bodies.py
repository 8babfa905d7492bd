"""The JSON bodies the API answers, as TypedDicts: the one description of their shape.

mypy checks the code that builds them against these types, and ``api.openapi`` derives the
document's component schemas from them (pydantic's ``TypeAdapter``, once, when the app is
made): ``Annotated`` metadata carries the bounds, patterns, examples and descriptions (class
docstrings describe the code, not the API), and a class marked ``_closed`` allows no other
properties. At run time they are plain dicts:
nothing here is on a request's path.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from api.parameters import LSN_PATTERN

_closed = with_config(ConfigDict(extra="forbid"))

Source = Annotated[
    Literal["redis", "postgres"],
    Field(description="The store that answered: the Redis projection, or the PostgreSQL fallback."),
]
_Instant = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
_Rank = Annotated[int, Field(ge=1)]
_Score = Annotated[int, Field(ge=0)]
_BucketId = Annotated[str, Field(examples=["2026-11-26", "2026-W48", "2026-11", "2026", "all"])]
_PeriodStart = Annotated[
    _Instant | None,
    Field(
        description="First instant of the bucket (ISO 8601 with the configured zone's offset); "
        "null for the all-time period."
    ),
]
_PeriodEnd = Annotated[
    _Instant | None,
    Field(
        description="First instant after the bucket; null for the all-time period (and for a "
        "bucket ending after 9999-12-31)."
    ),
]
_Total = Annotated[int, Field(ge=0, description="Members on the whole board.")]


class ErrorDetail(TypedDict):
    """What went wrong: the HTTP status, a code to branch on, a sentence, the parameter."""

    status: int
    code: Annotated[str, Field(examples=["bad_parameter", "unavailable", "board_unavailable"])]
    message: str
    parameter: NotRequired[Annotated[str, Field(description="The parameter at fault (400 only).")]]


class Error(TypedDict):
    """The body of every error answer."""

    error: ErrorDetail


@with_config(
    ConfigDict(
        extra="forbid",
        json_schema_extra={
            "description": "The state the answer reflects: every commit up to `lsn`."
        },
    )
)
class AsOf(TypedDict):
    """The position an answer reflects (``api.boards.AsOf`` rendered)."""

    lsn: Annotated[str, Field(pattern=LSN_PATTERN)]
    commit_time: Annotated[
        _Instant | None,
        Field(
            description="When the last commit included was made (UTC); for PostgreSQL answers, "
            "the time of the query."
        ),
    ]


@_closed
class Entry(TypedDict):
    """One row of a leaderboard."""

    rank: _Rank
    user_id: str
    display_name: str | None
    score: Annotated[int, Field(ge=1)]


@_closed
class Leaderboard(TypedDict):
    """A page of a leaderboard (``GET /v1/leaderboards/{period}``)."""

    period: str
    bucket: _BucketId
    period_start: _PeriodStart
    period_end: _PeriodEnd
    total: _Total
    limit: int
    offset: int
    entries: list[Entry]
    source: Source
    as_of: AsOf


@_closed
class Standing(TypedDict):
    """A user's place on a leaderboard with neighbours."""

    period: str
    bucket: _BucketId
    period_start: _PeriodStart
    period_end: _PeriodEnd
    total: _Total
    user_id: str
    display_name: str | None
    rank: Annotated[
        _Rank | None, Field(description="Null when the user has no pomodoros in the bucket.")
    ]
    score: _Score
    around: int
    above: Annotated[
        list[Entry], Field(description="Up to `around` entries just above, in rank order.")
    ]
    below: Annotated[
        list[Entry], Field(description="Up to `around` entries just below, in rank order.")
    ]
    source: Source
    as_of: AsOf


@_closed
class PeriodStanding(TypedDict):
    """A user's score and rank in the current bucket of one period."""

    bucket: _BucketId
    period_start: _PeriodStart
    period_end: _PeriodEnd
    total: _Total
    rank: _Rank | None
    score: _Score


@_closed
class Periods(TypedDict):
    """A user's standing per period."""

    day: PeriodStanding
    week: PeriodStanding
    month: PeriodStanding
    year: PeriodStanding
    all: PeriodStanding


@_closed
class UserPeriods(TypedDict):
    """A user's standing in the current bucket of every period."""

    user_id: str
    display_name: str | None
    periods: Periods
    source: Source
    as_of: AsOf


class RedisReadiness(TypedDict):
    """Whether Redis answers, and how far the projection got."""

    up: bool
    built: NotRequired[Annotated[bool, Field(description="Whether the projector has built Redis.")]]
    as_of: NotRequired[AsOf]
    error: NotRequired[str]
    unavailable_boards: NotRequired[
        Annotated[
            dict[str, str],
            Field(
                description="Declared boards the projector cannot project now, each with its "
                "problem and fix."
            ),
        ]
    ]


class PostgresReadiness(TypedDict):
    """Whether PostgreSQL answers."""

    up: bool
    as_of: NotRequired[AsOf]
    error: NotRequired[str]


class Readiness(TypedDict):
    """The body of ``/readyz``."""

    ready: bool
    source: Source | None
    redis: RedisReadiness
    postgres: PostgresReadiness


@_closed
class BoardInfo(TypedDict):
    """One declared board."""

    name: str
    default: bool
    periods: list[str]
    score: Literal["count", "sum"]
    labels: bool
    url: str


@_closed
class Boards(TypedDict):
    """The body of ``GET /v1/boards``."""

    boards: list[BoardInfo]


@_closed
class GroupMember(TypedDict):
    """One asked member's place in the group and on the whole board."""

    rank: Annotated[
        _Rank | None,
        Field(
            description="Competition rank among the asked members (ties listed by member); "
            "null when the member has no rows in the bucket."
        ),
    ]
    board_rank: Annotated[
        _Rank | None,
        Field(description="Competition rank on the whole board; null as `rank` is."),
    ]
    member: str
    label: str | None
    score: _Score


@_closed
class Group(TypedDict):
    """Some members ranked among themselves (``GET /v1/boards/{board}/{period}/group``)."""

    board: str
    period: str
    bucket: _BucketId
    period_start: _PeriodStart
    period_end: _PeriodEnd
    total: _Total
    members: Annotated[
        list[GroupMember],
        Field(
            description="The asked members (each once) in rank order, then those without rows "
            "in the bucket (score 0), by member."
        ),
    ]
    source: Source
    as_of: AsOf


@_closed
class Neighbour(TypedDict):
    """The member just above or below the watched one."""

    rank: _Rank
    member: str
    label: str | None
    score: Annotated[int, Field(ge=1)]


@_closed
class MemberEvent(TypedDict):
    """One event of a watched member's stream
    (``GET /v1/boards/{board}/{period}/members/{member}/events``)."""

    board: str
    period: str
    bucket: _BucketId
    period_start: _PeriodStart
    period_end: _PeriodEnd
    total: _Total
    member: str
    label: str | None
    rank: Annotated[_Rank | None, Field(description="Null when the member has no rows.")]
    score: _Score
    previous_rank: Annotated[
        _Rank | None,
        Field(
            description="The rank of the stream's previous event (null in the first event, "
            "or when the member had no rows)."
        ),
    ]
    previous_score: Annotated[
        int | None,
        Field(ge=0, description="The score of the previous event (null in the first)."),
    ]
    above: Annotated[Neighbour | None, Field(description="The member just above, if any.")]
    below: Annotated[Neighbour | None, Field(description="The member just below, if any.")]
    source: Source
    as_of: AsOf


# The document lists these under ``components.schemas``; the other classes are written into
# the schemas that use them.
COMPONENTS: tuple[type, ...] = (
    Error,
    AsOf,
    Entry,
    Leaderboard,
    Standing,
    PeriodStanding,
    UserPeriods,
    Readiness,
    Boards,
    Group,
    MemberEvent,
)
