"""Rankings of buckets read from PostgreSQL, kept briefly so that every page asked of a bucket
shares one statement.

A ``Ranking`` is the first rows of one bucket's board (at most ``api_fallback_rows``), with the
board's size and the state it reflects; any page inside it is a slice, and so is a member's
standing with its neighbours when the member is in it. ``Rankings`` keeps at
most ``size`` of them, least recently used first out, each for the time-to-live it was stored
with, so memory stays bounded by ``size`` times the rows of one ranking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable

from api.boards import AsOf, BoardPage, Entry, Standing


class Ranking:
    """The first ``len(entries)`` members of a board in rank order, ``total`` in all."""

    __slots__ = ("_positions", "as_of", "entries", "total")

    def __init__(self, total: int, entries: list[Entry], as_of: AsOf) -> None:
        self.total = total
        self.entries = entries
        self.as_of = as_of
        self._positions: dict[str, int] | None = None  # member -> index, built when needed

    @property
    def complete(self) -> bool:
        """Whether the entries are the whole board."""
        return len(self.entries) >= self.total

    def covers(self, offset: int, limit: int) -> bool:
        """Whether the page from ``offset`` of ``limit`` entries is a slice of this ranking."""
        return self.complete or offset + limit <= len(self.entries)

    def page(self, offset: int, limit: int) -> BoardPage:
        return BoardPage(self.total, self.entries[offset : offset + limit], self.as_of)

    def standing(self, member: str, around: int) -> Standing | None:
        """``member``'s standing with ``around`` neighbours either side, if the ranking holds
        it (a member off the board has a label that only PostgreSQL can give: None)."""
        if self._positions is None:
            self._positions = {entry.user_id: i for i, entry in enumerate(self.entries)}
        mine = self._positions.get(member)
        if mine is None:
            return None
        me = self.entries[mine]
        return Standing(
            total=self.total,
            display_name=me.display_name,
            rank=me.rank,
            score=me.score,
            above=self.entries[max(0, mine - around) : mine],
            below=self.entries[mine + 1 : mine + 1 + around],
            as_of=self.as_of,
        )


class Rankings:
    """At most ``size`` rankings by key, each trusted until its deadline."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[Hashable, tuple[float, Ranking]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: Hashable, min_lsn: int | None = None) -> Ranking | None:
        """The ranking kept for ``key`` if still fresh and at or past ``min_lsn``."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        deadline, ranking = kept
        if deadline <= time.monotonic():
            del self._kept[key]
            return None
        if min_lsn is not None and ranking.as_of.lsn < min_lsn:
            return None
        self._kept.move_to_end(key)
        return ranking

    def put(self, key: Hashable, ranking: Ranking, ttl: float) -> None:
        """Keep ``ranking`` for ``ttl`` seconds (not at all for 0), evicting the least
        recently used beyond ``size``."""
        if ttl <= 0:
            return
        self._kept[key] = (time.monotonic() + ttl, ranking)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
