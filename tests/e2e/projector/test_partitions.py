"""A board over a partitioned table: streamed through the partition root, and exact through
partition maintenance (attach, detach, drop, truncate of one partition), which the stream
does not report as row changes, while the other boards stream on."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from projector.commands.migrate import migrate
from projector.core.watermark import unavailable_boards
from projector.settings import load_settings

from .conftest import Projected
from .support import (
    ProjectorProcess,
    assert_same,
    projector_executable,
    settings_env,
    watermark,
)

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]

_SCHEMA = """
CREATE TABLE focus (
    id bigint GENERATED ALWAYS AS IDENTITY,
    user_id text,
    done_at timestamptz NOT NULL,
    PRIMARY KEY (id, done_at)
) PARTITION BY RANGE (done_at);
CREATE TABLE focus_h1 PARTITION OF focus FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE focus_h2 PARTITION OF focus FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
CREATE TABLE focus_rest PARTITION OF focus DEFAULT;
ALTER TABLE focus REPLICA IDENTITY FULL;
ALTER TABLE focus_rest REPLICA IDENTITY FULL;
ALTER TABLE focus_h1 REPLICA IDENTITY FULL;
ALTER TABLE focus_h2 REPLICA IDENTITY FULL;
"""
_BOARDS = """
[[boards]]
name = "pomodoros"
table = "public.pomodoros"
member = "user_id"
time = "completed_at"
[boards.labels]
table = "public.users"
key = "id"
column = "display_name"

[[boards]]
name = "focus"
table = "public.focus"
member = "user_id"
time = "done_at"
periods = ["day", "month", "all"]
"""


@pytest.fixture
def boards_file(db: psycopg.Connection[Any], migrated_dsn: str, tmp_path: Path) -> str:
    """The pomodoro board and a board over a partitioned table, migrated."""
    db.execute(_SCHEMA)
    path = tmp_path / "boards.toml"
    path.write_text(_BOARDS)
    migrate(migrated_dsn, "projector", load_settings(boards_file=str(path)).boards)
    return str(path)


def _insert(db: psycopg.Connection[Any], rng: random.Random, n: int, year: int = 2026) -> None:
    rows = [
        (rng.choice(["ann", "bob", "cy", "dee", None]), f"{year}-{rng.randint(1, 12):02d}-14")
        for _ in range(n)
    ]
    with db.cursor() as cur:
        cur.executemany("INSERT INTO focus (user_id, done_at) VALUES (%s, %s)", rows)
        cur.executemany(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)",
            [(u or "zed", t) for u, t in rows],
        )


def _eventually_exact(proc: ProjectorProcess, projected: Projected, timeout: float = 30) -> None:
    """Every board equals the recomputation within ``timeout`` (maintenance is found at the
    projector's next heartbeat, then the board is built again)."""
    deadline = time.monotonic() + timeout
    while True:
        proc.check()
        projected.caught_up()
        try:
            for board in projected.boards:
                assert_same(projected.redis(board), projected.expected(board))
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_partition_maintenance_rebuilds_only_its_board(
    boards_file: str, db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """Cross-partition moves and NULL members stream exactly; after each attach (with rows),
    detach, drop and truncate of one partition the board equals the recomputation again,
    rebuilt beside the pomodoro board, which never stops."""
    rng = random.Random(15)
    proc, projected = start_process(boards_file=boards_file, heartbeat_interval=0.2)
    _insert(db, rng, 200)
    projected.assert_exact()
    # Moves between partitions (a delete from one, an insert into the other), to and from
    # a NULL member.
    db.execute(
        "UPDATE focus SET done_at = done_at + interval '6 months'"
        " WHERE done_at < '2026-07-01' AND id % 3 = 0"
    )
    db.execute("UPDATE focus SET user_id = NULL WHERE id % 7 = 0")
    db.execute("UPDATE focus SET user_id = 'eve' WHERE user_id IS NULL AND id % 2 = 0")
    projected.assert_exact()
    assert projected.redis(projected.boards[1]).boards[("all", "all")]

    for step in (
        "TRUNCATE focus_h1",
        "ALTER TABLE focus DETACH PARTITION focus_h2",
        "CREATE TABLE focus_2025 (LIKE focus INCLUDING ALL);"
        " ALTER TABLE focus_2025 REPLICA IDENTITY FULL;"
        " INSERT INTO focus_2025 (user_id, done_at)"
        "   SELECT 'old' || g % 5, timestamptz '2025-03-01' + g * interval '1 day'"
        "   FROM generate_series(1, 40) g;"
        " ALTER TABLE focus ATTACH PARTITION focus_2025"
        "   FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "DROP TABLE focus_2025",
    ):
        db.execute(step)  # type: ignore[arg-type]
        _insert(db, rng, 20)  # the stream goes on meanwhile
        _eventually_exact(proc, projected)
    log = proc.log_text()
    assert log.count("boards built and live") >= 4
    assert log.count("rebuilding Redis") == 1  # the first start only: never a full rebuild
    assert not unavailable_boards(watermark(projected.client).get("unavailable", ""))


def test_a_partition_whose_identity_loses_a_column_makes_its_board_unavailable(
    boards_file: str, db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """A partition created later with a replica identity that does not log the member is
    caught before its changes are applied: that board is dropped and named, the other
    streams on, and once the identity is fixed the board is built again."""
    rng = random.Random(16)
    proc, projected = start_process(boards_file=boards_file, heartbeat_interval=0.2)
    _insert(db, rng, 50)
    projected.assert_exact()
    db.execute(
        "CREATE TABLE focus_2027 PARTITION OF focus FOR VALUES FROM ('2027-01-01') TO (MAXVALUE)"
    )
    _insert(db, rng, 10, year=2027)
    db.execute("UPDATE focus SET user_id = 'moved' WHERE done_at >= '2027-01-01'")
    deadline = time.monotonic() + 30
    while "focus" not in unavailable_boards(watermark(projected.client).get("unavailable", "")):
        proc.check()
        assert time.monotonic() < deadline, proc.log_tail()
        time.sleep(0.05)
    problem = unavailable_boards(watermark(projected.client)["unavailable"])["focus"]
    assert "focus_2027" in problem and "REPLICA IDENTITY FULL" in problem
    assert not list(projected.client.scan_iter(match="pomo:lb:focus:*"))
    _insert(db, rng, 20)
    pomodoros = projected.boards[0]
    projected.caught_up()
    assert_same(projected.redis(pomodoros), projected.expected(pomodoros))

    db.execute("ALTER TABLE focus_2027 REPLICA IDENTITY FULL")
    _eventually_exact(proc, projected)
    assert not unavailable_boards(watermark(projected.client).get("unavailable", ""))
    assert proc.log_text().count("rebuilding Redis") == 1  # the first start only


def _cli(projected: Projected, *args: str) -> tuple[int, dict[str, Any]]:
    run = subprocess.run(
        [projector_executable(), *args, "--json"],
        env=settings_env(projected.config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run.returncode, json.loads(run.stdout)


def test_status_and_verify_name_the_window_after_partition_maintenance(
    boards_file: str, db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """Between a partition's detach and the projector's next look, ``status`` calls the
    board rebuilding and ``verify`` says its drift is that window; both are clean after."""
    rng = random.Random(17)
    # A slow heartbeat: the projector looks at the partitions again only after the checks.
    proc, projected = start_process(boards_file=boards_file, heartbeat_interval=60)
    _insert(db, rng, 60)
    projected.assert_exact()
    # Past the stream's first heartbeat (it looks at the partitions right after writing it).
    deadline = time.monotonic() + 30
    while projected.client.hget("pomo:projector", "state") != b"streaming":
        assert time.monotonic() < deadline, proc.log_tail()
        time.sleep(0.05)
    time.sleep(0.5)
    db.execute("ALTER TABLE focus DETACH PARTITION focus_h1")

    code, status = _cli(projected, "status")
    assert status["boards"]["focus"]["state"] == "rebuilding"
    assert "detached" in status["boards"]["focus"]["detail"]
    assert status["boards"]["pomodoros"]["state"] == "live"
    code, report = _cli(projected, "verify")
    assert code == 1 and not report["in_sync"]  # the detached rows are still counted
    assert "focus" in report["rebuilding"]
    assert all(":lb:focus:" in drift["key"] for drift in report["drift"])

    proc.signal(signal.SIGTERM)  # a new start looks at once
    assert proc.wait(30) == 0
    proc, projected = start_process(boards_file=boards_file)
    _eventually_exact(proc, projected)
    code, status = _cli(projected, "status")
    assert status["boards"]["focus"]["state"] == "live"
    code, report = _cli(projected, "verify")
    assert code == 0 and report["in_sync"] and not report["rebuilding"]
