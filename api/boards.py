"""What a store answers (``BoardPage``, ``Standing``, ``UserPeriods``) and the JSON built from it.

Both stores return these same values, so Redis and PostgreSQL answers render to identical JSON
except for ``source`` and ``as_of``. Ranking is competition ranking (1, 2, 2, 4) with ties
listed by user id in code-point order, which is byte order for UTF-8 as Redis compares members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from api import bodies
from api.routes import BoardQuery, GroupQuery, StandingQuery, UserQuery
from projector.core.boards import Board
from projector.core.buckets import Period, bucket_bounds
from projector.core.lsn import format_lsn


@dataclass(frozen=True, slots=True)
class AsOf:
    """The state an answer reflects: every commit up to ``lsn``, the last one at ``commit_time``."""

    lsn: int
    commit_time: datetime | None

    def to_json(self) -> bodies.AsOf:
        lsn, commit_time = _as_of_text(self.lsn, self.commit_time)
        return {"lsn": lsn, "commit_time": commit_time}


@lru_cache(maxsize=64)
def _as_of_text(lsn: int, commit_time: datetime | None) -> tuple[str, str | None]:
    """An ``AsOf``'s JSON strings, made once per watermark (every answer there renders them)."""
    when = None if commit_time is None else commit_time.astimezone(UTC).isoformat()
    return format_lsn(lsn), when


class Entry(NamedTuple):
    """One row of a leaderboard (a tuple: boards are built on the hot path)."""

    rank: int
    user_id: str
    display_name: str | None
    score: int

    def to_json(self) -> bodies.Entry:
        return {
            "rank": self.rank,
            "user_id": self.user_id,
            "display_name": self.display_name,
            "score": self.score,
        }

    def to_member_json(self) -> dict[str, Any]:
        """The entry as the declared boards' routes name it (member and label)."""
        return {
            "rank": self.rank,
            "member": self.user_id,
            "label": self.display_name,
            "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class BoardPage:
    """A page of one board: ``entries`` in rank order, ``total`` members on the whole board."""

    total: int
    entries: list[Entry]
    as_of: AsOf


@dataclass(frozen=True, slots=True)
class Standing:
    """A user's place on one board; ``rank`` is None (and score 0) when not on it."""

    total: int
    display_name: str | None
    rank: int | None
    score: int
    above: list[Entry]
    below: list[Entry]
    as_of: AsOf


@dataclass(frozen=True, slots=True)
class PeriodStanding:
    """A user's score and rank on the current board of one period."""

    period: Period
    bucket: str
    total: int
    rank: int | None
    score: int


@dataclass(frozen=True, slots=True)
class UserPeriods:
    """A user's standing in the current bucket of every period."""

    display_name: str | None
    periods: list[PeriodStanding]
    as_of: AsOf


@dataclass(frozen=True, slots=True)
class Watched:
    """Watched members' standings on one board (each with one neighbour either side), in
    the order they were asked for."""

    total: int
    standings: list[Standing]
    as_of: AsOf


class Asked(NamedTuple):
    """One asked member's standing on a whole board: ``score`` and ``rank`` are None when it
    is not on the board."""

    member: str
    label: str | None
    score: int | None
    rank: int | None


@dataclass(frozen=True, slots=True)
class GroupRanking:
    """Asked members' standings on one board (in any order), ``total`` members on it."""

    total: int
    members: list[Asked]
    as_of: AsOf


def group_json(query: GroupQuery, group: GroupRanking, source: str, tz: ZoneInfo) -> dict[str, Any]:
    """The body of ``GET /v1/boards/{board}/{period}/group``: the members ranked among
    themselves (competition ranking, ties by member) with their rank on the whole board;
    members not on the board follow, by member, with score 0 and both ranks null."""
    ranked = sorted((a for a in group.members if a.score is not None), key=_by_standing)
    members: list[dict[str, Any]] = []
    rank, previous = 0, None
    for position, asked in enumerate(ranked, start=1):
        if asked.score != previous:
            rank, previous = position, asked.score
        members.append(
            {
                "rank": rank,
                "board_rank": asked.rank,
                "member": asked.member,
                "label": asked.label,
                "score": asked.score,
            }
        )
    absent = sorted((a for a in group.members if a.score is None), key=_by_member)
    members.extend(
        {"rank": None, "board_rank": None, "member": a.member, "label": a.label, "score": 0}
        for a in absent
    )
    body: dict[str, Any] = {"board": query.board.name}
    body.update(bucket_fields(query.period, query.bucket, tz))
    body["total"] = group.total
    body["members"] = members
    body["source"] = source
    body["as_of"] = group.as_of.to_json()
    return body


def _by_standing(asked: Asked) -> tuple[int, bytes]:
    # Ties by member in code-point order, which is UTF-8 byte order (as Redis compares).
    return -(asked.score or 0), asked.member.encode()


def _by_member(asked: Asked) -> bytes:
    return asked.member.encode()


def board_json(query: BoardQuery, page: BoardPage, source: str, tz: ZoneInfo) -> dict[str, Any]:
    """The body of ``GET /v1/leaderboards/{period}`` or ``GET /v1/boards/{board}/{period}``."""
    body = _bucket_json(query.period, query.bucket, tz)
    if not query.alias:
        body = {"board": query.board.name, **body}
    body["total"] = page.total
    body["limit"] = query.limit
    body["offset"] = query.offset
    body["entries"] = (
        [entry.to_json() for entry in page.entries]
        if query.alias
        else [entry.to_member_json() for entry in page.entries]
    )
    body["source"] = source
    body["as_of"] = page.as_of.to_json()
    return body


def standing_json(
    query: StandingQuery, standing: Standing, source: str, tz: ZoneInfo
) -> dict[str, Any]:
    """The body of ``GET /v1/leaderboards/{period}/users/{user_id}`` or
    ``GET /v1/boards/{board}/{period}/members/{member}``."""
    body = _bucket_json(query.period, query.bucket, tz)
    body["total"] = standing.total
    entry_json: Callable[[Entry], Mapping[str, object]]
    if query.alias:
        body["user_id"] = query.user_id
        body["display_name"] = standing.display_name
        entry_json = Entry.to_json
    else:
        body = {"board": query.board.name, **body}
        body["member"] = query.user_id
        body["label"] = standing.display_name
        entry_json = Entry.to_member_json
    body["rank"] = standing.rank
    body["score"] = standing.score
    body["around"] = query.around
    body["above"] = [entry_json(entry) for entry in standing.above]
    body["below"] = [entry_json(entry) for entry in standing.below]
    body["source"] = source
    body["as_of"] = standing.as_of.to_json()
    return body


# The bodies above as bytes, written directly: the same text as the JSON encoder makes of the
# dicts (keys in the same order, strings escaped by its own function, no spaces), without
# building a dict per entry first. A miss of the kept answers (``api.answers``) renders one.
_ENTRY = '{"rank":%d,"user_id":%s,"display_name":%s,"score":%d}'
_MEMBER_ENTRY = '{"rank":%d,"member":%s,"label":%s,"score":%d}'


def board_body(query: BoardQuery, page: BoardPage, source: str, tz: ZoneInfo) -> bytes:
    """``board_json``'s body, encoded."""
    entries = ",".join(
        [
            (_ENTRY if query.alias else _MEMBER_ENTRY)
            % (rank, _text(member), _text_or_null(label), score)
            for rank, member, label, score in page.entries
        ]
    )
    return (
        f"{{{_head(query, tz)}"
        f',"total":{page.total},"limit":{query.limit},"offset":{query.offset}'
        f',"entries":[{entries}],"source":{_text(source)},"as_of":{_as_of_body(page.as_of)}}}'
    ).encode()


def standing_body(query: StandingQuery, standing: Standing, source: str, tz: ZoneInfo) -> bytes:
    """``standing_json``'s body, encoded."""
    entry = _ENTRY if query.alias else _MEMBER_ENTRY
    above = ",".join(
        [entry % (r, _text(m), _text_or_null(lb), sc) for r, m, lb, sc in standing.above]
    )
    below = ",".join(
        [entry % (r, _text(m), _text_or_null(lb), sc) for r, m, lb, sc in standing.below]
    )
    who = (
        f',"user_id":{_text(query.user_id)},"display_name":'
        if query.alias
        else f',"member":{_text(query.user_id)},"label":'
    )
    rank = "null" if standing.rank is None else standing.rank
    return (
        f'{{{_head(query, tz)},"total":{standing.total}{who}'
        f"{_text_or_null(standing.display_name)}"
        f',"rank":{rank},"score":{standing.score},"around":{query.around}'
        f',"above":[{above}],"below":[{below}],"source":{_text(source)}'
        f',"as_of":{_as_of_body(standing.as_of)}}}'
    ).encode()


_text = encode_basestring


def _text_or_null(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _head(query: BoardQuery | StandingQuery, tz: ZoneInfo) -> str:
    """The first fields: the board's name on its own routes, then the bucket's."""
    return _head_text(None if query.alias else query.board.name, query.period, query.bucket, tz)


@lru_cache(maxsize=4096)
def _head_text(board: str | None, period: Period, bucket: str, tz: ZoneInfo) -> str:
    fields = ([("board", board)] if board is not None else []) + list(
        bucket_fields(period, bucket, tz)
    )
    return ",".join(f"{_text(name)}:{_text_or_null(value)}" for name, value in fields)


@lru_cache(maxsize=64)
def _as_of_body(as_of: AsOf) -> str:
    lsn, commit_time = _as_of_text(as_of.lsn, as_of.commit_time)
    return f'{{"lsn":{_text(lsn)},"commit_time":{_text_or_null(commit_time)}}}'


def user_json(query: UserQuery, user: UserPeriods, source: str, tz: ZoneInfo) -> dict[str, Any]:
    """The body of ``GET /v1/users/{user_id}``."""
    periods: dict[str, Any] = {}
    for standing in user.periods:
        item = _bucket_json(standing.period, standing.bucket, tz)
        del item["period"]
        item["total"] = standing.total
        item["rank"] = standing.rank
        item["score"] = standing.score
        periods[standing.period.value] = item
    return {
        "user_id": query.user_id,
        "display_name": user.display_name,
        "periods": periods,
        "source": source,
        "as_of": user.as_of.to_json(),
    }


def _bucket_json(period: Period, bucket: str, tz: ZoneInfo) -> dict[str, Any]:
    return dict(bucket_fields(period, bucket, tz))


@lru_cache(maxsize=4096)
def bucket_fields(period: Period, bucket: str, tz: ZoneInfo) -> tuple[tuple[str, Any], ...]:
    start, end = bucket_bounds(period, bucket, tz)
    return (
        ("period", period.value),
        ("bucket", bucket),
        ("period_start", None if start is None else start.isoformat()),
        ("period_end", None if end is None else end.isoformat()),
    )


def boards_json(boards: Iterable[Board]) -> bodies.Boards:
    """The body of ``GET /v1/boards``: each declared board, the first being the default that
    ``/v1/leaderboards`` and ``/v1/users`` answer for."""
    return {
        "boards": [
            {
                "name": board.name,
                "default": index == 0,
                "periods": [p.value for p in board.periods],
                "score": "sum" if board.sum else "count",
                "labels": board.labels is not None,
                "url": f"/v1/boards/{board.name}/{{period}}",
            }
            for index, board in enumerate(boards)
        ]
    }
