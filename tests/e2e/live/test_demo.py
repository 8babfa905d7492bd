"""``projector demo``: plausible people, a realistic mix of writes, PostgreSQL only, clean stops,
patient reconnects, and boards that the projector keeps equal to a recomputation."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis

from harness.servers import free_port
from projector.commands.demo import FIRST_NAMES, LAST_NAMES, Delete, DemoPlan, Insert, Move, people
from tests.e2e.projector.support import (
    assert_same,
    projector_executable,
    read_redis,
    recompute,
    settings_env,
)

from .support import Stack

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)


def test_fifty_distinct_people_with_plausible_names() -> None:
    """The default crowd: 50 distinct first-and-last names, ids as ASCII slugs, stable."""
    crowd = people(50)
    assert (
        len(crowd) == 50 == len({p.user_id for p in crowd}) == len({p.display_name for p in crowd})
    )
    for person in crowd:
        first, _, last = person.display_name.partition(" ")
        assert first in FIRST_NAMES and last in LAST_NAMES
        assert re.fullmatch(r"[a-z-]+\.[a-z-]+", person.user_id), person.user_id
    assert len({p.display_name.split()[0] for p in crowd}) >= 40  # not one family
    assert people(50) == crowd  # a restart writes for the same people


def test_plan_mixes_inserts_moves_and_deletes_mostly_now() -> None:
    """Mostly new pomodoros, a few moves and deletes; mostly now, never in the future."""
    plan = DemoPlan(people(50), random.Random(1), clock=lambda: NOW)
    writes = [plan.next() for _ in range(5000)]
    kinds = Counter(type(w) for w in writes)
    assert 0.85 < kinds[Insert] / 5000 < 0.95
    assert 0.03 < kinds[Move] / 5000 < 0.09 and 0.02 < kinds[Delete] / 5000 < 0.06
    inserts = [w for w in writes if isinstance(w, Insert)]
    now_share = sum(w.completed_at is None for w in inserts) / len(inserts)
    assert 0.65 < now_share < 0.85
    earlier = [w.completed_at for w in inserts if w.completed_at is not None]
    assert all(NOW - timedelta(days=36) <= t < NOW for t in earlier)
    assert any(t < NOW - timedelta(days=7) for t in earlier)  # some in past weeks
    busiest = Counter(w.user_id for w in inserts).most_common()
    assert busiest[0][1] > 4 * busiest[-1][1]  # some people are keener than others
    moves = [w for w in writes if isinstance(w, Move)]
    assert any(m.user_id and not m.completed_at for m in moves)
    assert any(m.completed_at and not m.user_id for m in moves)
    history = plan.history(400)
    assert any(h.completed_at and h.completed_at.date() == NOW.date() for h in history)
    assert all(h.completed_at and NOW - timedelta(days=36) < h.completed_at <= NOW for h in history)


def test_cli_explains_itself_and_refuses_bad_rates() -> None:
    """--help documents --rate; a bad --rate is one clear line and exit status 2."""
    shown = subprocess.run(
        [projector_executable(), "demo", "--help"], capture_output=True, text=True, check=True
    )
    assert "--rate" in shown.stdout and "PostgreSQL" in shown.stdout
    for bad in ("0", "-1", "abc", "nan", "5000"):
        result = subprocess.run(
            [projector_executable(), "demo", "--rate", bad], capture_output=True, text=True
        )
        assert result.returncode == 2, bad
        assert (
            f"argument --rate: must be a number of writes per second from 0.1 to 1000, not '{bad}'"
            in result.stderr
        )


def _demo(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [projector_executable(), "demo", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_demo_writes_through_postgres_and_boards_match(
    stack: Stack, rds: redis.Redis, tmp_path: Path
) -> None:
    """Fifty users, pomodoros, moves and deletes land; Redis equals the recomputation."""
    log = tmp_path / "demo.log"
    demo = _demo(stack.env, log, "--rate", "60", "--history", "200", "--seed", "7")
    try:
        # Until enough has landed (a busy machine writes more slowly than --rate asks).
        deadline = time.monotonic() + 60
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            while conn.execute(
                "SELECT count(*) < 330 FROM pomodoros WHERE user_id LIKE '%.%'"
            ).fetchone() != (False,):
                assert time.monotonic() < deadline and demo.poll() is None, log.read_text()
                time.sleep(0.2)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(5) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
    text = log.read_text()
    stopped = re.search(r"demo stopped\s+deletes=(\d+) inserts=(\d+) moves=(\d+)", text)
    assert stopped, text
    deletes, inserts, moves = map(int, stopped.groups())
    assert inserts > 100 and moves > 0 and deletes > 0, stopped.group(0)
    with psycopg.connect(stack.dsn) as conn:
        users = conn.execute("SELECT count(*) FROM users WHERE id LIKE '%.%'").fetchone()
        rows = conn.execute("SELECT count(*) FROM pomodoros WHERE user_id LIKE '%.%'").fetchone()
    assert users == (50,)
    assert rows is not None and rows[0] == 200 + inserts - deletes
    stack.caught_up(rds)
    retention = {k: v for k, v in stack.config.items() if k.startswith("retention_")}
    assert_same(read_redis(rds, stack.prefix), recompute(stack.dsn, "UTC", retention))


def test_demo_backs_off_while_postgres_is_down_and_stops_at_once(tmp_path: Path) -> None:
    """No server: a few spaced retries, each logged, and SIGTERM still ends it at once."""
    config: dict[str, Any] = {
        "pg_dsn": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        "reconnect_max_delay": 2.0,
    }
    log = tmp_path / "demo.log"
    demo = _demo(settings_env(config), log, "--rate", "100")
    try:
        time.sleep(4.0)
        stopping = time.monotonic()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(5) == 0, log.read_text()
        assert time.monotonic() - stopping < 2.0
    finally:
        if demo.poll() is None:
            demo.kill()
    retries = re.findall(r"PostgreSQL unreachable; retrying.*retry_in=([0-9.]+)", log.read_text())
    # Waits of 0.5, 1, 2, 2... s: four or five attempts in four seconds, not hundreds.
    assert 3 <= len(retries) <= 5, log.read_text()
    assert [float(r) for r in retries[:4]] == [0.5, 1.0, 2.0, 2.0][: len(retries[:4])]


def test_demo_without_the_schema_says_to_migrate(postgres_server: Any, tmp_path: Path) -> None:
    """Against a database without the tables: one line naming the fix, exit status 1."""
    postgres_server.start()
    from harness import servers

    name = servers.unique_database_name("demo_bare")
    dsn = postgres_server.create_database(name)
    try:
        result = subprocess.run(
            [projector_executable(), "demo"],
            env=settings_env({"pg_dsn": dsn}),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        postgres_server.drop_database(name)
    assert result.returncode == 1
    assert "run `projector migrate` first" in result.stderr
    assert "Traceback" not in result.stderr
