"""Rolling windows: ``last7`` and ``last30``, the last 7 or 30 local days up to a day D.

A board's window is one sorted set per window period, named by its last day D (the window
day, recorded in the watermark as ``window_day``): ``{prefix}lb:{board}:last7:{D}``. It always
equals the sum of the board's day buckets D-6..D (D-29..D), which is what makes it exact:
a row change of a local day inside the window changes the window in the same batch as its
day bucket, and when the local date passes D the projector advances every window in the
batch that records the new D, from the day buckets (``advance``). That needs the day buckets
of the whole window in Redis: a board with a window keeps the ``day`` period, and day
retention covers the window (``check_retention``). Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from projector.core.boards import Board
from projector.core.buckets import (
    WINDOW_LENGTHS,
    Period,
    Retention,
    bucket_ids_for_date,
    expires_at,
)
from projector.core.errors import ConfigError
from projector.core.keys import Keys

_DAY = timedelta(days=1)


def window_periods(board: Board) -> tuple[Period, ...]:
    """The rolling windows a board keeps, in declaration order."""
    return tuple(p for p in board.periods if p in WINDOW_LENGTHS)


def first_day(period: Period, end: date) -> date:
    """The first local day of the ``period`` window ending on ``end``."""
    return end - (WINDOW_LENGTHS[period] - 1) * _DAY


def holds(period: Period, end: date, day: date) -> bool:
    """Whether the ``period`` window ending on ``end`` holds local day ``day``."""
    return first_day(period, end) <= day <= end


def days_of(period: Period, end: date) -> list[date]:
    """Every local day of the ``period`` window ending on ``end``, oldest first."""
    first = first_day(period, end)
    return [first + i * _DAY for i in range(WINDOW_LENGTHS[period])]


def day_id(day: date) -> str:
    """The bucket id of a day (and of the windows ending on it)."""
    return bucket_ids_for_date(day)[0]


def expiry(end: date, tz: ZoneInfo) -> int:
    """When the window key ending on ``end`` may go (Unix seconds): once no window that
    follows can be advanced from it (after the longest window's length)."""
    moment = expires_at(
        Period.DAY, day_id(end), tz, Retention(day_days=max(WINDOW_LENGTHS.values()))
    )
    assert moment is not None
    return moment


def parse_day(text: str) -> date | None:
    """A recorded window day (``YYYY-MM-DD``), or None for "" or anything unreadable."""
    try:
        return date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Change:
    """How a window ending on ``old`` becomes the window ending on ``new``: the old window
    (``keep_old``) plus the days entering less the days leaving; or, without ``keep_old``,
    the sum of the ``entering`` days alone (every day of the new window)."""

    keep_old: bool
    entering: tuple[date, ...]
    leaving: tuple[date, ...]


def change(
    period: Period, old: date | None, new: date, today: date, retention: Retention
) -> Change:
    """How to move the ``period`` window from ``old`` (None: Redis holds none) to ``new``.

    Incremental when the windows overlap and every leaving day bucket is still in Redis on
    ``today`` (a day bucket is kept ``retention.day_days`` days after it ends); otherwise
    the whole new window from its day buckets, which ``check_retention`` keeps.
    """
    new_days = days_of(period, new)
    if old is None or old == new:
        if old == new:
            return Change(True, (), ())
        return Change(False, tuple(new_days), ())
    old_days = days_of(period, old)
    entering = tuple(d for d in new_days if d not in old_days)
    leaving = tuple(d for d in old_days if d not in new_days)
    overlap = len(entering) < len(new_days)
    # A day bucket of day d expires at the start of d + 1 + retention.
    kept = all(d + (1 + retention.day_days) * _DAY > today for d in leaving)
    if overlap and kept:
        return Change(True, entering, leaving)
    return Change(False, tuple(new_days), ())


@dataclass(frozen=True, slots=True)
class Advance:
    """One window key rebuilt from others in one atomic step (apply_batch.lua): ``key`` =
    the sum of ``sources`` times ``weights`` (members at or below 0 dropped), expiring at
    ``expires`` (Unix seconds); ``old`` (a key or "") goes."""

    key: str
    old: str
    sources: tuple[str, ...]
    weights: tuple[int, ...]
    expires: int


def plan(
    boards: Iterable[Board],
    keys: Keys,
    old: date | None,
    new: date,
    today: date,
    retention: Retention,
    expires: int,
    *,
    whole: bool = False,
) -> tuple[Advance, ...]:
    """Every window of ``boards`` moved from the window day ``old`` to ``new``; ``whole``:
    built from the day buckets alone (the keys of ``old`` removed)."""
    steps = []
    for board in boards:
        for period in window_periods(board):
            step = change(period, None if whole else old, new, today, retention)
            if step.keep_old and not step.entering and not step.leaving:
                continue
            key = keys.board(board.name, period, day_id(new))
            old_key = keys.board(board.name, period, day_id(old)) if old is not None else ""
            sources: list[str] = [old_key] if step.keep_old else []
            weights: list[int] = [1] if step.keep_old else []
            for day in step.entering:
                sources.append(keys.board(board.name, Period.DAY, day_id(day)))
                weights.append(1)
            for day in step.leaving:
                sources.append(keys.board(board.name, Period.DAY, day_id(day)))
                weights.append(-1)
            steps.append(Advance(key, old_key, tuple(sources), tuple(weights), expires))
    return tuple(steps)


def check_retention(boards: Iterable[Board], retention: Retention) -> None:
    """Day buckets must outlive every window that holds them (a missing day would be a
    silently wrong window): day retention >= window length - 1."""
    for board in boards:
        for period in window_periods(board):
            need = WINDOW_LENGTHS[period] - 1
            if retention.day_days < need:
                raise ConfigError(
                    f"PROJECTOR_RETENTION_DAY_DAYS={retention.day_days} is too short for board "
                    f"{board.name!r}'s {period.value} window, which is kept from its day buckets:"
                    f" set it to {need} or more"
                )
