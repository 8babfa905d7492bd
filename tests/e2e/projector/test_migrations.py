"""Schema migrations while the projector streams: what a board does not read never stops the
stream; what breaks one board stops that board only, and it is built again once fixed."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from projector.core.watermark import unavailable_boards

from .conftest import Projected
from .support import (
    ProjectorProcess,
    Writer,
    assert_same,
    projector_executable,
    settings_env,
    watermark,
)

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

# Each keeps every column a board reads as it is (minutes, team_id, user_id, completed_at).
HARMLESS = (
    "ALTER TABLE pomodoros ADD COLUMN note text",
    "ALTER TABLE pomodoros ADD COLUMN rating integer NOT NULL DEFAULT 3",
    "ALTER TABLE pomodoros RENAME COLUMN note TO remark",
    "ALTER TABLE pomodoros ALTER COLUMN rating TYPE bigint",  # rewrites the table
    "ALTER TABLE pomodoros DROP COLUMN remark",
    "CREATE INDEX pomodoros_rating ON pomodoros (rating)",
    "VACUUM FULL pomodoros",
    "CLUSTER pomodoros USING pomodoros_rating",
    "ALTER TABLE users ADD COLUMN avatar text",
)


@pytest.fixture
def example_dsn(migrated_dsn: str) -> str:
    """The example schema (minutes, teams) over the migrated one, with the example's boards
    migrated into the publication."""
    from projector.commands.migrate import migrate
    from projector.settings import load_settings

    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute((EXAMPLES / "focus_minutes.sql").read_text())  # type: ignore[arg-type]
    boards = load_settings(boards_file=str(EXAMPLES / "focus_minutes.toml")).boards
    migrate(migrated_dsn, "projector", boards)
    return migrated_dsn


def _unavailable(projected: Projected) -> dict[str, str]:
    return unavailable_boards(watermark(projected.client).get("unavailable", ""))


def _wait(proc: ProjectorProcess, what: str, done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        proc.check()
        assert time.monotonic() < deadline, f"{what}:\n{proc.log_tail()}"
        time.sleep(0.05)


def _exact(projected: Projected, names: set[str]) -> None:
    projected.caught_up()
    for board in projected.boards:
        if board.name in names:
            assert_same(projected.redis(board), projected.expected(board))


def test_migrations_while_streaming_stop_only_the_board_they_break(
    example_dsn: str, db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """Harmless DDL under a running writer neither stops nor restarts the stream; a renamed
    or retyped column stops only the boards that read it (dropped from Redis, named in the
    watermark with the fix) while the others stay exact; after the fix they are built again
    without a restart."""
    proc, projected = start_process(
        boards_file=str(EXAMPLES / "focus_minutes.toml"), heartbeat_interval=0.2
    )
    writer = Writer(example_dsn, seed=18).start()
    try:
        for statement in HARMLESS:
            db.execute(statement)  # type: ignore[arg-type]
            time.sleep(0.2)
    finally:
        writer.stop()
    projected.assert_exact()
    log = proc.log_text()
    assert "boards change" not in log and "unavailable" not in log
    assert log.count("streaming") == 2  # the first start, then after its build: no restart

    everything = {"pomodoros", "team-focus", "focus-minutes", "team-long"}
    for breaking, broken, fix in (
        (
            "ALTER TABLE pomodoros RENAME COLUMN team_id TO squad",
            {"team-focus", "team-long"},  # team-long's condition reads team_id
            "ALTER TABLE pomodoros RENAME COLUMN squad TO team_id",
        ),
        (
            "ALTER TABLE pomodoros ALTER COLUMN minutes TYPE numeric",
            {"team-focus", "focus-minutes"},
            "ALTER TABLE pomodoros ALTER COLUMN minutes TYPE integer",
        ),
    ):
        db.execute(breaking)  # type: ignore[arg-type]
        writer = Writer(example_dsn, seed=len(broken)).start()
        try:
            _wait(proc, "not unavailable", lambda b=broken: set(_unavailable(projected)) == b)
            for name in broken:
                assert not list(projected.client.scan_iter(match=f"pomo:lb:{name}:*"))
        finally:
            writer.stop()
        _exact(projected, everything - broken)
        for problem in _unavailable(projected).values():
            assert "restore it, or change the board's definition" in problem
        status = subprocess.run(
            [projector_executable(), "status", "--json"],
            env=settings_env(projected.config),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 1  # unhealthy: a board is not served
        states = json.loads(status.stdout)["boards"]
        assert {n for n, s in states.items() if s["state"] == "unavailable"} == broken
        assert {n for n, s in states.items() if s["state"] == "live"} == everything - broken
        db.execute(fix)  # type: ignore[arg-type]
        _wait(proc, "still unavailable", lambda: not _unavailable(projected))
        deadline = time.monotonic() + 30
        while True:
            try:
                projected.assert_exact()
                break
            except AssertionError:
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.1)
