"""Declared boards against real servers: the example configuration (pomodoros per user, focus
minutes per team-week and per user-month) projects exactly through kill -9, rewinds, moves,
deletes, TRUNCATE and chunked transactions; the live schema is checked at start; a changed
definition rebuilds.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from projector.commands.migrate import migrate
from projector.core.boards import load_boards

from .conftest import Projected
from .support import ProjectorProcess, projector_executable, settings_env, watermark

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
FOCUS = str(EXAMPLES / "focus_minutes.toml")
USERS = [f"u{i}" for i in range(12)]
TEAMS = ["red", "blue", "green", None]


@pytest.fixture
def focus_dsn(migrated_dsn: str) -> str:
    """The test's database with the example's schema (minutes, team_id, teams) migrated."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute((EXAMPLES / "focus_minutes.sql").read_text())  # type: ignore[arg-type]
    migrate(migrated_dsn, "projector", load_boards(FOCUS))
    return migrated_dsn


def _when(rng: random.Random) -> str:
    return f"2026-{rng.randint(9, 11):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:30+00"


def _some_rows(rng: random.Random, n: int) -> list[tuple[str, str, int, str | None]]:
    return [
        (rng.choice(USERS), _when(rng), rng.choice([0, 5, 25, 25, 50]), rng.choice(TEAMS))
        for _ in range(n)
    ]


def _insert(conn: psycopg.Connection[Any], rows: list[tuple[str, str, int, str | None]]) -> None:
    conn.cursor().executemany(
        "INSERT INTO pomodoros (user_id, completed_at, minutes, team_id) VALUES (%s, %s, %s, %s)",
        rows,
    )


def _mutate(conn: psycopg.Connection[Any], rng: random.Random) -> None:
    """Moves between users, teams and days, changed minutes, deletes, renames."""
    conn.execute(
        "UPDATE pomodoros SET user_id = %s WHERE id IN"
        " (SELECT id FROM pomodoros ORDER BY random() LIMIT 5)",
        (rng.choice(USERS),),
    )
    conn.execute(
        "UPDATE pomodoros SET team_id = %s, minutes = minutes + 5 WHERE id IN"
        " (SELECT id FROM pomodoros ORDER BY random() LIMIT 5)",
        (rng.choice(TEAMS),),
    )
    conn.execute(
        "UPDATE pomodoros SET completed_at = completed_at + interval '6 days' WHERE id IN"
        " (SELECT id FROM pomodoros ORDER BY random() LIMIT 5)"
    )
    conn.execute("UPDATE pomodoros SET minutes = 0 WHERE id IN (SELECT min(id) FROM pomodoros)")
    conn.execute(
        "DELETE FROM pomodoros WHERE id IN (SELECT id FROM pomodoros ORDER BY random() LIMIT 4)"
    )
    conn.execute(
        "INSERT INTO teams (id, name) VALUES (%s, %s)"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        (rng.choice(TEAMS[:3]), f"Team {rng.randint(1, 99)}"),
    )
    conn.execute(
        "INSERT INTO users (id, display_name) VALUES (%s, %s)"
        " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
        (rng.choice(USERS), f"User {rng.randint(1, 99)}"),
    )


def _wait_chunk_then_kill(proc: ProjectorProcess, client: redis.Redis) -> None:
    deadline = time.monotonic() + 30
    while int(watermark(client).get("tx_rows", "0") or 0) == 0:
        proc.check()
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    proc.kill9()


def test_example_boards_are_exact_through_crashes_rewinds_moves_and_truncate(
    focus_dsn: str, start_process: StartProcess
) -> None:
    """Every board of the example equals its recomputation after each fault."""
    rng = random.Random(8)
    proc, projected = start_process(boards_file=FOCUS, max_tx_changes=300)
    assert [b.name for b in projected.boards] == [
        "pomodoros",
        "team-focus",
        "focus-minutes",
        "team-long",
    ]
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        _insert(conn, _some_rows(rng, 200))
        _mutate(conn, rng)
        got = projected.assert_exact()
        assert got.boards  # the default board is not empty
        team = projected.redis(projected.boards[1])
        assert team.boards and all(p == "week" for p, _ in team.boards)
        assert team.names  # team names are labels

        # kill -9 between the chunks of a transaction over the atomic limit
        with conn.transaction():
            _insert(conn, _some_rows(rng, 2_000))
            _mutate(conn, rng)
        _wait_chunk_then_kill(proc, projected.client)
        proc.start()
        projected.assert_exact()

        # a rewind: Redis loses everything, the projector rebuilds all four boards
        projected.client.flushall()
        _insert(conn, _some_rows(rng, 20))
        projected.assert_exact()

        # TRUNCATE empties every board of the table, then new rows count again
        conn.execute("TRUNCATE pomodoros")
        _insert(conn, _some_rows(rng, 30))
        _mutate(conn, rng)
        projected.assert_exact()
        proc.kill9()
        _insert(conn, _some_rows(rng, 30))
        proc.start()
        projected.assert_exact()
    proc.check()


def test_a_sum_board_drops_members_whose_rows_are_gone_or_sum_to_zero(
    focus_dsn: str, start_process: StartProcess
) -> None:
    """A member with all rows deleted leaves the board; one whose minutes sum to 0 is not
    listed either (0 ranks like no rows)."""
    proc, projected = start_process(boards_file=FOCUS)
    month = projected.boards[2]
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        _insert(
            conn,
            [
                ("ann", "2026-11-10 10:00+00", 25, "red"),
                ("ann", "2026-11-11 10:00+00", 30, "red"),
                ("bob", "2026-11-12 10:00+00", 0, "red"),
                ("cy", "2026-11-12 10:00+00", 10, None),
            ],
        )
        projected.assert_exact()
        assert projected.redis(month).boards[("month", "2026-11")] == {"ann": 55, "cy": 10}
        conn.execute("DELETE FROM pomodoros WHERE user_id = 'cy'")
        conn.execute("UPDATE pomodoros SET minutes = 0 WHERE user_id = 'ann'")
        projected.assert_exact()
        assert ("month", "2026-11") not in projected.redis(month).boards
        conn.execute("UPDATE pomodoros SET minutes = 15 WHERE user_id = 'bob'")
        projected.assert_exact()
        assert projected.redis(month).boards[("month", "2026-11")] == {"bob": 15}
    proc.check()


def _run_refused(config: dict[str, Any], **overrides: Any) -> str:
    run = subprocess.run(
        [projector_executable(), "run"],
        env=settings_env({**config, **overrides}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    return lines[-1]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "ALTER TABLE pomodoros DROP CONSTRAINT pomodoros_minutes_not_negative",
            "board 'team-focus': field 'score.sum': public.pomodoros.minutes may be negative, "
            'which would mis-rank members; add the constraint: ALTER TABLE "public"."pomodoros" '
            'ADD CHECK ("minutes" >= 0)',
        ),
        (
            "ALTER TABLE pomodoros REPLICA IDENTITY USING INDEX pomodoros_user_time_id",
            "board 'team-focus': table public.pomodoros has REPLICA IDENTITY USING INDEX, which "
            "does not log the old team_id, minutes of deleted or changed rows; fix it with: "
            'ALTER TABLE "public"."pomodoros" REPLICA IDENTITY FULL',
        ),
        (
            "ALTER TABLE pomodoros ALTER COLUMN minutes TYPE numeric",
            "board 'team-focus': field 'score.sum': column public.pomodoros.minutes is numeric, "
            "it must be an integer; restore it, or change the board's definition",
        ),
        (
            "ALTER TABLE pomodoros RENAME COLUMN team_id TO squad",
            "board 'team-focus': field 'member': public.pomodoros has no column 'team_id'; "
            "restore it, or change the board's definition",
        ),
        (
            "ALTER PUBLICATION projector DROP TABLE teams",
            "board 'team-focus': publication 'projector' does not publish public.teams, which "
            "the board reads; run `projector migrate` (or ALTER PUBLICATION projector ADD TABLE "
            "public.teams)",
        ),
    ],
)
def test_the_live_schema_is_checked_at_start(
    focus_dsn: str, config: dict[str, Any], tmp_path: Path, sql: str, expected: str
) -> None:
    """A schema that fits no declared board stops start-up with one line and the fix."""
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]
    only = _partial_boards(tmp_path, "team-focus")
    assert _run_refused(config, boards_file=only) == f"projector: {expected}"


def test_a_time_column_that_is_not_timestamptz_is_refused(
    config: dict[str, Any], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """The time column must be timestamptz: a timestamp without zone is ambiguous."""
    db.execute("ALTER TABLE pomodoros ADD COLUMN done_at timestamp")
    boards = tmp_path / "boards.toml"
    boards.write_text(
        '[[boards]]\nname = "x"\ntable = "pomodoros"\nmember = "user_id"\ntime = "done_at"\n'
    )
    assert _run_refused(config, boards_file=str(boards)) == (
        "projector: board 'x': field 'time': column public.pomodoros.done_at is timestamp "
        "without time zone, it must be timestamptz; restore it, or change the board's definition"
    )


def test_a_bad_boards_file_stops_start_up_with_one_line(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """A definition mistake is one line naming the variable, the board and the field."""
    boards = tmp_path / "boards.toml"
    boards.write_text('[[boards]]\nname = "x"\ntable = "pomodoros"\nmember = "user_id"\n')
    assert _run_refused(config, boards_file=str(boards)) == (
        "projector: configuration error: PROJECTOR_BOARDS_FILE: board 'x': field 'time' is "
        "missing (got '" + str(boards) + "')"
    )


def test_adding_a_board_rebuilds_naming_it(
    focus_dsn: str, start_process: StartProcess, tmp_path: Path
) -> None:
    """A restart with a board added rebuilds (naming the change) and the new board is exact."""
    proc, projected = start_process()
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        _insert(conn, _some_rows(random.Random(3), 50))
    projected.assert_exact()
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    proc, projected = start_process(boards_file=FOCUS)
    deadline = time.monotonic() + 30
    while "rebuild finished" not in proc.log_text():
        proc.check()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "board 'focus-minutes' added; board 'team-focus' added" in proc.log_text()
    projected.assert_exact()


def _partial_boards(tmp_path: Path, *names: str) -> str:
    """A boards file with the example's boards of these names (labels from users only)."""
    text = Path(FOCUS).read_text()
    blocks = ["[[boards]]" + b for b in text.split("[[boards]]")[1:]]
    chosen = [b for b in blocks if any(f'name = "{n}"' in b for n in names)]
    path = tmp_path / f"boards-{'-'.join(names)}.toml"
    path.write_text("\n".join(chosen))
    return str(path)


def _wait_log(proc: ProjectorProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        proc.check()
        assert time.monotonic() < deadline, f"no {text!r}:\n{proc.log_tail()}"
        time.sleep(0.02)


def test_an_added_board_is_built_beside_the_others_while_they_stream(
    focus_dsn: str, start_process: StartProcess, tmp_path: Path
) -> None:
    """Adding a board builds only it, from a snapshot, while the live board keeps streaming
    and writes go on; then a removed board's keys go at once, without any full rebuild."""
    rng = random.Random(5)
    proc, projected = start_process(boards_file=_partial_boards(tmp_path, "pomodoros"))
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        _insert(conn, _some_rows(rng, 3_000))
        projected.assert_exact()
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        # A backlog the stream must work through before it reaches the build's snapshot:
        # the build may only go live once the stream is past it.
        for _ in range(10):
            conn.execute(
                "INSERT INTO pomodoros (user_id, completed_at, minutes)"
                " SELECT 'u' || (g % 12), timestamptz '2026-10-01 00:00+00'"
                "   + (g % 60) * interval '1 day', g % 50 FROM generate_series(1, 10000) AS g"
            )
        both = _partial_boards(tmp_path, "pomodoros", "focus-minutes")
        proc, projected = start_process(boards_file=both)
        for _ in range(30):  # writes while the new board is built
            _insert(conn, _some_rows(rng, 5))
            _mutate(conn, rng)
        _wait_log(proc, "boards built and live")
        projected.assert_exact()
        log = proc.log_text()
        assert "board 'focus-minutes' added" in log
        assert "rebuilding Redis" not in log

        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc, projected = start_process(boards_file=_partial_boards(tmp_path, "pomodoros"))
        _insert(conn, _some_rows(rng, 5))
        _wait_log(proc, "boards dropped from Redis")
        projected.assert_exact()
        assert not list(projected.client.scan_iter(match="pomo:lb:focus-minutes:*"))
        assert not list(projected.client.scan_iter(match="pomo:rebuild:*"))
        assert "rebuilding Redis" not in proc.log_text()
    proc.check()


def test_a_truncate_while_a_board_is_built_builds_it_again(
    focus_dsn: str, start_process: StartProcess, tmp_path: Path
) -> None:
    """A TRUNCATE of the table of a board being built makes the build start over; exact.

    The TRUNCATE waits for the build's read to end, so whether it reaches the stream before
    the loaded board goes live is a race. Both orders must be exact; the test tries again
    until it has seen the build start over."""
    rng = random.Random(6)
    only = _partial_boards(tmp_path, "pomodoros")
    both = _partial_boards(tmp_path, "pomodoros", "focus-minutes")
    proc, projected = start_process(boards_file=only)
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        for _attempt in range(5):
            # Enough rows that loading the new board takes a while.
            conn.execute(
                "INSERT INTO pomodoros (user_id, completed_at, minutes)"
                " SELECT 'u' || (g % 5000), timestamptz '2026-01-01 00:00+00'"
                "   + (g % 330) * interval '1 day', g % 60 FROM generate_series(1, 400000) AS g"
            )
            projected.assert_exact()
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            proc, projected = start_process(boards_file=both)
            _wait_log(proc, "building boards beside the live ones")
            conn.execute("TRUNCATE pomodoros")
            _insert(conn, _some_rows(rng, 10))
            _wait_log(proc, "boards built and live")
            projected.assert_exact()
            if "building boards again" in proc.log_text():
                break
            # The board went live first (then the TRUNCATE emptied it): drop it, try again.
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            proc, projected = start_process(boards_file=only)
            _wait_log(proc, "boards built and live")
        else:
            pytest.fail("the TRUNCATE never reached the stream while the board was built")
    proc.check()


def test_an_upgrade_from_the_layout_without_board_names_rebuilds_and_swaps_atomically(
    migrated_dsn: str, start_process: StartProcess, rds: redis.Redis
) -> None:
    """Redis as the previous version left it (keys pomo:lb:{period}:{bucket}, a watermark
    without fingerprint): the first start rebuilds once; old keys are gone, new ones exact."""
    proc, projected = start_process()
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES"
            " ('ada', '2026-11-26 10:00+00'), ('bob', '2026-11-27 10:00+00')"
        )
    projected.assert_exact()
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # Rewrite Redis into the previous version's shape.
    for key in list(rds.scan_iter(match="pomo:lb:pomodoros:*")):
        old = key.decode().replace("lb:pomodoros:", "lb:", 1)
        rds.rename(key, old)
        rds.zadd("pomo:boards", {old: "inf"})
        rds.zrem("pomo:boards", key)
    for field in ("fingerprint", "config", "timeline"):
        rds.hdel("pomo:watermark", field)
    wm = watermark(rds)
    rds.hset("pomo:watermark", "position", wm["position"].rsplit(":", 1)[0])
    assert rds.exists("pomo:lb:day:2026-11-26")

    proc, projected = start_process()
    _wait_log(proc, "rebuild finished")
    assert "did not record its configuration" in proc.log_text()
    projected.assert_exact()
    assert not [
        k for k in rds.scan_iter(match="pomo:lb:*") if not k.startswith(b"pomo:lb:pomodoros:")
    ]
