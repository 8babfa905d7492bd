"""Rolling windows: the days a window holds, how it moves, its bounds across clock changes,
and the projection's window deltas and midnight advance under a driven clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from projector.core.boards import Board, Table, parse_boards
from projector.core.buckets import (
    Period,
    Retention,
    bucket_bounds,
    current_bucket,
    expires_at,
    parse_bucket,
)
from projector.core.errors import ConfigError
from projector.core.keys import Keys
from projector.core.pgoutput import Column, Insert, Relation
from projector.core.projection import Projection
from projector.core.windows import change, check_retention, days_of, holds, plan

D = date(2026, 12, 8)
RET = Retention(day_days=35)
BOARD = Board(
    "b",
    Table("public", "pomodoros"),
    "user_id",
    "completed_at",
    (Period.DAY, Period.ALL, Period.LAST7, Period.LAST30),
)


def _days(*offsets: int) -> tuple[date, ...]:
    return tuple(D + timedelta(days=o) for o in offsets)


def test_a_window_holds_its_last_n_days_today_included() -> None:
    """last7 ending on D holds D-6..D and nothing else; last30 D-29..D."""
    assert days_of(Period.LAST7, D) == list(_days(-6, -5, -4, -3, -2, -1, 0))
    assert len(days_of(Period.LAST30, D)) == 30 and days_of(Period.LAST30, D)[0] == _days(-29)[0]
    assert holds(Period.LAST7, D, _days(-6)[0]) and not holds(Period.LAST7, D, _days(-7)[0])
    assert not holds(Period.LAST7, D, _days(1)[0])


def test_one_midnight_adds_the_new_day_and_drops_the_oldest() -> None:
    """From D to D+1: old window + day D+1 - day D-6."""
    step = change(Period.LAST7, D, D + timedelta(days=1), D + timedelta(days=1), RET)
    assert step.keep_old and step.entering == _days(1) and step.leaving == _days(-6)


def test_several_days_skipped_move_every_day_in_and_out() -> None:
    """A projector down for three midnights moves the window by three days at once."""
    new = D + timedelta(days=3)
    step = change(Period.LAST7, D, new, new, RET)
    assert step.keep_old
    assert step.entering == _days(1, 2, 3) and step.leaving == _days(-6, -5, -4)


def test_a_window_older_than_its_length_is_built_from_its_days_alone() -> None:
    """Without overlap (down longer than the window) the old window is not used."""
    new = D + timedelta(days=7)
    step = change(Period.LAST7, D, new, new, RET)
    assert not step.keep_old and step.entering == tuple(days_of(Period.LAST7, new))
    assert step.leaving == ()


def test_a_leaving_day_that_expired_makes_the_window_built_whole() -> None:
    """When a leaving day bucket has expired from Redis, subtracting it would be wrong."""
    new = D + timedelta(days=20)
    step = change(Period.LAST30, D, new, new, Retention(day_days=29))
    assert not step.keep_old and step.entering == tuple(days_of(Period.LAST30, new))
    kept = change(Period.LAST30, D, new, new, Retention(day_days=60))
    assert kept.keep_old and len(kept.leaving) == 20


def test_no_window_yet_is_built_from_its_days() -> None:
    """None (Redis holds no windows) builds the window from its day buckets."""
    step = change(Period.LAST7, None, D, D, RET)
    assert not step.keep_old and step.entering == tuple(days_of(Period.LAST7, D))


def test_the_plan_names_keys_and_weights() -> None:
    """Old window +1, entering days +1, leaving days -1; the old key goes."""
    keys = Keys("p:")
    (last7, last30) = plan([BOARD], keys, D, D + timedelta(days=1), D, RET, 99)
    assert last7.key == "p:lb:b:last7:2026-12-09" and last7.old == "p:lb:b:last7:2026-12-08"
    assert last7.sources == (
        "p:lb:b:last7:2026-12-08",
        "p:lb:b:day:2026-12-09",
        "p:lb:b:day:2026-12-02",
    )
    assert last7.weights == (1, 1, -1) and last7.expires == 99
    assert last30.sources[-1] == "p:lb:b:day:2026-11-09"
    assert plan([BOARD], keys, D, D, D, RET, 99) == ()
    whole = plan([BOARD], keys, D, D, D, RET, 99, whole=True)
    assert [len(s.sources) for s in whole] == [7, 30] and set(whole[0].weights) == {1}


@pytest.mark.parametrize(
    ("zone", "end", "start", "stop", "hours"),
    [
        # Europe/Berlin springs forward on 2026-03-29 (a 23-hour day), falls back 2026-10-25.
        ("Europe/Berlin", "2026-03-29", "2026-03-23T00:00+01:00", "2026-03-30T00:00+02:00", 167),
        ("Europe/Berlin", "2026-10-31", "2026-10-25T00:00+02:00", "2026-11-01T00:00+01:00", 169),
        # America/New_York falls back on 2026-11-01 (a 25-hour day).
        ("America/New_York", "2026-11-01", "2026-10-26T00:00-04:00", "2026-11-02T00:00-05:00", 169),
    ],
)
def test_window_bounds_are_local_midnights_across_clock_changes(
    zone: str, end: str, start: str, stop: str, hours: int
) -> None:
    """A window runs from local midnight of its first day to local midnight after its last,
    so a window holding a clock change lasts 7 days plus or minus an hour."""
    low, high = bucket_bounds(Period.LAST7, end, ZoneInfo(zone))
    assert low == datetime.fromisoformat(start) and high == datetime.fromisoformat(stop)
    assert high is not None and low is not None
    # (aware datetimes of one zone subtract as wall times: compare instants)
    assert high.timestamp() - low.timestamp() == hours * 3600
    low30, high30 = bucket_bounds(Period.LAST30, end, ZoneInfo(zone))
    assert high30 == high and low30 is not None
    assert low30.date() == date.fromisoformat(end) - timedelta(days=29)


def test_window_buckets_are_days_and_expire_when_their_day_ends() -> None:
    """A window's bucket is its last day; the API treats it as gone once that day ends."""
    tz = ZoneInfo("America/New_York")
    assert parse_bucket(Period.LAST7, "2026-11-01") == "2026-11-01"
    with pytest.raises(ValueError, match="2026-02-30"):
        parse_bucket(Period.LAST30, "2026-02-30")
    now = datetime(2026, 11, 2, 4, 59, tzinfo=UTC)  # 23:59 local on 2026-11-01
    assert current_bucket(Period.LAST7, tz, now) == "2026-11-01"
    end = expires_at(Period.LAST7, "2026-11-01", tz, RET)
    assert end == int(datetime(2026, 11, 2, 5, tzinfo=UTC).timestamp())


def test_a_window_needs_the_day_period_and_enough_day_retention() -> None:
    """Windows are kept from day buckets: a board without "day", or a day retention shorter
    than the window, is a clear configuration error."""
    entry = {"name": "w", "table": "t", "member": "m", "time": "at", "periods": ["last7", "all"]}
    with pytest.raises(ConfigError, match='add "day"'):
        parse_boards({"boards": [entry]})
    check_retention([BOARD], Retention(day_days=29))
    with pytest.raises(ConfigError, match=r"PROJECTOR_RETENTION_DAY_DAYS=28 .* 29 or more"):
        check_retention([BOARD], Retention(day_days=28))


# -- the projection under a driven clock -----------------------------------------------------

_REL = Relation(
    xid=None,
    relation_id=1,
    namespace="public",
    name="pomodoros",
    replica_identity="f",
    columns=(
        Column(flags=1, name="user_id", type_oid=25, type_modifier=-1),
        Column(flags=1, name="completed_at", type_oid=1184, type_modifier=-1),
    ),
)


def _insert(user: str, when: str) -> Insert:
    return Insert(xid=None, relation_id=1, new=(user.encode(), when.encode()))


def test_rows_count_in_the_windows_holding_their_day_and_midnight_moves_them() -> None:
    """Rows of days inside a window change its key in the same batch; a future day's row
    does not; once the clock passes midnight the next batch moves every window."""
    now = [datetime(2026, 12, 8, 23, 59, tzinfo=UTC).timestamp()]
    projection = Projection([BOARD], Keys("p:"), ZoneInfo("UTC"), RET, lambda: now[0])
    projection.resume_windows(D)
    projection.on_relation(_REL)
    for user, when in [
        ("a", "2026-12-02 00:00:00+00"),  # first day of last7
        ("b", "2026-12-01 23:59:59+00"),  # one day before: last30 only
        ("c", "2026-12-09 00:00:01+00"),  # tomorrow: no window yet
        ("d", "2026-11-09 12:00:00+00"),  # first day of last30
        ("e", "2026-11-08 12:00:00+00"),  # outside both
    ]:
        projection.on_insert(_insert(user, when))
    batch = projection.take_batch()
    assert batch.deltas["p:lb:b:last7:2026-12-08"] == {"a": 1}
    assert batch.deltas["p:lb:b:last30:2026-12-08"] == {"a": 1, "b": 1, "d": 1}
    assert batch.windows == () and batch.window_day is None
    assert not projection.window_due()

    now[0] += 120  # 00:01 on 2026-12-09
    projection.on_insert(_insert("f", "2026-12-09 00:00:30+00"))
    batch = projection.take_batch()
    # Rows of the batch count for the windows Redis holds; the move comes after them.
    assert "p:lb:b:last7:2026-12-09" not in batch.deltas
    assert batch.window_day == "2026-12-09"
    assert [s.key for s in batch.windows] == ["p:lb:b:last7:2026-12-09", "p:lb:b:last30:2026-12-09"]
    projection.on_insert(_insert("g", "2026-12-09 00:00:40+00"))
    assert projection.take_batch().deltas["p:lb:b:last7:2026-12-09"] == {"g": 1}

    now[0] += 86_400 * 3
    assert projection.window_due()
    moved = projection.take_batch()
    assert moved.window_day == "2026-12-12" and moved.windows[0].weights == (1, 1, 1, 1, -1, -1, -1)
