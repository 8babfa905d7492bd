"""Bucket arithmetic: which day, ISO week, month and year an instant belongs to in one IANA zone.

An instant belongs to the buckets of its local date in the zone (``2026-11-26``, ``2026-W48``,
``2026-11``, ``2026``) and always to ``all``. A bucket runs from the first instant of its first
local date (local midnight, unless a clock change skips midnight) to the first instant of the next
bucket. Only local years 0001..9999 are representable: an instant whose local date is outside them
belongs to ``all`` only. Pure functions; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo


class Period(StrEnum):
    """A leaderboard period; the value is the name used in Redis keys and URLs."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"
    ALL = "all"
    # Rolling windows (projector.core.windows): the last 7 or 30 local days up to a day.
    LAST7 = "last7"
    LAST30 = "last30"


TIMED_PERIODS: tuple[Period, ...] = (Period.DAY, Period.WEEK, Period.MONTH, Period.YEAR)
# The calendar periods (every period but the rolling windows): the default of a board.
CALENDAR_PERIODS: tuple[Period, ...] = (*TIMED_PERIODS, Period.ALL)
# Rolling windows and their length in local days; a window's bucket is its last day.
WINDOW_LENGTHS: dict[Period, int] = {Period.LAST7: 7, Period.LAST30: 30}
ALL_BUCKET = "all"

_PERIOD_NAMES = ", ".join(period.value for period in Period)
_INDEX = {period: index for index, period in enumerate(TIMED_PERIODS)}
_INDEX.update({window: 0 for window in WINDOW_LENGTHS})  # a window is named by its last day
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)
_MAX_ORDINAL = date.max.toordinal()
# The Gregorian calendar, weekdays included, repeats exactly every 400 years (146,097 days).
_CYCLE_YEARS = 400
_CYCLE = timedelta(days=146_097)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a finished bucket's board is kept after the bucket ends, per period."""

    day_days: int = 35
    week_weeks: int = 13
    month_months: int = 13
    year_years: int = 5

    def __post_init__(self) -> None:
        for name in ("day_days", "week_weeks", "month_months", "year_years"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"retention {name} must be a whole number >= 0, not {value!r}")

    def buckets(self, period: Period) -> int:
        """Return how many buckets of ``period`` a finished board outlives its bucket by."""
        if period == Period.ALL:
            raise ValueError("the all-time board is kept forever; it has no retention")
        if period in WINDOW_LENGTHS:
            raise ValueError(f"a {period} window is replaced daily; it has no retention")
        return (self.day_days, self.week_weeks, self.month_months, self.year_years)[_INDEX[period]]


def parse_period(text: str) -> Period:
    """Return the period named ``text``; raise ValueError for any other text."""
    try:
        return Period(text)
    except ValueError:
        raise ValueError(f"unknown period {text!r}; expected one of {_PERIOD_NAMES}") from None


# --- instants to buckets (the projector's hot path) -------------------------------------------


def local_date(ts: datetime, tz: ZoneInfo) -> date | None:
    """Return the date of the aware instant ``ts`` in ``tz``, or None outside years 0001..9999."""
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {ts.isoformat()} has no time zone; buckets need an instant")
    try:
        return ts.astimezone(tz).date()
    except OverflowError:
        return _local_date_near_limits(ts, tz)


@lru_cache(maxsize=8192)
def bucket_ids_for_date(d: date) -> tuple[str, str, str, str]:
    """Return the (day, week, month, year) bucket ids of the local date ``d``."""
    iso = d.isocalendar()
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
        f"{iso.year:04d}-W{iso.week:02d}",
        f"{d.year:04d}-{d.month:02d}",
        f"{d.year:04d}",
    )


def bucket_for(ts: datetime, period: Period, tz: ZoneInfo) -> str | None:
    """Return the bucket of ``period`` holding instant ``ts`` in ``tz``; None if unrepresentable.

    For a rolling window that is the window ending on the instant's local date (the newest of
    the windows holding it)."""
    if period == Period.ALL:
        return ALL_BUCKET
    d = local_date(ts, tz)
    if d is None:
        return None
    return bucket_ids_for_date(d)[_INDEX[period]]


def current_bucket(period: Period, tz: ZoneInfo, now: datetime) -> str:
    """Return the bucket of ``period`` holding ``now`` in ``tz``."""
    moment = now
    bucket = bucket_for(moment, period, tz)
    if bucket is None:
        raise ValueError(
            f"{moment.isoformat()} has no {period} bucket in {tz}: "
            "its local date is outside years 0001..9999"
        )
    return bucket


# --- bucket ids -------------------------------------------------------------------------------

_DAY_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_WEEK_RE = re.compile(r"([0-9]{4})-W([0-9]{2})")
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
_YEAR_RE = re.compile(r"([0-9]{4})")
_SHAPES = {
    Period.DAY: (_DAY_RE, "YYYY-MM-DD, like 2026-11-26"),
    Period.WEEK: (_WEEK_RE, "YYYY-Www (an ISO 8601 week), like 2026-W48"),
    Period.MONTH: (_MONTH_RE, "YYYY-MM, like 2026-11"),
    Period.YEAR: (_YEAR_RE, "YYYY, like 2026"),
}


def parse_bucket(period: Period, text: str) -> str:
    """Return the canonical id of bucket ``text`` of ``period``; raise ValueError if invalid.

    Only the canonical spelling is accepted (zero-padded, upper-case ``W``), and it must name a
    real bucket: 2026-02-30, 2025-W53 and year 0000 are rejected.
    """
    if period == Period.ALL:
        if text != ALL_BUCKET:
            raise ValueError(
                f"invalid all bucket {text!r}: the all-time period has the single bucket 'all'"
            )
        return ALL_BUCKET
    return _id_of(period, _first_date(period, text))


def bucket_bounds(
    period: Period, bucket: str, tz: ZoneInfo
) -> tuple[datetime | None, datetime | None]:
    """Return the instants (in ``tz``) where ``bucket`` starts (inclusive) and ends (exclusive).

    For every instant t: ``bucket_for(t, period, tz) == bucket`` iff ``start <= t < end``, as long
    as the zone's local date never runs backwards. It did, for up to an hour a year, where clocks
    were set back across midnight (America/St_Johns at 00:01 until 2010, Antarctica/Casey in
    2010): instants of that repeated hour keep the earlier local date although they lie after its
    end. The end is None when it falls after 9999-12-31 locally; instants from there on have no
    bucket at all. ``(None, None)`` for the all-time bucket.
    """
    if period == Period.ALL:
        parse_bucket(period, bucket)
        return None, None
    first = _first_date(period, bucket)
    end = _shift(period, first, 1)
    length = WINDOW_LENGTHS.get(period)
    if length is not None:
        # A window ending on day D runs from the start of day D - (length - 1).
        first = date.fromordinal(max(1, first.toordinal() - length + 1))
    return _day_start(first, tz), None if end is None else _day_start(end, tz)


def previous_bucket(period: Period, bucket: str) -> str | None:
    """Return the bucket before ``bucket``; None for the all-time bucket or before year 0001."""
    return _neighbour(period, bucket, -1)


def next_bucket(period: Period, bucket: str) -> str | None:
    """Return the bucket after ``bucket``; None for the all-time bucket or after year 9999."""
    return _neighbour(period, bucket, 1)


# --- retention --------------------------------------------------------------------------------


def expires_at(period: Period, bucket: str, tz: ZoneInfo, retention: Retention) -> int | None:
    """Return the Unix time (seconds) from which the board of ``bucket`` may be deleted.

    That is the bucket's end plus the retention, counted in local calendar units (days, weeks,
    months, years) and taken at the first instant of the resulting local date. None (never
    expire) for the all-time board or when that date is after 9999-12-31.
    """
    if period == Period.ALL:
        parse_bucket(period, bucket)
        return None
    if period in WINDOW_LENGTHS:
        # The projector replaces a window when its last day ends: from then on PostgreSQL
        # answers for it (projector.core.windows).
        expiry = _shift(period, _first_date(period, bucket), 1)
    else:
        expiry = _shift(period, _first_date(period, bucket), 1 + retention.buckets(period))
    if expiry is None:
        return None
    return (_day_start(expiry, tz) - _EPOCH) // _SECOND


def oldest_retained_bucket_start(
    period: Period, tz: ZoneInfo, retention: Retention, now: datetime
) -> datetime | None:
    """Return where the oldest bucket of ``period`` whose board has not expired at ``now`` starts.

    Rows completed at or after this instant can still matter to a board of ``period``. None for
    the all-time period, whose board needs every row.
    """
    if period == Period.ALL:
        return None
    if period in WINDOW_LENGTHS:
        raise ValueError(f"a {period} window is made from day buckets; ask for the day period")
    moment = now
    today = local_date(moment, tz)
    if today is None:
        raise ValueError(
            f"{moment.isoformat()} has no {period} bucket in {tz}: "
            "its local date is outside years 0001..9999"
        )
    # A board expires at the first instant of a local date, which is after `now` exactly when
    # that date is after `today`; so the oldest kept bucket is `retention` buckets back.
    oldest = _shift(period, _first_date_of(period, today), -retention.buckets(period))
    return _day_start(date.min if oldest is None else oldest, tz)


# --- internals --------------------------------------------------------------------------------


def _local_date_near_limits(ts: datetime, tz: ZoneInfo) -> date | None:
    # `ts` lies within a day of datetime's limits, where converting through UTC overflows. Zone
    # rules out there repeat every 400 years (local mean time before the first transition, the
    # POSIX rule after the last), so convert the same instant 400 years nearer the middle.
    offset = ts.utcoffset()
    if offset is None:
        raise ValueError(f"timestamp {ts.isoformat()} has no UTC offset; buckets need an instant")
    years = _CYCLE_YEARS if ts.year < 5000 else -_CYCLE_YEARS
    moved = ts.replace(tzinfo=timezone(offset)) + (_CYCLE if years > 0 else -_CYCLE)
    shifted = moved.astimezone(tz).date()
    year = shifted.year - years
    return shifted.replace(year=year) if 1 <= year <= 9999 else None


@lru_cache(maxsize=4096)
def _day_start(d: date, tz: ZoneInfo) -> datetime:
    """Return the first instant whose local date in ``tz`` is ``d`` or later, in ``tz``."""
    try:
        return _day_start_utc(d, tz).astimezone(tz)
    except OverflowError:
        # Within a day of year 0001 or 9999 the UTC instant may not be representable; compute
        # 400 years nearer the middle (see _local_date_near_limits) and move the wall time back.
        years = _CYCLE_YEARS if d.year < 5000 else -_CYCLE_YEARS
        moved = _day_start_utc(d.replace(year=d.year + years), tz).astimezone(tz)
        return moved.replace(year=moved.year - years)


def _day_start_utc(d: date, tz: ZoneInfo) -> datetime:
    midnight = datetime(d.year, d.month, d.day)
    readings = [midnight.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)]
    real = [r for r in readings if r.astimezone(tz).replace(tzinfo=None) == midnight]
    if real:
        # Both readings are real when midnight repeats (clocks set back to 00:00): take the first.
        return min(real)
    # A clock change skipped midnight (America/Santiago, America/Havana, or a whole day, as in
    # Pacific/Apia on 2011-12-30). The day starts at that change, which lies between the readings
    # of midnight with the offsets before and after it; find it by bisection over whole seconds,
    # since zone transitions fall on whole seconds.
    low, high = min(readings), max(readings)
    while _utc_date(low, tz) >= d:
        low -= _DAY
    while _utc_date(high, tz) < d:
        high += _DAY
    below, above = 0, (high - low) // _SECOND
    while above - below > 1:
        middle = (below + above) // 2
        if _utc_date(low + middle * _SECOND, tz) >= d:
            above = middle
        else:
            below = middle
    return low + above * _SECOND


def _utc_date(instant: datetime, tz: ZoneInfo) -> date:
    return instant.astimezone(tz).date()


def _first_date(period: Period, text: str) -> date:
    """Return the first local date of bucket ``text`` of timed ``period``; validate strictly.
    (A window's bucket is its last day, spelled as a day.)"""
    if period in WINDOW_LENGTHS:
        period = Period.DAY
    regex, shape = _SHAPES[period]
    match = regex.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid {period} bucket {text!r}: expected {shape}")
    numbers = [int(group) for group in match.groups()]
    year = numbers[0]
    if year == 0:
        raise ValueError(
            f"invalid {period} bucket {text!r}: year 0000 does not exist; years run from 0001"
        )
    if period == Period.YEAR:
        return date(year, 1, 1)
    if period == Period.WEEK:
        week = numbers[1]
        weeks = date(year, 12, 28).isocalendar().week  # 28 December is in a year's last week
        if not 1 <= week <= weeks:
            raise ValueError(
                f"invalid week bucket {text!r}: ISO year {year:04d} has weeks W01 to W{weeks}"
            )
        return date.fromisocalendar(year, week, 1)
    month = numbers[1]
    if not 1 <= month <= 12:
        raise ValueError(f"invalid {period} bucket {text!r}: month {month:02d} does not exist")
    if period == Period.MONTH:
        return date(year, month, 1)
    try:
        return date(year, month, numbers[2])
    except ValueError:
        raise ValueError(
            f"invalid day bucket {text!r}: {year:04d}-{month:02d} has no day {numbers[2]:02d}"
        ) from None


def _first_date_of(period: Period, d: date) -> date:
    """Return the first date of the bucket of timed ``period`` that holds ``d``."""
    if period == Period.DAY or period in WINDOW_LENGTHS:
        return d
    if period == Period.WEEK:
        # Never before 0001-01-01, which is a Monday.
        return date.fromordinal(d.toordinal() - d.weekday())
    if period == Period.MONTH:
        return d.replace(day=1)
    return d.replace(month=1, day=1)


def _shift(period: Period, first: date, count: int) -> date | None:
    """Return the first date of the bucket ``count`` buckets after the one starting on ``first``.

    None when that bucket is outside years 0001..9999.
    """
    if period in (Period.DAY, Period.WEEK) or period in WINDOW_LENGTHS:
        ordinal = first.toordinal() + count * (7 if period == Period.WEEK else 1)
        return date.fromordinal(ordinal) if 1 <= ordinal <= _MAX_ORDINAL else None
    if period == Period.MONTH:
        year, month = divmod(first.year * 12 + first.month - 1 + count, 12)
        return date(year, month + 1, 1) if 1 <= year <= 9999 else None
    year = first.year + count
    return date(year, 1, 1) if 1 <= year <= 9999 else None


def _id_of(period: Period, first: date) -> str:
    return bucket_ids_for_date(first)[_INDEX[period]]


def _neighbour(period: Period, bucket: str, count: int) -> str | None:
    if period == Period.ALL:
        parse_bucket(period, bucket)
        return None
    first = _shift(period, _first_date(period, bucket), count)
    return None if first is None else _id_of(period, first)
