"""Reads leaderboards from the projector's Redis keys, each answer one consistent snapshot.

Every answer is one call (``FCALL_RO``) of a read-only function the projector loaded
(``projector/read_functions.lua``, flagged ``no-writes``: Redis 7) reading the board, the
names and the watermark together, so it reflects exactly the state at the watermark (the
projector applies each batch atomically). A sorted set lists equal scores by member,
descending under ``REV``; the function re-reads each tie group that a page cuts in
ascending member order, so ties are listed by user id ascending and ranks are competition
ranks (1 + members with a higher score). While Redis lacks the functions (restarted empty,
not rebuilt yet) it counts as not built: the API answers from PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.boards import (
    Asked,
    AsOf,
    BoardPage,
    Entry,
    GroupRanking,
    PeriodStanding,
    Standing,
    UserPeriods,
    Watched,
)
from api.errors import BoardUnavailable, NotBuilt, StoreUnavailable
from projector import read_functions
from projector.core.boards import Board
from projector.core.buckets import WINDOW_LENGTHS, Period
from projector.core.keys import Keys
from projector.core.lsn import parse_lsn
from projector.core.watermark import unavailable_boards

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
# Written in the projector's every atomic step: its position (LSN, a large transaction's
# progress, the configuration's fingerprint), the time of the write, the boards it stopped,
# the day its rolling windows end on.
_GENERATION_FIELDS = (b"lsn", b"position", b"updated_at", b"unavailable", b"window_day")


class Commands(Protocol):
    """What the reader needs of a Redis client: calls bounded in time, each raising
    ``TimeoutError`` when its bound runs out."""

    async def execute_command(self, *command: Any) -> Any: ...

    def submit(self, *command: Any) -> asyncio.Future[Any]: ...


class RedisReader:
    """Answers from the boards under ``prefix``; raises ``NotBuilt`` or ``StoreUnavailable``.

    Commands go through ``client`` (an ``AutoPipeline``), which bounds every call: it gives
    each batch ``timeout`` as a whole and fails its commands with ``TimeoutError`` past it.
    The reader adds no timer of its own: per call, ``asyncio.timeout`` cost three
    ``get_running_loop`` calls (each a getpid on Python 3.11) and a loop timer armed and
    cancelled. ``timeout`` (the client's) names the bound in errors.
    """

    def __init__(self, client: Commands, prefix: str, timeout: float) -> None:
        self._client = client
        self._keys = Keys(prefix)
        self._watermark = self._keys.watermark.encode()
        # By board name: hashing a Board hashes every field of its definition.
        self._label_keys: dict[str, bytes] = {}
        # The projector publishes each new watermark LSN here (apply_batch.lua, swap_boards.lua).
        self.events_channel = self._keys.events.encode()
        self._timeout = timeout

    def board_key(self, board: Board, period: Period, bucket: str) -> bytes:
        return self._keys.board(board.name, period, bucket).encode()

    def _labels(self, board: Board) -> bytes:
        """The board's label hash (for a board without labels, a key never written)."""
        key = self._label_keys.get(board.name)
        if key is None:
            name = self._keys.labels(board.labels) if board.labels else self._keys.no_labels
            key = self._label_keys[board.name] = name.encode()
        return key

    async def board(
        self, board: Board, period: Period, bucket: str, offset: int, limit: int
    ) -> BoardPage:
        """A page of ``limit`` entries from position ``offset`` (0-based) in rank order."""
        keys = (self.board_key(board, period, bucket), self._labels(board), self._watermark)
        reply = await self._run(
            read_functions.BOARD, keys, b"%d" % offset, b"%d" % limit, _asked(board, period, bucket)
        )
        lsn, commit_time, total, rows = reply
        return BoardPage(total=int(total), entries=_entries(rows), as_of=_as_of(lsn, commit_time))

    async def standing(
        self, board: Board, period: Period, bucket: str, user_id: str, around: int
    ) -> Standing:
        """``user_id``'s rank and score with up to ``around`` neighbours either side."""
        keys = (self.board_key(board, period, bucket), self._labels(board), self._watermark)
        reply = await self._run(
            read_functions.STANDING,
            keys,
            user_id.encode(),
            b"%d" % around,
            _asked(board, period, bucket),
        )
        lsn, commit_time, total, name, position, first, rows = reply
        return _standing(int(total), _as_of(lsn, commit_time), name, position, first, rows)

    async def user(
        self, board: Board, user_id: str, buckets: list[tuple[Period, str]]
    ) -> UserPeriods:
        """``user_id``'s score and rank on the board of each (period, bucket)."""
        keys = (
            self._labels(board),
            self._watermark,
            *(self.board_key(board, period, bucket) for period, bucket in buckets),
        )
        reply = await self._run(read_functions.USER, keys, user_id.encode(), board.name.encode())
        lsn, commit_time, name, stats = reply
        periods = []
        for index, (period, bucket) in enumerate(buckets):
            total, score, rank = stats[3 * index : 3 * index + 3]
            periods.append(
                PeriodStanding(
                    period=period,
                    bucket=bucket,
                    total=int(total),
                    rank=None if rank is None else int(rank),
                    score=0 if score is None else int(score),
                )
            )
        return UserPeriods(_text_or_none(name), periods, _as_of(lsn, commit_time))

    async def group(
        self, board: Board, period: Period, bucket: str, members: tuple[str, ...]
    ) -> GroupRanking:
        """Each of ``members``'s score and rank on the board, in one call."""
        keys = (self.board_key(board, period, bucket), self._labels(board), self._watermark)
        reply = await self._run(
            read_functions.GROUP,
            keys,
            _asked(board, period, bucket),
            *(m.encode() for m in members),
        )
        lsn, commit_time, total, stats = reply
        asked = []
        for index, member in enumerate(members):
            score, rank, name = stats[3 * index : 3 * index + 3]
            asked.append(
                Asked(
                    member,
                    _text_or_none(name),
                    None if score is None else int(score),
                    None if rank is None else int(rank),
                )
            )
        return GroupRanking(int(total), asked, _as_of(lsn, commit_time))

    async def watch(
        self, board: Board, period: Period, bucket: str, members: tuple[str, ...]
    ) -> Watched:
        """Each of ``members``'s standing with one neighbour either side, in one call."""
        keys = (self.board_key(board, period, bucket), self._labels(board), self._watermark)
        reply = await self._run(
            read_functions.WATCH,
            keys,
            _asked(board, period, bucket),
            *(m.encode() for m in members),
        )
        lsn, commit_time, total, places = reply
        as_of = _as_of(lsn, commit_time)
        return Watched(int(total), [_standing(int(total), as_of, *at) for at in places], as_of)

    async def watermark_lsn(self) -> int | None:
        """The watermark's LSN, or None when Redis holds none."""
        value = await self._call("HGET", self._watermark, b"lsn")
        return None if value is None else _as_of(value, b"").lsn

    async def generation(self) -> tuple[bytes | None, ...] | None:
        """What names the state of Redis (``api.answers``): the watermark fields the projector
        rewrites with every change it makes; None without a watermark."""
        return generation_of(await self._call("HMGET", self._watermark, *_GENERATION_FIELDS))

    def generation_soon(self) -> asyncio.Future[Any]:
        """The generation's fields (``generation_of`` reads them), read ahead of the next
        command queued in this loop turn: on the same connection, so Redis reads them first."""
        return self._client.submit("HMGET", self._watermark, *_GENERATION_FIELDS)

    async def ping(self) -> dict[str, Any]:
        """Whether Redis answers, holds a watermark and the functions that read it, for
        ``/readyz``."""
        try:
            raw = await self._call("FCALL_RO", read_functions.WATERMARK, 1, self._watermark)
            as_of = None if raw[0] is None else _as_of(raw[0], raw[1] or b"")
        except NotBuilt:
            as_of = None
        if as_of is None:
            return {"up": True, "built": False}
        state: dict[str, Any] = {"up": True, "built": True, "as_of": as_of.to_json()}
        unavailable = unavailable_boards(raw[2].decode() if raw[2] else "")
        if unavailable:
            state["unavailable_boards"] = unavailable
        return state

    async def _run(self, function: str, keys: tuple[bytes, ...], *args: bytes) -> list[Any]:
        """Call the projector's read-only ``function``; NotBuilt on a nil reply, or while
        Redis lacks the function (the projector loads it on its next session or rebuild)."""
        reply = await self._call("FCALL_RO", function, len(keys), *keys, *args)
        if reply is None:
            raise NotBuilt("Redis holds no watermark")
        result: list[Any] = reply
        return result

    async def _call(self, *command: Any) -> Any:
        try:
            return await self._client.execute_command(*command)
        except TimeoutError as exc:
            raise StoreUnavailable("redis", f"no answer within {self._timeout:g} s") from exc
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailable("redis", str(exc) or type(exc).__name__) from exc
        except RedisError as exc:
            if read_functions.is_missing(exc):
                raise NotBuilt(f"Redis holds no read function {command[1]!r}") from exc
            if str(exc).startswith("WINDOW"):
                # Redis holds the rolling windows of another day: PostgreSQL answers.
                raise NotBuilt(f"Redis holds the windows of another day ({exc})") from exc
            if str(exc).startswith("UNAVAILABLE "):
                raise BoardUnavailable(str(exc).removeprefix("UNAVAILABLE ")) from exc
            # Busy loading, out of memory, a replica that refuses...: Redis cannot answer.
            raise StoreUnavailable("redis", f"{type(exc).__name__}: {exc}") from exc


def _standing(
    total: int, as_of: AsOf, name: bytes | None, position: int | None, first: int, rows: list[Any]
) -> Standing:
    """A standing from a read function's place (name, position or nil, first, rows)."""
    display_name = _text_or_none(name)
    if position is None:
        return Standing(total, display_name, None, 0, [], [], as_of)
    entries = _entries(rows)
    mine = int(position) - int(first)
    me = entries[mine]
    return Standing(
        total=total,
        display_name=display_name,
        rank=me.rank,
        score=me.score,
        above=entries[:mine],
        below=entries[mine + 1 :],
        as_of=as_of,
    )


def generation_of(fields: list[bytes | None]) -> tuple[bytes | None, ...] | None:
    """The generation that the watermark's fields name; None without a watermark."""
    if fields[0] is None or fields[1] is None:
        return None
    return tuple(fields)


def _asked(board: Board, period: Period, bucket: str) -> bytes:
    """The board argument of a read function: a rolling window names its day too, which
    Redis must hold (``board@YYYY-MM-DD``; projector/read_functions.lua)."""
    if period in WINDOW_LENGTHS:
        return f"{board.name}@{bucket}".encode()
    return board.name.encode()


def _entries(rows: list[Any]) -> list[Entry]:
    """Entries from the scripts' flat rows (member, score, rank, label, member, ...)."""
    # Positional: keyword arguments cost a NamedTuple's __new__ a parse for every entry.
    flat = iter(rows)
    return [
        Entry(int(rank), member.decode(), None if label is None else label.decode(), int(score))
        for member, score, rank, label in zip(flat, flat, flat, flat, strict=True)
    ]


# The watermark moves once per applied batch, and every answer carries it: parse each once.
@lru_cache(maxsize=64)
def _as_of(lsn: bytes | str, commit_time: bytes | str) -> AsOf:
    try:
        position = parse_lsn(lsn.decode() if isinstance(lsn, bytes) else lsn)
    except (UnicodeDecodeError, ValueError):
        raise NotBuilt(f"Redis holds an unreadable watermark LSN {lsn!r}") from None
    try:
        text = commit_time.decode() if isinstance(commit_time, bytes) else commit_time
        when = datetime.fromisoformat(text) if text else None
    except (UnicodeDecodeError, ValueError):
        when = None
    return AsOf(lsn=position, commit_time=when)


def _text_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
