"""The rebuild's single scan per board (``queries.member_days`` rolled up by ``core.rollup``)
loads exactly what one query per period computes, on awkward data: a zone with daylight
saving, ISO weeks across a year boundary, infinite and out-of-calendar instants, NULL and
over-long members, sums of zero, and rows on both sides of every retention edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from projector.commands.migrate import migrate
from projector.core import queries
from projector.core.boards import Board, load_boards
from projector.core.buckets import (
    TIMED_PERIODS,
    Period,
    bucket_ids_for_date,
    expires_at,
    oldest_retained_bucket_start,
)
from projector.rebuild import advisory_lock, rebuild
from projector.settings import Settings, load_settings
from projector.sink import RedisSink
from projector.stream import connect

from .support import Expected, assert_same, read_redis, recompute

BOARDS = """
[[boards]]
name = "sessions"
table = "public.sessions"
member = "who"
time = "at"

[[boards]]
name = "minutes"
table = "public.sessions"
member = "who"
time = "at"
periods = ["day", "week", "year", "all"]
score = { sum = "minutes" }
"""
ZONE = "America/New_York"
RETENTION = {
    "retention_day_days": 2,
    "retention_week_weeks": 1,
    "retention_month_months": 1,
    "retention_year_years": 0,
}
FIXED = [
    # Clocks go back on 2031-11-02 in New York: 01:30 happens twice, 23:30 EST is still the 2nd.
    ("ada", "2031-11-02 04:30+00", 5),
    ("ada", "2031-11-02 05:30+00", 0),
    ("ada", "2031-11-02 06:30+00", None),
    ("bob", "2031-11-03 04:30+00", 7),
    # 2031-12-29 (a Monday) to 2032-01-04 are ISO week 2032-W01.
    ("bob", "2031-12-31 12:00+00", 1),
    ("bob", "2032-01-01 12:00+00", 2),
    ("cy", "2031-12-29 12:00+00", 3),
    # Infinite and out-of-calendar instants count in the all-time board only.
    ("ada", "infinity", 4),
    ("cy", "-infinity", 4),
    ("cy", "10000-01-01 06:00+00", 4),  # local 10000-01-01 01:00: no timed bucket
    ("dee", "10000-01-01 03:00+00", 2),  # local 9999-12-31 22:00: the calendar's last day
    # Not ranked: a NULL member, an over-long member; only zeros and NULLs sum to nothing.
    (None, "2031-11-02 04:30+00", 9),
    ("x" * 201, "2031-11-02 04:30+00", 9),
    ("zed", "2031-11-02 04:30+00", 0),
    ("zed", "2031-11-02 05:30+00", None),
]


@pytest.fixture
def sessions_config(config: dict[str, Any], migrated_dsn: str, tmp_path: Path) -> dict[str, Any]:
    """Two boards (a count and a sum) over one table of awkward rows, in New York time."""
    path = tmp_path / "boards.toml"
    path.write_text(BOARDS)
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE sessions (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " who text, at timestamptz NOT NULL, minutes integer CHECK (minutes >= 0));"
            " ALTER TABLE sessions REPLICA IDENTITY FULL"
        )
    config.update(RETENTION, timezone=ZONE, boards_file=str(path))
    settings = load_settings(**config)
    migrate(migrated_dsn, "projector", load_boards(str(path)))
    rows: list[tuple[str | None, str | datetime, int | None]] = list(FIXED)
    now = datetime.now(UTC)
    for period in TIMED_PERIODS:
        since = oldest_retained_bucket_start(period, settings.zone, settings.retention, now)
        assert since is not None
        # Each retention edge: the last instant before it, and the edge itself.
        rows += [("eve", since - timedelta(microseconds=1), 1), ("eve", since, 2)]
        rows += [("fay", since + timedelta(hours=3), 1), ("fay", since - timedelta(hours=3), 1)]
    with psycopg.connect(migrated_dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO sessions (who, at, minutes) VALUES (%s, %s, %s)", rows)
    return config


def _per_period(settings: Settings, board: Board) -> Expected:
    """Every retained bucket of ``board`` by one query per period (as before the single
    scan; ``verify`` still asks these)."""
    boards: dict[tuple[str, str], dict[str, int]] = {}
    now = datetime.now(UTC)
    with psycopg.connect(settings.pg_dsn) as conn:
        for period in board.periods:
            if period is Period.ALL:
                rows = conn.execute(queries.all_time_scores(board)).fetchall()
                if rows:
                    boards[("all", "all")] = {str(m): int(s) for m, s in rows}  # type: ignore[call-overload]
                continue
            since = oldest_retained_bucket_start(period, settings.zone, settings.retention, now)
            params = {"tz": settings.timezone, "since": since}
            index = TIMED_PERIODS.index(period)
            for start, member, score in conn.execute(queries.period_scores(board, period), params):
                bucket = bucket_ids_for_date(start)[index]  # type: ignore[arg-type]
                expires = expires_at(period, bucket, settings.zone, settings.retention)
                if expires is None or expires > now.timestamp():
                    boards.setdefault((period.value, bucket), {})[str(member)] = int(score)  # type: ignore[call-overload]
    return Expected(boards, {})


@pytest.mark.parametrize("parallelism", [1, 3])
def test_the_single_scan_loads_what_one_query_per_period_computes(
    sessions_config: dict[str, Any], rds: redis.Redis, parallelism: int
) -> None:
    """Count and sum boards over one table, whole or in shares of members, equal the
    per-period queries and the independent recomputation, bucket by bucket."""
    settings = load_settings(**sessions_config, rebuild_parallelism=parallelism)
    pg = connect(settings.pg_dsn)
    try:
        with advisory_lock(pg, settings.slot, wait=True):
            rebuild(settings, RedisSink(rds, settings.keys), reason="test")
    finally:
        pg.close()
    retention = {k: v for k, v in sessions_config.items() if k.startswith("retention_")}
    for board in settings.boards:
        loaded = read_redis(rds, settings.keys.prefix, board)
        assert_same(loaded, _per_period(settings, board))
        assert_same(loaded, recompute(settings.pg_dsn, ZONE, retention, board))
    count, total = (read_redis(rds, settings.keys.prefix, b).boards for b in settings.boards)
    # The awkward rows landed where they should (and the data exercises what it claims).
    assert count[("day", "2031-11-02")] == {"ada": 3, "bob": 1, "zed": 2}
    assert total[("day", "2031-11-02")] == {"ada": 5, "bob": 7}
    assert count[("week", "2032-W01")] == {"bob": 2, "cy": 1}
    assert count[("day", "9999-12-31")] == {"dee": 1}
    assert count[("all", "all")]["cy"] == 3 and "zed" not in total[("all", "all")]
    zone = settings.zone
    for period in TIMED_PERIODS:
        since = oldest_retained_bucket_start(period, zone, settings.retention, datetime.now(UTC))
        assert since is not None
        index = TIMED_PERIODS.index(period)
        oldest = bucket_ids_for_date(since.date())[index]
        older = bucket_ids_for_date((since - timedelta(microseconds=1)).date())[index]
        assert "eve" in count[(period.value, oldest)], period
        assert (period.value, older) not in count, period  # expired: never loaded
