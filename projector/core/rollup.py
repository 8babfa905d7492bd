"""Roll one member's rows, as local day numbers, up into the buckets of every period.

The rebuild scans a board's table once (``queries.member_days``): per member, the local
date of each row in calendar as a day number (days since 2000-01-01, as PostgreSQL's
``date - date`` counts them) and, for a sum board, each row's value. Sorted, the rows of one
bucket are a contiguous run, found by bisection; a run's score is its length (count) or the
difference of two prefix sums (sum). Pure functions; no I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from functools import lru_cache
from itertools import accumulate

from projector.core.buckets import Period

EPOCH = date(2000, 1, 1)
_EPOCH_ORDINAL = EPOCH.toordinal()
_PAST_CALENDAR = date.max.toordinal() + 1 - _EPOCH_ORDINAL  # the day after 9999-12-31


def day_number(d: date) -> int:
    """The day number of local date ``d`` (0 for 2000-01-01)."""
    return d.toordinal() - _EPOCH_ORDINAL


def day_date(number: int) -> date:
    """The local date of day number ``number``."""
    return EPOCH + timedelta(days=number)


@lru_cache(maxsize=65536)
def bucket_span(period: Period, day: int) -> tuple[int, int]:
    """The day numbers where the bucket of ``period`` holding ``day`` starts (inclusive) and
    the next one starts (exclusive; past 9999-12-31 for the calendar's last bucket)."""
    d = day_date(day)
    if period is Period.DAY:
        first, following = d, d.toordinal() + 1
    elif period is Period.WEEK:
        first = d - timedelta(days=d.weekday())
        following = first.toordinal() + 7
    elif period is Period.MONTH:
        first = d.replace(day=1)
        year, month = divmod(d.year * 12 + d.month, 12)
        following = _ordinal_or_past(year, month + 1)
    elif period is Period.YEAR:
        first = d.replace(month=1, day=1)
        following = _ordinal_or_past(d.year + 1, 1)
    else:
        raise ValueError(f"the {period} period has no bucket of days")
    return day_number(first), min(following - _EPOCH_ORDINAL, _PAST_CALENDAR)


def _ordinal_or_past(year: int, month: int) -> int:
    if year > date.max.year:
        return date.max.toordinal() + 1
    return date(year, month, 1).toordinal()


def prefix_sums(days: Sequence[int], values: Sequence[int]) -> tuple[list[int], list[int]]:
    """``days`` sorted, with the prefix sums of ``values`` taken in that order (one more
    entry than rows: ``sums[j] - sums[i]`` is the sum of sorted rows ``i`` to ``j - 1``)."""
    order = sorted(range(len(days)), key=days.__getitem__)
    return [days[k] for k in order], list(accumulate((values[k] for k in order), initial=0))


def bucket_scores(
    period: Period, days: Sequence[int], sums: Sequence[int] | None = None, *, since: int
) -> Iterator[tuple[int, int]]:
    """(first day number, score) of each bucket of ``period`` that holds a row of the sorted
    ``days`` on or after day ``since``: the number of rows, or with ``sums`` (``prefix_sums``)
    the sum of their values."""
    i = bisect_left(days, since)
    n = len(days)
    while i < n:
        start, following = bucket_span(period, days[i])
        j = bisect_left(days, following, i)
        yield start, (j - i if sums is None else sums[j] - sums[i])
        i = j
