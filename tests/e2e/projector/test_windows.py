"""Rolling windows against real servers, the projector's clock driven by the test: last7 and
last30 equal a recomputation in SQL (local dates in America/New_York, around the 2027 clock
change) after rows on the windows' edge days, midnights passing (one, several, more than a
window), kill -9 across a midnight, moves, deletes and TRUNCATE; `projector verify` agrees.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import redis

from harness.projector_process import ProjectorProcess

from .conftest import Projected
from .support import assert_same, projector_executable, read_redis, settings_env, watermark

ZONE = "America/New_York"
BOARDS = """
[[boards]]
name = "recent"
table = "public.pomodoros"
member = "user_id"
time = "completed_at"
periods = ["day", "week", "all", "last7", "last30"]
"""
USERS = [f"u{i}" for i in range(10)]
ROOT = Path(__file__).resolve().parents[3]

# An oracle of its own: local dates by AT TIME ZONE, nothing from the projector.
_WINDOW_SQL = """
SELECT user_id, count(*) FROM pomodoros
 WHERE user_id IS NOT NULL AND isfinite(completed_at)
   AND (completed_at AT TIME ZONE %(tz)s)::date BETWEEN %(first)s AND %(last)s
 GROUP BY 1
"""


class Clock:
    """The projector's wall clock: the real one plus an offset the test writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set("2027-11-06 23:59:30")

    def set(self, local: str) -> None:
        """Make the projector's clock read ``local`` (in the zone) now."""
        when = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(ZONE))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(when.timestamp() - time.time()))
        tmp.replace(self.path)


@pytest.fixture
def windowed(config: dict[str, Any], tmp_path: Path) -> Iterator[tuple[Clock, dict[str, str]]]:
    """A boards file with windows, the zone, and the driven clock's file."""
    boards = tmp_path / "boards.toml"
    boards.write_text(BOARDS)
    config.update(boards_file=str(boards), timezone=ZONE)
    clock = Clock(tmp_path / "clock")
    env = settings_env(config)
    env["PROJECTOR_TEST_CLOCK_FILE"] = str(clock.path)
    yield clock, env


def _process(env: dict[str, str], log: Path) -> ProjectorProcess:
    command = [sys.executable, "-m", "tests.e2e.projector.clocked"]
    return ProjectorProcess(env, log, command=command, cwd=ROOT).start()


def _window(conn: psycopg.Connection[Any], days: int, last: date) -> dict[str, int]:
    first = last - timedelta(days=days - 1)
    rows = conn.execute(_WINDOW_SQL, {"tz": ZONE, "first": first, "last": last})
    return {str(user): int(count) for user, count in rows}


def _exact(projected: Projected, client: redis.Redis, day: str, proc: ProjectorProcess) -> None:
    """Once Redis holds the windows ending on ``day``, every board and both windows equal
    the recomputation, and no window of another day is left."""
    deadline = time.monotonic() + 30
    while watermark(client).get("window_day") != day:
        proc.check()
        assert time.monotonic() < deadline, f"windows never moved to {day}: {watermark(client)}"
        time.sleep(0.02)
    projected.caught_up()
    (board,) = projected.boards
    got = read_redis(client, board=board)
    calendar = {k: v for k, v in got.boards.items() if not k[0].startswith("last")}
    assert_same(type(got)(calendar, got.names), projected.expected(board))
    with psycopg.connect(projected.config["pg_dsn"]) as conn:
        for period, days in (("last7", 7), ("last30", 30)):
            want = _window(conn, days, date.fromisoformat(day))
            have = got.boards.get((period, day), {})
            assert have == want, f"{period} ending {day}: redis {have}, postgres {want}"
            others = [k for k in got.boards if k[0] == period and k[1] != day]
            assert not others, f"windows of other days left in Redis: {others}"


def _insert(conn: psycopg.Connection[Any], rows: list[tuple[str, str]]) -> None:
    conn.cursor().executemany(
        "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s::timestamp AT TIME ZONE %s)",
        [(user, local, ZONE) for user, local in rows],
    )


def _random_rows(rng: random.Random, n: int, first: date, days: int) -> list[tuple[str, str]]:
    return [
        (
            rng.choice(USERS),
            f"{first + timedelta(days=rng.randrange(days))} "
            f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        )
        for _ in range(n)
    ]


def test_windows_are_exact_across_midnights_kills_deletes_and_truncate(
    windowed: tuple[Clock, dict[str, str]],
    config: dict[str, Any],
    rds: redis.Redis,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """Both windows equal their recomputation after each midnight and each fault."""
    clock, env = windowed
    rng = random.Random(11)
    log = tmp_path / "projector.log"
    # Edge days of the windows ending 2027-11-06: last7 is 10-31..11-06, last30 10-08..11-06.
    _insert(
        db,
        [
            ("edge7", "2027-10-31 00:00:00"),
            ("before7", "2027-10-30 23:59:59.999"),
            ("last", "2027-11-06 23:59:59"),
            ("tomorrow", "2027-11-07 00:00:00"),
            ("edge30", "2027-10-08 00:00:00"),
            ("before30", "2027-10-07 23:59:59"),
            *_random_rows(rng, 150, date(2027, 10, 1), 45),
        ],
    )
    proc = _process(env, log)
    projected = Projected(config, rds, proc.check)
    try:
        _exact(projected, rds, "2027-11-06", proc)
        assert rds.zscore("pomo:lb:recent:last30:2027-11-06", "edge30") == 1

        # Midnight into 2027-11-07 (25 hours long: clocks fall back): an idle projector moves
        # the windows; edge7 leaves last7, tomorrow's row enters.
        clock.set("2027-11-07 00:00:02")
        _exact(projected, rds, "2027-11-07", proc)

        # Moves onto the windows' edge days, deletes on them, rows of later days.
        db.execute(
            "UPDATE pomodoros SET completed_at = %s::timestamp AT TIME ZONE %s WHERE id IN"
            " (SELECT id FROM pomodoros ORDER BY id LIMIT 8)",
            ("2027-11-01 00:00:00", ZONE),
        )
        db.execute(
            "DELETE FROM pomodoros WHERE (completed_at AT TIME ZONE %s)::date = '2027-10-09'",
            (ZONE,),
        )
        _insert(db, _random_rows(rng, 60, date(2027, 11, 1), 12))
        _exact(projected, rds, "2027-11-07", proc)

        # kill -9, writes while it is down, three midnights pass: one move of three days.
        proc.kill9()
        _insert(db, _random_rows(rng, 40, date(2027, 11, 2), 10))
        db.execute("DELETE FROM pomodoros WHERE id IN (SELECT id FROM pomodoros LIMIT 10)")
        clock.set("2027-11-10 00:00:01")
        proc.start()
        _exact(projected, rds, "2027-11-10", proc)

        # kill -9 across a midnight, with writes in flight: whatever it had applied, the
        # next start is exact.
        for day in ("2027-11-11", "2027-11-12"):
            _insert(db, _random_rows(rng, 30, date(2027, 11, 5), 9))
            clock.set(f"{day} 00:00:00.2")
            time.sleep(rng.uniform(0.0, 0.4))
            proc.kill9()
            proc.start()
            _exact(projected, rds, day, proc)

        # TRUNCATE empties every window; later rows count again.
        db.execute("TRUNCATE pomodoros")
        _insert(db, [("after", "2027-11-12 08:00:00"), ("after", "2027-10-20 08:00:00")])
        _exact(projected, rds, "2027-11-12", proc)

        # More than a window's length later: built from the day buckets alone.
        _insert(db, _random_rows(rng, 40, date(2027, 11, 20), 30))
        clock.set("2027-12-20 00:00:01")
        _exact(projected, rds, "2027-12-20", proc)

        # verify recomputes the windows Redis holds at the same position: in sync, and a
        # window changed behind the projector's back is drift.
        def verify() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [projector_executable(), "verify", "--json"],
                env=settings_env(config),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        done = verify()
        assert done.returncode == 0, done.stdout + done.stderr
        rds.zincrby("pomo:lb:recent:last30:2027-12-20", 1, "intruder")
        done = verify()
        assert done.returncode == 1, done.stdout + done.stderr
        assert "pomo:lb:recent:last30:2027-12-20" in done.stdout and "intruder" in done.stdout
    finally:
        proc.close()


def test_adding_windows_to_a_board_builds_them_beside_the_others(
    windowed: tuple[Clock, dict[str, str]],
    config: dict[str, Any],
    rds: redis.Redis,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """A definition change that adds last7 and last30 builds that board again while the
    stream goes on; its windows are then exact, the old definition's keys gone."""
    _clock, env = windowed
    boards = Path(config["boards_file"])
    boards.write_text(BOARDS.replace(', "last7", "last30"', ""))
    rng = random.Random(12)
    _insert(db, _random_rows(rng, 80, date(2027, 10, 1), 40))
    proc = _process(env, tmp_path / "projector.log")
    projected = Projected(config, rds, proc.check)
    try:
        projected.caught_up()
        assert watermark(rds).get("window_day", "") == ""
        assert not list(rds.scan_iter(match="pomo:lb:recent:last*"))
        proc.stop()
        boards.write_text(BOARDS)
        proc.start()
        _insert(db, _random_rows(rng, 30, date(2027, 10, 25), 14))
        _exact(projected, rds, "2027-11-06", proc)
        assert "building boards beside the live ones" in proc.log_text()
    finally:
        proc.close()
