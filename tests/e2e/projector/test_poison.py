"""No single row stops the projector: an over-long member or label follows one rule in the
stream, the rebuild and ``verify``; a label the stream cannot know is taken from a snapshot."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import psycopg

from projector.core.limits import MAX_LABEL, MAX_MEMBER, clean_label

from .conftest import Projected
from .support import ProjectorProcess, projector_executable, settings_env

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]

# Controls, a right-to-left override and an isolate, around 100,000 characters.
HOSTILE_LABEL = "\u202eevil\x07\x1b[31m\u2066" + "n" * 100_000 + "\x00".replace("\x00", "\x7f")


def _verify(projected: Projected) -> dict[str, Any]:
    run = subprocess.run(
        [projector_executable(), "verify", "--json", "--all"],
        env=settings_env(projected.config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def test_long_members_and_hostile_labels_follow_one_rule(
    db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """A member longer than the limit is not ranked and a label is cleaned and cut to 64
    code points, the same when streamed, when rebuilt and in ``verify``."""
    proc, projected = start_process()
    long_member = "m" * (MAX_MEMBER + 1)
    db.execute(
        "INSERT INTO users (id, display_name) VALUES ('ann', %s), (%s, 'Long')",
        (HOSTILE_LABEL, long_member),
    )
    db.execute(
        "INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now()), (%s, now()),"
        " (%s, now())",
        (long_member, "é" * MAX_MEMBER),  # at the limit in code points, over it in bytes
    )
    streamed = projected.assert_exact()
    label = streamed.names["ann"]
    assert label == clean_label(HOSTILE_LABEL) and len(label) == MAX_LABEL
    assert label.startswith("evil[31m") and "\u202e" not in label
    assert long_member not in streamed.boards[("all", "all")]
    assert streamed.boards[("all", "all")]["é" * MAX_MEMBER] == 1
    assert _verify(projected)["in_sync"]

    proc.signal(15)
    assert proc.wait(30) == 0
    projected.client.flushall()  # the next start rebuilds from a snapshot
    proc, projected = start_process()
    rebuilt = projected.assert_exact()
    assert rebuilt.names["ann"] == label
    assert rebuilt.boards == streamed.boards
    assert _verify(projected)["in_sync"]


def test_a_key_change_of_a_row_with_an_unlogged_long_label_rebuilds_once(
    db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """A label table whose identity logs only its key: a key change of a row whose long
    (TOASTed) label did not change cannot be projected from the stream; the projector
    rebuilds once from a snapshot and goes on, instead of failing again on every start."""
    db.execute("ALTER TABLE users REPLICA IDENTITY DEFAULT")
    big = os.urandom(12_000).hex()  # incompressible: stored out of line, not logged again
    db.execute("INSERT INTO users (id, display_name) VALUES ('alice', %s)", (big,))
    db.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('alicia', now())")
    proc, projected = start_process()
    projected.assert_exact()
    db.execute("UPDATE users SET id = 'alicia' WHERE id = 'alice'")
    db.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('alicia', now())")
    after = projected.assert_exact()
    assert after.names == {"alicia": big[:MAX_LABEL]}
    proc.check()
    log = proc.log_text()
    assert "long label was not logged" in log
    assert log.count("rebuild finished") == 2  # the first start, then this one
