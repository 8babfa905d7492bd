"""Reads leaderboards from the projector's Redis keys, each answer one consistent snapshot.

Every answer is one read-only Lua script (``EVALSHA_RO``, flagged ``no-writes``: Redis 7)
reading the board, the names and the watermark together, so it reflects exactly the state
at the watermark (the projector applies each batch atomically). A sorted set lists equal
scores by member, descending under ``REV``; the script re-reads each tie group that a page
cuts in ascending member order, so ties are listed by user id ascending and ranks are
competition ranks (1 + members with a higher score).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.boards import AsOf, BoardPage, Entry, PeriodStanding, Standing, UserPeriods
from api.errors import NotBuilt, StoreUnavailable
from projector.boards import Board
from projector.buckets import Period
from projector.keys import Keys
from projector.lsn import parse_lsn

# page(board, offset, count) -> {member, score, rank, ...} in rank order, ties by member.
# Scores along positions are the same in both orders; only a tie group's members are
# reversed. A group wholly inside the page is the REV slice reversed; a group the page cuts
# (the first or the last) is re-read by ascending index.
_PAGE_LUA = """
local function page(board, offset, count, total)
  local out = {}
  if count <= 0 or offset >= total then return out end
  local rev = redis.call('ZRANGE', board, offset, offset + count - 1, 'REV', 'WITHSCORES')
  local n = #rev / 2
  local i = 1
  while i <= n do
    local score = rev[2 * i]
    local j = i
    while j < n and rev[2 * (j + 1)] == score do j = j + 1 end
    local p0, p1 = offset + i - 1, offset + j - 1
    local above
    if i > 1 and j < n then
      above = p0
      for k = j, i, -1 do
        out[#out + 1] = rev[2 * k - 1]; out[#out + 1] = score; out[#out + 1] = above + 1
      end
    else
      above = redis.call('ZCOUNT', board, '(' .. score, '+inf')
      local size = redis.call('ZCOUNT', board, score, score)
      local low = total - above - size
      local members = redis.call('ZRANGE', board, low + p0 - above, low + p1 - above)
      for k = 1, #members do
        out[#out + 1] = members[k]; out[#out + 1] = score; out[#out + 1] = above + 1
      end
    end
    i = j + 1
  end
  return out
end

local function with_names(users, rows)
  if #rows == 0 then return rows end
  local ids = {}
  for k = 1, #rows, 3 do ids[#ids + 1] = rows[k] end
  local names = redis.call('HMGET', users, unpack(ids))
  local out = {}
  for k = 1, #ids do
    local r = 3 * k - 2
    out[#out + 1] = rows[r]; out[#out + 1] = rows[r + 1]
    out[#out + 1] = rows[r + 2]; out[#out + 1] = names[k]
  end
  return out
end
"""

# KEYS board, users, watermark; ARGV offset, limit.
# -> false without a watermark, else {lsn, commit_time, total, {member, score, rank, name...}}
_BOARD_LUA = (
    "#!lua flags=no-writes\n"
    + _PAGE_LUA
    + """
local mark = redis.call('HMGET', KEYS[3], 'lsn', 'commit_time')
if not mark[1] then return false end
local total = redis.call('ZCARD', KEYS[1])
local rows = page(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), total)
return {mark[1], mark[2] or '', total, with_names(KEYS[2], rows)}
"""
)

# KEYS board, users, watermark; ARGV user, around.
# -> false, or {lsn, commit_time, total, name, position|false, first position, rows}
_STANDING_LUA = (
    "#!lua flags=no-writes\n"
    + _PAGE_LUA
    + """
local mark = redis.call('HMGET', KEYS[3], 'lsn', 'commit_time')
if not mark[1] then return false end
local board, user, around = KEYS[1], ARGV[1], tonumber(ARGV[2])
local total = redis.call('ZCARD', board)
local name = redis.call('HGET', KEYS[2], user)
local score = redis.call('ZSCORE', board, user)
if not score then return {mark[1], mark[2] or '', total, name, false, 0, {}} end
local above = redis.call('ZCOUNT', board, '(' .. score, '+inf')
local size = redis.call('ZCOUNT', board, score, score)
local position = above + redis.call('ZRANK', board, user) - (total - above - size)
local first = position - around
if first < 0 then first = 0 end
local rows = page(board, first, position + around - first + 1, total)
return {mark[1], mark[2] or '', total, name, position, first, with_names(KEYS[2], rows)}
"""
)

# KEYS users, watermark, board...; ARGV user.
# -> false, or {lsn, commit_time, name, {total, score|false, rank|false} per board}
_USER_LUA = """#!lua flags=no-writes
local mark = redis.call('HMGET', KEYS[2], 'lsn', 'commit_time')
if not mark[1] then return false end
local user = ARGV[1]
local out = {}
for k = 3, #KEYS do
  local board = KEYS[k]
  local score = redis.call('ZSCORE', board, user)
  out[#out + 1] = redis.call('ZCARD', board)
  out[#out + 1] = score
  if score then
    out[#out + 1] = redis.call('ZCOUNT', board, '(' .. score, '+inf') + 1
  else
    out[#out + 1] = false
  end
end
return {mark[1], mark[2] or '', redis.call('HGET', KEYS[1], user), out}
"""

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class Commands(Protocol):
    """What the reader needs of a Redis client: calls bounded in time, each raising
    ``TimeoutError`` when its bound runs out."""

    async def execute_command(self, *command: Any) -> Any: ...


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
        self._scripts = {
            script: hashlib.sha1(script.encode()).hexdigest()
            for script in (_BOARD_LUA, _STANDING_LUA, _USER_LUA)
        }

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
        reply = await self._run(_BOARD_LUA, keys, b"%d" % offset, b"%d" % limit)
        lsn, commit_time, total, rows = reply
        return BoardPage(total=int(total), entries=_entries(rows), as_of=_as_of(lsn, commit_time))

    async def standing(
        self, board: Board, period: Period, bucket: str, user_id: str, around: int
    ) -> Standing:
        """``user_id``'s rank and score with up to ``around`` neighbours either side."""
        keys = (self.board_key(board, period, bucket), self._labels(board), self._watermark)
        reply = await self._run(_STANDING_LUA, keys, user_id.encode(), b"%d" % around)
        lsn, commit_time, total, name, position, first, rows = reply
        as_of = _as_of(lsn, commit_time)
        display_name = _text_or_none(name)
        if position is None:
            return Standing(int(total), display_name, None, 0, [], [], as_of)
        entries = _entries(rows)
        mine = int(position) - int(first)
        me = entries[mine]
        return Standing(
            total=int(total),
            display_name=display_name,
            rank=me.rank,
            score=me.score,
            above=entries[:mine],
            below=entries[mine + 1 :],
            as_of=as_of,
        )

    async def user(
        self, board: Board, user_id: str, buckets: list[tuple[Period, str]]
    ) -> UserPeriods:
        """``user_id``'s score and rank on the board of each (period, bucket)."""
        keys = (
            self._labels(board),
            self._watermark,
            *(self.board_key(board, period, bucket) for period, bucket in buckets),
        )
        reply = await self._run(_USER_LUA, keys, user_id.encode())
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

    async def watermark_lsn(self) -> int | None:
        """The watermark's LSN, or None when Redis holds none."""
        value = await self._call("HGET", self._watermark, b"lsn")
        return None if value is None else _as_of(value, b"").lsn

    async def ping(self) -> dict[str, Any]:
        """Whether Redis answers and holds a watermark, for ``/readyz``."""
        raw = await self._call("HMGET", self._watermark, b"lsn", b"commit_time")
        try:
            as_of = None if raw[0] is None else _as_of(raw[0], raw[1] or b"")
        except NotBuilt:
            as_of = None
        if as_of is None:
            return {"up": True, "built": False}
        return {"up": True, "built": True, "as_of": as_of.to_json()}

    async def _run(self, script: str, keys: tuple[bytes, ...], *args: bytes) -> list[Any]:
        """Run ``script`` read-only (EVALSHA_RO; after a Redis restart, EVAL_RO once, which
        caches it again); NotBuilt on a nil reply."""
        sha = self._scripts[script]
        try:
            reply = await self._call("EVALSHA_RO", sha, len(keys), *keys, *args)
        except NoScriptError:
            reply = await self._call("EVAL_RO", script, len(keys), *keys, *args)
        if reply is None:
            raise NotBuilt("Redis holds no watermark")
        result: list[Any] = reply
        return result

    async def _call(self, *command: Any) -> Any:
        try:
            return await self._client.execute_command(*command)
        except NoScriptError:
            raise
        except TimeoutError as exc:
            raise StoreUnavailable("redis", f"no answer within {self._timeout:g} s") from exc
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailable("redis", str(exc) or type(exc).__name__) from exc
        except RedisError as exc:
            # Busy loading, out of memory, a replica that refuses...: Redis cannot answer.
            raise StoreUnavailable("redis", f"{type(exc).__name__}: {exc}") from exc


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
