"""Every request parameter, written once: its name, place, bounds, JSON Schema and description,
and how its raw text becomes a typed value (or a ``BadParameter`` naming it).

``api.routes`` validates requests with these objects and ``api.openapi`` documents them, so the
document and the validation cannot disagree. The bucket patterns say exactly which bucket ids
the calendar has (no 2026-02-30, no 2025-W53, no year 0000), user ids and members exclude
control characters in both places. Parsing is pure: bytes, the zone and the clock in.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal
from urllib.parse import unquote_to_bytes
from zoneinfo import ZoneInfo

from api.errors import BadParameter
from projector.core.boards import Board
from projector.core.buckets import ALL_BUCKET, Period, current_bucket, parse_bucket, parse_period
from projector.core.lsn import parse_lsn

LSN_PATTERN = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
# C0 and C1 controls, which a user id or member may not hold (the same class in Python's re
# and in the document's ECMA 262 patterns).
_CONTROLS = r"\u0000-\u001f\u007f-\u009f"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_DIGITS = re.compile(r"[0-9]{1,12}")

# Years 0001 to 9999 (there is no year 0000).
_YEAR = r"(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
# Leap years: divisible by 4, and centuries only when divisible by 400.
_LEAP_YEAR = r"([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][48]|[13579][26]|[2468]0)00)"
_DAY_OF_MONTH = (
    r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
    r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    r"|02-(0[1-9]|1[0-9]|2[0-8]))"
)
_WEEK_1_TO_52 = r"(0[1-9]|[1-4][0-9]|5[0-2])"
_EXAMPLE_BUCKETS = {
    Period.DAY: "2026-11-26",
    Period.WEEK: "2026-W48",
    Period.MONTH: "2026-11",
    Period.YEAR: "2026",
    Period.ALL: "all",
    Period.LAST7: "2026-11-26",
    Period.LAST30: "2026-11-26",
}


@dataclass(frozen=True, slots=True, eq=False)
class Parameter:
    """A parameter of the path or of the query string. ``shared``: the document lists it once
    under ``components.parameters`` and refers to it; else it is written into each operation.
    ``expanded``: the document has a path per value instead (a board's name, a period, an
    asset), so it appears in paths, not in parameter lists."""

    name: str
    location: Literal["path", "query"]
    description: str = ""
    schema: Mapping[str, Any] = field(default_factory=dict)
    shared: bool = True
    expanded: bool = False
    # Whether a path without it matches no route; else an empty segment reaches validation,
    # which names the parameter.
    nonempty: bool = False

    def openapi(self) -> dict[str, Any]:
        """The parameter object of the OpenAPI document."""
        return {
            "name": self.name,
            "in": self.location,
            "required": self.location == "path",
            "description": self.description,
            "schema": dict(self.schema),
        }


@dataclass(frozen=True, slots=True, eq=False)
class Integer(Parameter):
    """A whole number from ``low`` to ``high`` in the query string, ``default`` when absent."""

    low: int = 0
    high: int = 0
    default: int = 0

    def __post_init__(self) -> None:
        schema = {"type": "integer", "minimum": self.low, "maximum": self.high}
        object.__setattr__(self, "schema", {**schema, "default": self.default})

    def parse(self, params: dict[str, str]) -> int:
        """The value given in ``params``, or the default."""
        text = params.get(self.name)
        if text is None:
            return self.default
        value = int(text) if _DIGITS.fullmatch(text) else None
        if value is None or not self.low <= value <= self.high:
            name = self.name
            raise BadParameter(
                name,
                f"{name} must be a whole number from {self.low} to {self.high}, "
                f"not {clip(repr(text))}",
            )
        return value


@dataclass(frozen=True, slots=True, eq=False)
class Identifier(Parameter):
    """A user id or member: 1 to ``max_length`` characters without control characters, in a
    path segment that is percent-decoded (an encoded ``/`` is part of it)."""

    max_length: int = 0

    def __post_init__(self) -> None:
        schema = {
            "type": "string",
            "minLength": 1,
            "maxLength": self.max_length,
            "pattern": f"^[^{_CONTROLS}]{{1,{self.max_length}}}$",
        }
        object.__setattr__(self, "schema", schema)

    def parse(self, raw: bytes) -> str:
        """The identifier a still percent-encoded path segment holds."""
        name = self.name
        value = decode(raw, name)
        if not value:
            raise BadParameter(name, f"{name} must not be empty")
        if len(value) > self.max_length:
            raise BadParameter(
                name, f"{name} is {len(value)} characters long; the limit is {self.max_length}"
            )
        if _CONTROL.search(value):
            raise BadParameter(name, f"{name} must not contain control characters")
        return value


@dataclass(frozen=True, slots=True, eq=False)
class MemberList(Parameter):
    """A required list of 1 to ``max_items`` members in the query string, comma-separated,
    each 1 to ``max_length`` characters without commas or control characters; repeats are
    listed once, in the order first given."""

    max_items: int = 0
    max_length: int = 0

    def __post_init__(self) -> None:
        member = {
            "type": "string",
            "minLength": 1,
            "maxLength": self.max_length,
            "pattern": f"^[^,{_CONTROLS}]{{1,{self.max_length}}}$",
        }
        schema = {"type": "array", "items": member, "minItems": 1, "maxItems": self.max_items}
        object.__setattr__(self, "schema", schema)

    def openapi(self) -> dict[str, Any]:
        # One parameter, its items joined by commas (``members=a,b,c``).
        return {**Parameter.openapi(self), "required": True, "style": "form", "explode": False}

    def parse(self, params: dict[str, str]) -> tuple[str, ...]:
        """The members given in ``params``, without repeats."""
        name = self.name
        text = params.get(name)
        if text is None:
            raise BadParameter(name, f"{name} is required: a comma-separated list of members")
        items = text.split(",")
        if len(items) > self.max_items:
            raise BadParameter(
                name, f"{name} lists {len(items)} members; the limit is {self.max_items}"
            )
        return self._checked(items)

    def body_schema(self) -> dict[str, Any]:
        """The JSON Schema of a request body naming the members (commas allowed)."""
        member = {
            "type": "string",
            "minLength": 1,
            "maxLength": self.max_length,
            "pattern": f"^[^{_CONTROLS}]{{1,{self.max_length}}}$",
        }
        listed = {"type": "array", "items": member, "minItems": 1, "maxItems": self.max_items}
        return {
            "type": "object",
            "properties": {self.name: listed},
            "required": [self.name],
            "additionalProperties": False,
        }

    def parse_body(self, raw: bytes) -> tuple[str, ...]:
        """The members of a JSON body ``{"members": [...]}``, without repeats."""
        name = self.name
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise BadParameter(name, f'the body must be JSON: {{"{name}": [...]}}') from None
        items = body.get(name) if isinstance(body, dict) else None
        if not isinstance(items, list) or set(body) != {name}:
            raise BadParameter(name, f'the body must be {{"{name}": [...]}} and nothing else')
        if not items:
            raise BadParameter(name, f"{name} must list at least one member")
        if len(items) > self.max_items:
            raise BadParameter(
                name, f"{name} lists {len(items)} members; the limit is {self.max_items}"
            )
        if not all(isinstance(item, str) for item in items):
            raise BadParameter(name, f"{name} must list strings")
        return self._checked(items)

    def _checked(self, items: list[str]) -> tuple[str, ...]:
        name = self.name
        for item in items:
            if not item:
                raise BadParameter(name, f"{name} must not hold an empty member")
            if len(item) > self.max_length:
                raise BadParameter(
                    name,
                    f"{name} holds a member {len(item)} characters long; the limit is "
                    f"{self.max_length}",
                )
            if _CONTROL.search(item):
                raise BadParameter(name, f"{name} must not contain control characters")
        return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True, eq=False)
class Lsn(Parameter):
    """An LSN as PostgreSQL writes it (hexadecimal X/Y) in the query string; None when absent."""

    def parse(self, params: dict[str, str]) -> int | None:
        """The LSN given in ``params`` as an integer."""
        text = params.get(self.name)
        if text is None:
            return None
        try:
            return parse_lsn(text)
        except ValueError:
            raise BadParameter(
                self.name,
                f"{self.name} must be an LSN as PostgreSQL writes it (hexadecimal X/Y, like "
                f"16/B374D848), not {clip(repr(text))}",
            ) from None


@dataclass(frozen=True, slots=True, eq=False)
class PeriodSegment(Parameter):
    """The period of a board's path: one the board keeps (the document has a path per value)."""

    def values(self, board: Board) -> list[str]:
        """The periods ``board`` keeps, as the path spells them."""
        return [period.value for period in board.periods]

    def parse(self, raw: bytes, board: Board) -> Period:
        """The period a path segment names, if ``board`` keeps it."""
        text = decode(raw, self.name)
        try:
            period = parse_period(text)
        except ValueError as exc:
            raise BadParameter(self.name, clip(str(exc))) from None
        if period not in board.periods:
            kept = ", ".join(p.value for p in board.periods)
            raise BadParameter(
                self.name, f"board {board.name!r} keeps the periods {kept}, not {text}"
            )
        return period


@dataclass(frozen=True, slots=True, eq=False)
class Bucket(Parameter):
    """A bucket id of the path's period in canonical form; the current bucket when absent. The
    document lists it once per period (``bucket_day``, ...), each with that period's pattern."""

    def component(self, period: Period) -> str:
        """The name the document lists the parameter under for ``period``."""
        return f"{self.name}_{period.value}"

    def openapi_for(self, period: Period) -> dict[str, Any]:
        """The parameter object for paths of ``period``."""
        schema = {"type": "string", "pattern": bucket_pattern(period)}
        return {
            **self.openapi(),
            "schema": {**schema, "examples": [_EXAMPLE_BUCKETS[period]]},
        }

    def parse(
        self, period: Period, params: dict[str, str], tz: ZoneInfo, now: datetime | None
    ) -> str:
        """The bucket given in ``params``, or the one holding ``now`` (default: now) in ``tz``."""
        text = params.get(self.name)
        if text is None:
            if period == Period.ALL:
                return ALL_BUCKET
            if now is None:
                return _current_bucket(period, tz)
            return current_bucket(period, tz, now)
        try:
            return parse_bucket(period, text)
        except ValueError as exc:
            raise BadParameter(self.name, clip(str(exc))) from None


# The current bucket of (period, zone) and the whole second it was computed for: every
# bucket boundary is a whole second (zone offsets are), so it holds for that entire second.
_CURRENT: dict[tuple[Period, ZoneInfo], tuple[int, str]] = {}


def _current_bucket(period: Period, tz: ZoneInfo) -> str:
    """The bucket of ``period`` holding now in ``tz``, computed at most once a second."""
    second = int(time.time())
    kept = _CURRENT.get((period, tz))
    if kept is not None and kept[0] == second:
        return kept[1]
    bucket = current_bucket(period, tz, datetime.fromtimestamp(second, UTC))
    _CURRENT[period, tz] = (second, bucket)
    return bucket


MAX_USER_ID = 200

BOARD = Parameter("board", "path", expanded=True)
PERIOD = PeriodSegment("period", "path", expanded=True)
ASSET = Parameter("asset", "path", expanded=True, nonempty=True)
USER_ID = Identifier(
    "user_id",
    "path",
    f"1 to {MAX_USER_ID} characters without control characters, percent-encoded (an encoded "
    "/ is part of the id).",
    max_length=MAX_USER_ID,
)
MEMBER = Identifier(
    "member",
    "path",
    f"1 to {MAX_USER_ID} characters without control characters, percent-encoded.",
    shared=False,
    max_length=MAX_USER_ID,
)
MAX_GROUP = 1000
MEMBERS = MemberList(
    "members",
    "query",
    f"The members to rank among themselves: 1 to {MAX_GROUP}, comma-separated (also when "
    f"percent-encoded), each 1 to {MAX_USER_ID} characters without commas or control "
    f"characters. Repeats count once.",
    shared=False,
    max_items=MAX_GROUP,
    max_length=MAX_USER_ID,
)
BUCKET = Bucket(
    "bucket",
    "query",
    "Which bucket, in canonical form (zero-padded; weeks with an upper-case W): day "
    "YYYY-MM-DD, week YYYY-Www (ISO week), month YYYY-MM, year YYYY, all `all`. It must exist "
    "in the calendar (years 0001 to 9999). Default: the bucket holding now, in the configured "
    "time zone. Buckets expired from Redis are answered by PostgreSQL.",
)
LIMIT = Integer("limit", "query", "Entries per page.", low=1, high=1000, default=10)
OFFSET = Integer(
    "offset",
    "query",
    "Entries to skip (0-based position in rank order).",
    low=0,
    high=1_000_000_000,
    default=0,
)
AROUND = Integer(
    "around",
    "query",
    "Neighbours to list above and below the user.",
    low=0,
    high=100,
    default=0,
)
MIN_LSN = Lsn(
    "min_lsn",
    "query",
    "Read-your-writes: an LSN the client read with `SELECT pg_current_wal_lsn()` after its "
    "commit. The answer reflects a state at or past it: Redis once the projector got there "
    "(waiting briefly), else PostgreSQL. An LSN ahead of the server's current WAL position (no "
    "commit can have returned it) is answered 400.",
    schema={"type": "string", "pattern": LSN_PATTERN, "examples": ["0/16B3748"]},
)


@cache
def bucket_pattern(period: Period) -> str:
    """The regular expression of every bucket id of ``period`` that the API accepts."""
    if period == Period.ALL:
        return "^all$"
    if period == Period.YEAR:
        return f"^{_YEAR}$"
    if period == Period.MONTH:
        return f"^{_YEAR}-(0[1-9]|1[0-2])$"
    if period in (Period.DAY, Period.LAST7, Period.LAST30):  # a window: its last day
        return f"^({_YEAR}-{_DAY_OF_MONTH}|{_LEAP_YEAR}-02-29)$"
    return f"^({_YEAR}-W{_WEEK_1_TO_52}|{_long_iso_years()}-W53)$"


def _long_iso_years() -> str:
    """The ISO years with a week 53, as a regular expression grouped by century."""
    by_century: dict[str, list[str]] = {}
    for year in range(1, 10_000):
        text = f"{year:04d}"
        try:
            parse_bucket(Period.WEEK, f"{text}-W53")
        except ValueError:
            continue
        by_century.setdefault(text[:2], []).append(text[2:])
    groups = [f"{century}({'|'.join(ends)})" for century, ends in sorted(by_century.items())]
    return f"({'|'.join(groups)})"


def decode(raw: bytes, parameter: str) -> str:
    """``raw`` percent-decoded as UTF-8; a ``BadParameter`` naming ``parameter`` otherwise."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter(
            parameter, f"{parameter} is not valid UTF-8 once percent-decoded"
        ) from None


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (an error message quotes what it was given)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
