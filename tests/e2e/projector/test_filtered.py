"""A board with a condition (examples/focus_minutes.toml's ``team-long``: pomodoros of 25
minutes or more done in a team) against real servers: rows moved into and out of it by
updates, deletes, TRUNCATE and a kill -9 of the projector in between, a rebuild and
``projector verify`` all give the recomputation in SQL; conditions are checked against the
live schema at start."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from projector.commands.migrate import migrate
from projector.core.boards import load_boards

from .conftest import Projected
from .support import ProjectorProcess, projector_executable, settings_env

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
FOCUS = str(EXAMPLES / "focus_minutes.toml")
LONG = 3  # team-long, the example's board with a condition


@pytest.fixture
def focus_dsn(migrated_dsn: str) -> str:
    """The test's database with the example's schema (minutes, team_id, teams) migrated."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute((EXAMPLES / "focus_minutes.sql").read_text())  # type: ignore[arg-type]
    migrate(migrated_dsn, "projector", load_boards(FOCUS))
    return migrated_dsn


def _insert(conn: psycopg.Connection[Any], count: int, offset: int = 0) -> None:
    """``count`` rows over 6 users, 10 weeks, minutes 0/10/25/50 and teams red/blue/none:
    about a third of them qualify."""
    conn.execute(
        "INSERT INTO pomodoros (user_id, completed_at, minutes, team_id)"
        " SELECT 'u' || (i %% 6), timestamptz '2026-09-01 10:00+00' + (i %% 70) * interval '1 day',"
        " (ARRAY[0, 10, 25, 50])[1 + i %% 4], (ARRAY['red', 'blue', NULL])[1 + i %% 3]"
        " FROM generate_series(%s::int, %s::int) AS i",
        (offset, offset + count - 1),
    )


def test_rows_move_in_and_out_of_a_filtered_board_exactly_through_kill9_and_truncate(
    focus_dsn: str, start_process: StartProcess, config: dict[str, Any]
) -> None:
    """After each step (moves into, out of and within the condition, deletes of rows in and
    out of it, kill -9 with changes made while down, TRUNCATE, a rebuild) every board equals
    its recomputation, and the filtered board has changed: no step is vacuous."""
    proc, projected = start_process(boards_file=FOCUS, max_tx_changes=300)
    board = projected.boards[LONG]
    assert board.name == "team-long" and board.where is not None
    seen: list[dict[tuple[str, str], dict[str, int]]] = []

    def exact() -> None:
        projected.assert_exact()
        now = projected.redis(board).boards
        assert not seen or now != seen[-1], "the step did not change the filtered board"
        seen.append(now)

    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        _insert(conn, 600)
        exact()
        everything = projected.redis().boards[("all", "all")]
        assert sum(seen[-1][("all", "all")].values()) < sum(everything.values()) / 2
        # into the condition: short pomodoros lengthened, team-less ones given a team
        conn.execute("UPDATE pomodoros SET minutes = 30 WHERE minutes < 25 AND id % 5 = 0")
        conn.execute("UPDATE pomodoros SET team_id = 'green' WHERE team_id IS NULL AND id % 4 = 0")
        exact()
        # out of it: shortened, or out of the team (to NULL); and a move of both at once
        conn.execute("UPDATE pomodoros SET minutes = 5 WHERE minutes >= 25 AND id % 7 = 0")
        conn.execute("UPDATE pomodoros SET team_id = NULL WHERE id % 11 = 0")
        conn.execute(
            "UPDATE pomodoros SET minutes = 50 - minutes, team_id = NULLIF(team_id, 'red'),"
            " user_id = 'u9' WHERE id % 13 = 0"
        )
        exact()
        # within it: another user and week; deletes of rows in and out of it
        conn.execute(
            "UPDATE pomodoros SET user_id = 'u7', completed_at = completed_at + interval '9 days'"
            " WHERE minutes >= 25 AND team_id IS NOT NULL AND id % 3 = 0"
        )
        conn.execute("DELETE FROM pomodoros WHERE id % 17 IN (0, 1, 2)")
        exact()

        proc.kill9()
        with conn.transaction():  # one transaction over the atomic limit: applied in chunks
            _insert(conn, 400, offset=1000)
            conn.execute("UPDATE pomodoros SET minutes = minutes + 20 WHERE id % 2 = 0")
            conn.execute("DELETE FROM pomodoros WHERE minutes = 45 AND id % 3 = 0")
        proc.start()
        exact()

        conn.execute("TRUNCATE pomodoros")
        _insert(conn, 50, offset=5)
        conn.execute("UPDATE pomodoros SET team_id = 'red' WHERE team_id IS NULL")
        exact()

        projected.client.flushall()  # a rebuild reads the board through its condition
        conn.execute("UPDATE pomodoros SET minutes = 0 WHERE id % 2 = 0")
        exact()

    verify = subprocess.run(
        [projector_executable(), "verify"],
        env=settings_env({**config, "boards_file": FOCUS}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    proc.check()


def _wait_log(proc: ProjectorProcess, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        proc.check()
        assert time.monotonic() < deadline, f"no {text!r}:\n{proc.log_tail()}"
        time.sleep(0.02)


def test_changing_a_condition_builds_that_board_alone_while_the_others_stream(
    focus_dsn: str, start_process: StartProcess, tmp_path: Path
) -> None:
    """A restart with team-long's where changed builds team-long again from a snapshot (no
    full rebuild, the other boards stream on); its new rows are the new condition's."""
    proc, projected = start_process(boards_file=FOCUS)
    with psycopg.connect(focus_dsn, autocommit=True) as conn:
        _insert(conn, 300)
        projected.assert_exact()
        before = projected.redis(projected.boards[LONG]).boards
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        changed = tmp_path / "changed.toml"
        changed.write_text(
            Path(FOCUS)
            .read_text()
            .replace(
                'where = "minutes >= 25 and team_id is not null"',
                "where = \"minutes >= 50 or team_id in ('blue')\"",
            )
        )
        proc, projected = start_process(boards_file=str(changed))
        _insert(conn, 30, offset=300)  # written while the board is built
        _wait_log(proc, "boards built and live")
        projected.assert_exact()
        assert projected.redis(projected.boards[LONG]).boards != before
        log = proc.log_text()
        assert "board 'team-long' changed" in log
        assert "rebuilding Redis" not in log
        for other in ("pomodoros", "team-focus", "focus-minutes"):
            assert f"board '{other}'" not in log
    proc.check()


@pytest.mark.parametrize(
    ("where", "sql", "expected"),
    [
        (
            "minutes >= '25'",
            "",
            "field 'where': column public.pomodoros.minutes is integer, compared with '25'; "
            "compare it with a number; restore it, or change the board's definition",
        ),
        (
            "rating is not null",
            "ALTER TABLE pomodoros ADD COLUMN rating point",
            "field 'where': column public.pomodoros.rating is point, which a condition cannot "
            "read (integer, numeric, double precision, text, varchar, boolean, timestamptz or "
            "timestamp columns only); restore it, or change the board's definition",
        ),
        (
            "note = 'x'",
            "ALTER TABLE pomodoros ADD COLUMN note text; ALTER TABLE pomodoros REPLICA IDENTITY"
            " DEFAULT",
            "table public.pomodoros has REPLICA IDENTITY DEFAULT, which does not log the old "
            "user_id, completed_at, note of deleted or changed rows; fix it with: ALTER TABLE "
            '"public"."pomodoros" REPLICA IDENTITY FULL',
        ),
    ],
)
def test_conditions_are_checked_against_the_live_schema_at_start(
    focus_dsn: str, config: dict[str, Any], tmp_path: Path, where: str, sql: str, expected: str
) -> None:
    """A condition over a literal of another type, an unsupported column type, or a column
    the replica identity does not log stops start-up with one line naming board and fix."""
    if sql:
        with psycopg.connect(focus_dsn, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]
    boards = tmp_path / "boards.toml"
    boards.write_text(
        '[[boards]]\nname = "x"\ntable = "pomodoros"\nmember = "user_id"\n'
        f'time = "completed_at"\nwhere = "{where}"\n'
    )
    run = subprocess.run(
        [projector_executable(), "run"],
        env=settings_env({**config, "boards_file": str(boards)}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"projector: board 'x': {expected}"
