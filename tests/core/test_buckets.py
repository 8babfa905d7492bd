"""Bucket arithmetic: ids, bounds, neighbours and retention, across DST and the calendar's edges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.core.buckets import (
    TIMED_PERIODS,
    Period,
    Retention,
    bucket_bounds,
    bucket_for,
    bucket_ids_for_date,
    current_bucket,
    expires_at,
    local_date,
    next_bucket,
    oldest_retained_bucket_start,
    parse_bucket,
    parse_period,
    previous_bucket,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SANTIAGO = ZoneInfo("America/Santiago")
HAVANA = ZoneInfo("America/Havana")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")
PAGO_PAGO = ZoneInfo("Pacific/Pago_Pago")
PROPERTY_ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "America/Santiago",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "Pacific/Chatham",
    )
]
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def just_before(instant: datetime) -> datetime:
    """The instant 1 µs earlier (arithmetic on an aware datetime would move its wall clock)."""
    return instant.astimezone(UTC) - timedelta(microseconds=1)


def seconds(instant: datetime) -> int:
    """Unix seconds of an aware instant, exact even near year 1 (no float, no UTC conversion)."""
    return (instant - EPOCH) // timedelta(seconds=1)


def inside(instant: datetime, bounds: tuple[datetime | None, datetime | None]) -> bool:
    start, end = bounds
    assert start is not None
    # Subtracting EPOCH compares as instants even when both share a tzinfo (wall-clock order).
    return start - EPOCH <= instant - EPOCH and (end is None or instant - EPOCH < end - EPOCH)


# --- periods ----------------------------------------------------------------------------------


def test_parse_period_accepts_every_period_name() -> None:
    """Each period's name parses to that period, and the timed periods are all but ALL."""
    assert [parse_period(period.value) for period in Period] == list(Period)
    assert TIMED_PERIODS == (Period.DAY, Period.WEEK, Period.MONTH, Period.YEAR)


def test_parse_period_rejects_unknown_names_with_the_choices() -> None:
    """An unknown period name is refused with a sentence listing the valid names."""
    with pytest.raises(ValueError, match=r"unknown period 'Day'; expected one of day, week"):
        parse_period("Day")


# --- ids and DST ------------------------------------------------------------------------------


def test_bucket_ids_for_date_gives_day_week_month_year() -> None:
    """A date maps to its zero-padded day, ISO week, month and year ids, cached per date."""
    ids = bucket_ids_for_date(date(2026, 11, 26))
    assert ids == ("2026-11-26", "2026-W48", "2026-11", "2026")
    assert bucket_ids_for_date(date(2026, 11, 26)) is ids


@pytest.mark.parametrize(
    ("tz", "before", "after", "day"),
    [
        # Europe/Berlin: midnight starting the DST days is still +01:00 / already +02:00 ...
        (BERLIN, utc(2026, 3, 28, 22, 59, 59), utc(2026, 3, 28, 23), "2026-03-29"),
        (BERLIN, utc(2026, 3, 29, 21, 59, 59), utc(2026, 3, 29, 22), "2026-03-30"),
        (BERLIN, utc(2026, 10, 24, 21, 59, 59), utc(2026, 10, 24, 22), "2026-10-25"),
        (BERLIN, utc(2026, 10, 25, 22, 59, 59), utc(2026, 10, 25, 23), "2026-10-26"),
        # ... and America/New_York: -05:00 / -04:00 and back.
        (NEW_YORK, utc(2026, 3, 8, 4, 59, 59), utc(2026, 3, 8, 5), "2026-03-08"),
        (NEW_YORK, utc(2026, 3, 9, 3, 59, 59), utc(2026, 3, 9, 4), "2026-03-09"),
        (NEW_YORK, utc(2026, 11, 1, 3, 59, 59), utc(2026, 11, 1, 4), "2026-11-01"),
        (NEW_YORK, utc(2026, 11, 2, 4, 59, 59), utc(2026, 11, 2, 5), "2026-11-02"),
    ],
)
def test_instants_around_local_midnight_land_in_the_right_day(
    tz: ZoneInfo, before: datetime, after: datetime, day: str
) -> None:
    """The last instant before local midnight is in the previous day, midnight in the new day."""
    assert bucket_for(after, Period.DAY, tz) == day
    assert bucket_for(before, Period.DAY, tz) == previous_bucket(Period.DAY, day)


@pytest.mark.parametrize(
    ("tz", "day", "hours", "start", "end"),
    [
        (BERLIN, "2026-03-29", 23, "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
        (BERLIN, "2026-10-25", 25, "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
        (NEW_YORK, "2026-03-08", 23, "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"),
        (NEW_YORK, "2026-11-01", 25, "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"),
    ],
)
def test_dst_days_are_23_or_25_hours_with_bounds_in_the_zone(
    tz: ZoneInfo, day: str, hours: int, start: str, end: str
) -> None:
    """A DST day's bounds are local midnights in the zone, with the right offsets, 23h/25h apart."""
    low, high = bucket_bounds(Period.DAY, day, tz)
    assert low is not None and high is not None
    assert low.tzinfo is tz and high.tzinfo is tz
    assert (low.isoformat(), high.isoformat()) == (start, end)
    assert high - EPOCH - (low - EPOCH) == timedelta(hours=hours)


@pytest.mark.parametrize(
    ("tz", "day", "start", "hours"),
    [
        (SANTIAGO, "2026-09-06", "2026-09-06T01:00:00-03:00", 23),
        (HAVANA, "2026-03-08", "2026-03-08T01:00:00-04:00", 23),
        (ZoneInfo("Africa/Cairo"), "2026-04-24", "2026-04-24T01:00:00+03:00", 23),
        # Toronto jumped from 23:30 to 00:30 in 1919: the day starts mid-gap, at 00:30.
        (ZoneInfo("America/Toronto"), "1919-03-31", "1919-03-31T00:30:00-04:00", 23.5),
    ],
)
def test_a_day_whose_midnight_is_skipped_starts_at_its_first_instant(
    tz: ZoneInfo, day: str, start: str, hours: float
) -> None:
    """A day whose midnight is skipped starts when the gap ends, where the day before ends."""
    low, high = bucket_bounds(Period.DAY, day, tz)
    assert low is not None and high is not None
    assert low.isoformat() == start
    assert high - EPOCH - (low - EPOCH) == timedelta(hours=hours)
    assert bucket_for(low, Period.DAY, tz) == day
    assert bucket_for(just_before(low), Period.DAY, tz) == previous_bucket(Period.DAY, day)
    assert bucket_bounds(Period.DAY, previous_bucket(Period.DAY, day) or "", tz)[1] == low


def test_a_day_whose_midnight_repeats_starts_at_the_first_midnight() -> None:
    """Where clocks fall back from 01:00 to 00:00 (Havana) the day starts at the first midnight."""
    low, high = bucket_bounds(Period.DAY, "2026-11-01", HAVANA)
    assert low is not None and high is not None
    assert low.isoformat() == "2026-11-01T00:00:00-04:00"
    assert high - EPOCH - (low - EPOCH) == timedelta(hours=25)
    assert bucket_for(utc(2026, 11, 1, 3, 59, 59), Period.DAY, HAVANA) == "2026-10-31"


def test_a_skipped_calendar_day_is_an_empty_bucket() -> None:
    """Samoa skipped 2011-12-30: that day's bucket starts and ends where 2011-12-31 starts."""
    apia = ZoneInfo("Pacific/Apia")
    low, high = bucket_bounds(Period.DAY, "2011-12-30", apia)
    assert low is not None and low == high == bucket_bounds(Period.DAY, "2011-12-31", apia)[0]
    assert low == utc(2011, 12, 30, 10)
    assert bucket_for(just_before(low), Period.DAY, apia) == "2011-12-29"


def test_a_clock_set_back_across_midnight_repeats_the_previous_day() -> None:
    """Known limit: St. John's set clocks back at 00:01 until 2010; that hour keeps the old date."""
    st_johns = ZoneInfo("America/St_Johns")
    repeated = utc(2009, 11, 1, 2, 45)  # 23:15 on 31 October again, after 1 November began
    assert bucket_for(repeated, Period.DAY, st_johns) == "2009-10-31"
    assert not inside(repeated, bucket_bounds(Period.DAY, "2009-10-31", st_johns))
    assert inside(repeated, bucket_bounds(Period.DAY, "2009-11-01", st_johns))


# --- weeks, months, years ---------------------------------------------------------------------


def test_2026_has_an_iso_week_53_from_28_december_to_3_january() -> None:
    """2026-W53 runs Monday 2026-12-28 to Sunday 2027-01-03 and holds 2027-01-01."""
    low, high = bucket_bounds(Period.WEEK, "2026-W53", UTC_ZONE)
    assert (low, high) == (utc(2026, 12, 28), utc(2027, 1, 4))
    assert bucket_ids_for_date(date(2027, 1, 1))[1] == "2026-W53"
    assert bucket_ids_for_date(date(2027, 1, 4))[1] == "2027-W01"
    assert next_bucket(Period.WEEK, "2026-W53") == "2027-W01"
    assert previous_bucket(Period.WEEK, "2027-W01") == "2026-W53"
    assert next_bucket(Period.WEEK, "2025-W52") == "2026-W01"


def test_week_53_is_invalid_in_a_52_week_year() -> None:
    """2025 has 52 ISO weeks, so 2025-W53 is refused with a sentence saying so."""
    with pytest.raises(ValueError, match=r"ISO year 2025 has weeks W01 to W52"):
        parse_bucket(Period.WEEK, "2025-W53")


def test_new_year_depends_on_the_zone() -> None:
    """One instant is in 2027 at Kiritimati (+14) and still in 2026 at Pago Pago (-11)."""
    instant = utc(2026, 12, 31, 12)
    east = [bucket_for(instant, period, KIRITIMATI) for period in TIMED_PERIODS]
    west = [bucket_for(instant, period, PAGO_PAGO) for period in TIMED_PERIODS]
    assert east == ["2027-01-01", "2026-W53", "2027-01", "2027"]
    assert west == ["2026-12-31", "2026-W53", "2026-12", "2026"]
    assert bucket_bounds(Period.YEAR, "2027", KIRITIMATI)[0] == utc(2026, 12, 31, 10)
    assert bucket_bounds(Period.YEAR, "2027", PAGO_PAGO)[0] == utc(2027, 1, 1, 11)
    assert bucket_bounds(Period.MONTH, "2026-12", PAGO_PAGO)[1] == utc(2027, 1, 1, 11)


def test_month_and_year_bounds_follow_local_first_days() -> None:
    """A month ends at the next month's first local midnight; February 2028 has 29 days."""
    low, high = bucket_bounds(Period.MONTH, "2026-10", BERLIN)
    assert (low, high) == (utc(2026, 9, 30, 22), utc(2026, 10, 31, 23))
    low, high = bucket_bounds(Period.MONTH, "2028-02", UTC_ZONE)
    assert (low, high) == (utc(2028, 2, 1), utc(2028, 3, 1))
    assert bucket_bounds(Period.YEAR, "2026", NEW_YORK) == (utc(2026, 1, 1, 5), utc(2027, 1, 1, 5))


# --- the calendar's edges ---------------------------------------------------------------------


def test_year_one_starts_on_a_monday_in_week_one() -> None:
    """0001-01-01 is a Monday, so it is in 0001-W01, and nothing comes before the first buckets."""
    assert bucket_ids_for_date(date.min) == ("0001-01-01", "0001-W01", "0001-01", "0001")
    assert bucket_bounds(Period.WEEK, "0001-W01", UTC_ZONE)[0] == utc(1, 1, 1)
    for bucket, period in zip(bucket_ids_for_date(date.min), TIMED_PERIODS, strict=True):
        assert previous_bucket(period, bucket) is None
    assert next_bucket(Period.DAY, "0001-01-01") == "0001-01-02"


def test_year_9999_is_the_last_and_its_ends_are_unrepresentable() -> None:
    """Buckets ending after 9999-12-31 have no end, no successor and never expire."""
    assert bucket_ids_for_date(date.max) == ("9999-12-31", "9999-W52", "9999-12", "9999")
    for bucket, period in zip(bucket_ids_for_date(date.max), TIMED_PERIODS, strict=True):
        assert next_bucket(period, bucket) is None
        assert bucket_bounds(period, bucket, UTC_ZONE)[1] is None
        assert expires_at(period, bucket, UTC_ZONE, Retention()) is None
    assert bucket_bounds(Period.WEEK, "9999-W52", UTC_ZONE)[0] == utc(9999, 12, 27)
    assert expires_at(Period.YEAR, "9994", UTC_ZONE, Retention()) is None
    assert expires_at(Period.YEAR, "9993", UTC_ZONE, Retention()) == seconds(utc(9999, 1, 1))


def test_instants_whose_local_date_leaves_years_1_to_9999_have_no_bucket() -> None:
    """West of UTC the first instant is still in year 0, east of it the last is in year 10000."""
    first, last = utc(1, 1, 1), datetime.max.replace(tzinfo=UTC)
    assert local_date(first, NEW_YORK) is None
    assert bucket_for(first, Period.DAY, NEW_YORK) is None
    assert bucket_for(first, Period.ALL, NEW_YORK) == "all"
    assert local_date(last, KIRITIMATI) is None
    assert bucket_for(last, Period.YEAR, KIRITIMATI) is None
    assert local_date(first, UTC_ZONE) == date.min and local_date(last, UTC_ZONE) == date.max
    with pytest.raises(ValueError, match=r"outside years 0001\.\.9999"):
        current_bucket(Period.DAY, KIRITIMATI, now=last)


def test_dates_and_bounds_are_computed_where_utc_leaves_years_1_to_9999() -> None:
    """Local dates and bounds inside years 1..9999 are computed even when UTC is outside them."""
    tokyo, seoul = ZoneInfo("Asia/Tokyo"), ZoneInfo("Asia/Seoul")
    low, _ = bucket_bounds(Period.DAY, "0001-01-01", tokyo)
    assert low is not None and low.tzinfo is tokyo
    assert low.replace(tzinfo=None) == datetime(1, 1, 1)
    assert seconds(low) == seconds(utc(1, 1, 1)) - (9 * 3600 + 18 * 60 + 59)  # local mean time
    # 01:00 in Tokyo is 00:08:53 in Seoul, although UTC is still 0000-12-31.
    assert local_date(datetime(1, 1, 1, 1, tzinfo=tokyo), seoul) == date.min
    assert local_date(datetime(1, 1, 1, 0, 30, tzinfo=tokyo), seoul) is None
    # 20:00 on 9999-12-31 in Pago Pago (-11) is 21:00 in Honolulu (-10), in UTC year 10000.
    honolulu = ZoneInfo("Pacific/Honolulu")
    assert local_date(datetime(9999, 12, 31, 20, tzinfo=PAGO_PAGO), honolulu) == date.max
    assert local_date(datetime(9999, 12, 31, 20, tzinfo=PAGO_PAGO), NEW_YORK) is None


def test_local_date_refuses_naive_timestamps() -> None:
    """A timestamp without a zone is not an instant and is refused."""
    with pytest.raises(ValueError, match="has no time zone"):
        local_date(datetime(2026, 11, 26, 12), BERLIN)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "text"),
    [
        (Period.DAY, "2026-11-26"),
        (Period.DAY, "2028-02-29"),
        (Period.DAY, "0001-01-01"),
        (Period.WEEK, "2026-W53"),
        (Period.WEEK, "0001-W01"),
        (Period.MONTH, "9999-12"),
        (Period.YEAR, "0001"),
        (Period.ALL, "all"),
    ],
)
def test_parse_bucket_returns_valid_canonical_ids(period: Period, text: str) -> None:
    """A canonical id of a real bucket is accepted unchanged."""
    assert parse_bucket(period, text) == text


@pytest.mark.parametrize(
    ("period", "text", "problem"),
    [
        (Period.DAY, "2026-02-30", "2026-02 has no day 30"),
        (Period.DAY, "2027-02-29", "2027-02 has no day 29"),
        (Period.DAY, "2026-13-01", "month 13 does not exist"),
        (Period.DAY, "0000-01-01", "year 0000 does not exist"),
        (Period.DAY, "2026-1-26", "expected YYYY-MM-DD"),
        (Period.DAY, "2026-11-26\n", "expected YYYY-MM-DD"),
        (Period.DAY, "\uff12\uff10\uff12\uff16-11-26", "expected YYYY-MM-DD"),
        (Period.DAY, "all", "expected YYYY-MM-DD"),
        (Period.WEEK, "2026-W00", "ISO year 2026 has weeks W01 to W53"),
        (Period.WEEK, "2026-W54", "ISO year 2026 has weeks W01 to W53"),
        (Period.WEEK, "2026-w48", "expected YYYY-Www"),
        (Period.WEEK, "2026-W5", "expected YYYY-Www"),
        (Period.MONTH, "2026-00", "month 00 does not exist"),
        (Period.MONTH, "2026-11-01", "expected YYYY-MM"),
        (Period.YEAR, "0000", "year 0000 does not exist"),
        (Period.YEAR, "10000", "expected YYYY"),
        (Period.YEAR, " 2026", "expected YYYY"),
        (Period.ALL, "2026", "the single bucket 'all'"),
        (Period.ALL, "ALL", "the single bucket 'all'"),
    ],
)
def test_parse_bucket_names_the_problem(period: Period, text: str, problem: str) -> None:
    """An invalid bucket is refused with a sentence naming the period, the text and the problem."""
    with pytest.raises(ValueError, match="invalid") as raised:
        parse_bucket(period, text)
    message = str(raised.value)
    assert f"{period} bucket {text!r}" in message
    assert problem in message


def test_every_bucket_function_validates_its_bucket() -> None:
    """Bounds, neighbours and expiry refuse an invalid bucket instead of guessing."""
    tz, keep = UTC_ZONE, Retention()
    for call in (
        lambda: bucket_bounds(Period.DAY, "2026-02-30", tz),
        lambda: previous_bucket(Period.WEEK, "2025-W53"),
        lambda: next_bucket(Period.ALL, "2026"),
        lambda: expires_at(Period.MONTH, "2026-13", tz, keep),
    ):
        with pytest.raises(ValueError, match="invalid"):
            call()


# --- retention --------------------------------------------------------------------------------


def test_expiry_adds_retention_in_local_calendar_units() -> None:
    """A board expires its retention (days, weeks, months, years) after its bucket's local end."""
    keep = Retention()
    assert expires_at(Period.DAY, "2026-11-26", BERLIN, keep) == seconds(utc(2026, 12, 31, 23))
    assert expires_at(Period.WEEK, "2026-W48", BERLIN, keep) == seconds(utc(2027, 2, 28, 23))
    assert expires_at(Period.MONTH, "2026-11", BERLIN, keep) == seconds(utc(2027, 12, 31, 23))
    assert expires_at(Period.YEAR, "2026", BERLIN, keep) == seconds(utc(2031, 12, 31, 23))
    # 35 days after 2026-03-02 is after the switch to summer time: local midnight is +02:00.
    assert expires_at(Period.DAY, "2026-03-01", BERLIN, keep) == seconds(utc(2026, 4, 5, 22))
    assert expires_at(Period.ALL, "all", BERLIN, keep) is None
    assert expires_at(Period.DAY, "2026-11-26", UTC_ZONE, Retention(day_days=0)) == seconds(
        utc(2026, 11, 27)
    )


def test_retention_must_be_a_whole_number_of_periods() -> None:
    """A negative retention is refused with a sentence naming the setting."""
    with pytest.raises(ValueError, match=r"retention week_weeks must be a whole number >= 0"):
        Retention(week_weeks=-1)


def test_oldest_retained_bucket_is_retention_buckets_back() -> None:
    """With the default retention the oldest kept day is 35 days back, the oldest year 5 back."""
    now = utc(2026, 11, 26, 12)
    keep = Retention()
    assert oldest_retained_bucket_start(Period.DAY, BERLIN, keep, now) == utc(2026, 10, 21, 22)
    assert oldest_retained_bucket_start(Period.WEEK, UTC_ZONE, keep, now) == utc(2026, 8, 24)
    assert oldest_retained_bucket_start(Period.MONTH, UTC_ZONE, keep, now) == utc(2025, 10, 1)
    assert oldest_retained_bucket_start(Period.YEAR, UTC_ZONE, keep, now) == utc(2021, 1, 1)
    assert oldest_retained_bucket_start(Period.ALL, UTC_ZONE, keep, now) is None
    assert oldest_retained_bucket_start(Period.YEAR, UTC_ZONE, keep, utc(3, 6, 1)) == utc(1, 1, 1)


def test_current_bucket_uses_now_in_the_zone() -> None:
    """The current bucket is the one holding `now` locally, and 'all' for the all-time period."""
    now = utc(2026, 11, 26, 23, 30)
    assert current_bucket(Period.DAY, BERLIN, now) == "2026-11-27"
    assert current_bucket(Period.DAY, UTC_ZONE, now) == "2026-11-26"
    assert current_bucket(Period.ALL, BERLIN, datetime.now(UTC)) == "all"
    years = {f"{datetime.now(UTC).year:04d}"}
    current = current_bucket(Period.YEAR, UTC_ZONE, datetime.now(UTC))
    years.add(f"{datetime.now(UTC).year:04d}")
    assert current in years


# --- properties -------------------------------------------------------------------------------

middle_instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
)
edge_instants = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 20), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(9999, 12, 10), max_value=datetime.max, timezones=st.just(UTC))
instants = middle_instants | edge_instants
zones = st.sampled_from(PROPERTY_ZONES)
periods = st.sampled_from(TIMED_PERIODS)
retentions = st.builds(
    Retention,
    day_days=st.integers(0, 60),
    week_weeks=st.integers(0, 60),
    month_months=st.integers(0, 30),
    year_years=st.integers(0, 10),
)
nearby = st.timedeltas(min_value=-timedelta(days=3), max_value=timedelta(days=3)) | st.timedeltas(
    min_value=-timedelta(days=800), max_value=timedelta(days=800)
)


@PROPERTY_SETTINGS
@given(instants, nearby, periods, zones)
def test_an_instant_is_in_a_bucket_iff_it_lies_within_its_bounds(
    instant: datetime, offset: timedelta, period: Period, tz: ZoneInfo
) -> None:
    """bucket_for(t) == b exactly when start(b) <= t < end(b), for t near and far from b."""
    bucket = bucket_for(instant, period, tz)
    if bucket is None:
        return
    bounds = bucket_bounds(period, bucket, tz)
    assert inside(instant, bounds)
    try:
        other = instant + offset
    except OverflowError:
        return
    other_bucket = bucket_for(other, period, tz)
    if other_bucket is not None:
        assert inside(other, bounds) == (other_bucket == bucket)
        return
    # Unrepresentable instants lie before the first day or after the last day starts, and inside
    # no bucket whose end is known.
    first = bucket_bounds(Period.DAY, "0001-01-01", tz)[0]
    last = bucket_bounds(Period.DAY, "9999-12-31", tz)[0]
    assert first is not None and last is not None
    assert other - EPOCH < first - EPOCH or other - EPOCH >= last - EPOCH
    assert bounds[1] is None or not inside(other, bounds)


@PROPERTY_SETTINGS
@given(instants, periods, zones)
def test_a_bucket_starts_exactly_where_the_previous_one_ends(
    instant: datetime, period: Period, tz: ZoneInfo
) -> None:
    """The start of a bucket is in it; one microsecond earlier is in the previous bucket."""
    bucket = bucket_for(instant, period, tz)
    if bucket is None:
        return
    start, _ = bucket_bounds(period, bucket, tz)
    assert start is not None
    assert bucket_for(start, period, tz) == bucket
    before = previous_bucket(period, bucket)
    if before is not None:
        assert bucket_bounds(period, before, tz)[1] == start
        assert bucket_for(just_before(start), period, tz) == before


@PROPERTY_SETTINGS
@given(instants, periods, zones)
def test_ids_round_trip_through_parsing_and_neighbours(
    instant: datetime, period: Period, tz: ZoneInfo
) -> None:
    """A bucket id parses to itself; a step back then forward (or forward then back) returns it."""
    bucket = bucket_for(instant, period, tz)
    if bucket is None:
        return
    assert parse_bucket(period, bucket) == bucket
    day = local_date(instant, tz)
    assert day is not None
    assert bucket == bucket_ids_for_date(day)[TIMED_PERIODS.index(period)]
    before, after = previous_bucket(period, bucket), next_bucket(period, bucket)
    if before is not None:
        assert next_bucket(period, before) == bucket
    if after is not None:
        assert previous_bucket(period, after) == bucket


@PROPERTY_SETTINGS
@given(instants, periods, zones, retentions)
def test_a_board_expires_after_its_bucket_ends(
    instant: datetime, period: Period, tz: ZoneInfo, retention: Retention
) -> None:
    """expires_at is at or after the bucket's end, strictly after it when retention is positive."""
    bucket = bucket_for(instant, period, tz)
    if bucket is None:
        return
    end = bucket_bounds(period, bucket, tz)[1]
    expiry = expires_at(period, bucket, tz, retention)
    if end is None:
        assert expiry is None
        return
    if expiry is None:
        return  # expiry after 9999-12-31: kept forever
    if retention.buckets(period) == 0:
        assert expiry == seconds(end)
    else:
        assert expiry > seconds(end)


@PROPERTY_SETTINGS
@given(instants, zones)
def test_days_nest_inside_their_week_month_and_year(instant: datetime, tz: ZoneInfo) -> None:
    """A day's whole span lies inside the week, month and year its start belongs to."""
    day = bucket_for(instant, Period.DAY, tz)
    if day is None:
        return
    start, end = bucket_bounds(Period.DAY, day, tz)
    assert start is not None
    for period in (Period.WEEK, Period.MONTH, Period.YEAR):
        outer = bucket_for(start, period, tz)
        assert outer is not None
        outer_start, outer_end = bucket_bounds(period, outer, tz)
        assert outer_start is not None and outer_start - EPOCH <= start - EPOCH
        if end is not None and outer_end is not None:
            assert end - EPOCH <= outer_end - EPOCH
        if end is None:
            assert outer_end is None


@PROPERTY_SETTINGS
@given(instants, periods, zones, retentions)
def test_oldest_retained_bucket_is_the_first_not_yet_expired(
    now: datetime, period: Period, tz: ZoneInfo, retention: Retention
) -> None:
    """The oldest retained bucket has not expired at `now`; the bucket before it has."""
    if local_date(now, tz) is None:
        return
    start = oldest_retained_bucket_start(period, tz, retention, now)
    assert start is not None
    oldest = bucket_for(start, period, tz)
    assert oldest is not None
    assert bucket_bounds(period, oldest, tz)[0] == start
    expiry = expires_at(period, oldest, tz, retention)
    assert expiry is None or expiry > seconds(now)
    before = previous_bucket(period, oldest)
    if before is not None:
        expired = expires_at(period, before, tz, retention)
        assert expired is not None and expired <= seconds(now)
