"""Rolling a member's rows up by day number gives, per bucket, what counting or summing the
rows' bucket ids one by one gives, in every period, up to the calendar's last day."""

from __future__ import annotations

from collections import Counter
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from projector.core.buckets import TIMED_PERIODS, bucket_ids_for_date
from projector.core.rollup import (
    bucket_scores,
    bucket_span,
    day_date,
    day_number,
    prefix_sums,
)

_DAYS = st.integers(day_number(date(1990, 1, 1)), day_number(date(2040, 12, 31)))
_EDGE = st.integers(day_number(date(9999, 12, 1)), day_number(date.max))


@given(st.lists(st.one_of(_DAYS, _EDGE), max_size=60), st.data())
def test_bucket_scores_equal_counting_and_summing_row_by_row(
    days: list[int], data: st.DataObject
) -> None:
    """Counts and sums per bucket (from ``since`` on) match a row-by-row tally."""
    values = data.draw(st.lists(st.integers(0, 50), min_size=len(days), max_size=len(days)))
    since = data.draw(st.one_of(_DAYS, _EDGE))
    ordered, sums = prefix_sums(days, values)
    assert ordered == sorted(days)
    for index, period in enumerate(TIMED_PERIODS):
        counts: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        for day, value in zip(days, values, strict=True):
            if day >= since:
                bucket = bucket_ids_for_date(day_date(day))[index]
                counts[bucket] += 1
                totals[bucket] += value
        by_count = {
            bucket_ids_for_date(day_date(s))[index]: n
            for s, n in bucket_scores(period, ordered, since=since)
        }
        by_sum = {
            bucket_ids_for_date(day_date(s))[index]: n
            for s, n in bucket_scores(period, ordered, sums, since=since)
        }
        assert by_count == dict(counts)
        assert by_sum == dict(totals)


def test_a_bucket_spans_its_dates() -> None:
    """Weeks start on Monday across a year boundary; the calendar's last bucket ends past it."""
    start, end = bucket_span(TIMED_PERIODS[1], day_number(date(2032, 1, 1)))
    assert (day_date(start), day_date(end)) == (date(2031, 12, 29), date(2032, 1, 5))
    start, end = bucket_span(TIMED_PERIODS[2], day_number(date(2026, 12, 8)))
    assert (day_date(start), day_date(end)) == (date(2026, 12, 1), date(2027, 1, 1))
    start, end = bucket_span(TIMED_PERIODS[3], day_number(date.max))
    assert day_date(start) == date(9999, 1, 1) and end == day_number(date.max) + 1
