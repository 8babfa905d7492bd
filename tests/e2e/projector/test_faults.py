"""Fault tests: kill -9 the projector, restart PostgreSQL and Redis, stop it with signals.

The projector runs as a real `projector run` process (or, where only the servers are
disturbed, a thread); every test ends by comparing Redis with the recomputation from
PostgreSQL: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import redis
from structlog.testing import capture_logs

from projector.commands.verify import verify

from .conftest import Projected
from .support import (
    ProjectorProcess,
    Writer,
    current_wal_lsn,
    parse_lsn,
    slot_confirmed_lsn,
    watermark,
)

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]

BIG_TX_ROWS = 10_000
MAX_TX_CHANGES = 1_000


def _big_transaction(dsn: str, seed: int) -> None:
    """One transaction of BIG_TX_ROWS row changes: inserts, then moves of some of them."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT 'big' || ((g * 7919 + %s) %% 97),"
            "        timestamptz '2026-06-01 00:00+00' + (g * 6151 %% 200) * interval '1 day'"
            "          + (g %% 1440) * interval '1 minute'"
            " FROM generate_series(1, %s) AS g",
            (seed, BIG_TX_ROWS - 2_000),
        )
        conn.execute(
            "UPDATE pomodoros SET user_id = 'mover',"
            " completed_at = completed_at + interval '3 days'"
            " WHERE id IN (SELECT id FROM pomodoros ORDER BY id DESC LIMIT 2000)"
        )


def _chunks_logged(proc: ProjectorProcess) -> int:
    return proc.log_text().count("applied a chunk of a large transaction")


def _tx_rows(client: redis.Redis) -> int:
    return int(watermark(client).get("tx_rows", "0") or 0)


def _applied_lsn(client: redis.Redis) -> int:
    lsn = watermark(client).get("lsn")
    return parse_lsn(lsn) if lsn else 0


class _Bursts:
    """Commits 5,000-row transactions (after ``pause`` s each), keeping the stream busy."""

    def __init__(self, dsn: str, pause: float = 0.0) -> None:
        self.dsn = dsn
        self.pause = pause
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bursts")

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.wait(self.pause):
                conn.execute(
                    "INSERT INTO pomodoros (user_id, completed_at)"
                    " SELECT 'burst' || (g % 7), now() - g * interval '1 minute'"
                    " FROM generate_series(1, 5000) AS g"
                )

    def __enter__(self) -> _Bursts:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)


def test_big_transaction_applied_in_chunks_exactly_even_when_killed_midway(
    migrated_dsn: str, start_process: StartProcess
) -> None:
    """A 10,000-row transaction over the atomic limit is applied in exact chunks across kill -9."""
    proc, projected = start_process(max_tx_changes=MAX_TX_CHANGES)
    projected.caught_up()

    _big_transaction(migrated_dsn, seed=1)
    projected.assert_exact()
    assert _chunks_logged(proc) >= BIG_TX_ROWS // MAX_TX_CHANGES - 1

    # Now kill it while the chunks of the next big transaction are being applied.
    client = projected.client
    killed_midway = []
    for attempt in range(6):
        proc.kill9()
        _big_transaction(migrated_dsn, seed=attempt + 2)
        committed = current_wal_lsn(migrated_dsn)
        proc.start()
        deadline = time.monotonic() + 30
        # Poll for a chunk's progress marker; give up on this round once all is applied.
        while _tx_rows(client) == 0 and _applied_lsn(client) < committed:
            proc.check()
            assert time.monotonic() < deadline, "the big transaction was not applied"
            time.sleep(0.0005)
        proc.kill9()
        rows = _tx_rows(client)
        if 0 < rows < BIG_TX_ROWS:
            killed_midway.append(rows)
            if len(killed_midway) >= 2:
                break
    assert killed_midway, "never managed to kill the projector between two chunks"
    proc.start()
    projected.assert_exact()
    log = proc.log_text()
    assert "resuming a large transaction" in log
    assert "rebuilding Redis" not in log.split("===== start 2 =====")[1]


def test_kill9_projector_repeatedly_while_writing(
    migrated_dsn: str, start_process: StartProcess
) -> None:
    """kill -9 of the projector at random moments under writes loses and repeats nothing."""
    rng = random.Random(20261126)
    # Bursts of 5,000 rows over a 1,000-row atomic limit: kills also land between chunks.
    proc, projected = start_process(max_tx_changes=MAX_TX_CHANGES)
    writer = Writer(migrated_dsn, seed=7).start()
    try:
        projected.caught_up()
        with _Bursts(migrated_dsn, pause=0.3):
            for _ in range(5):
                time.sleep(rng.uniform(0.3, 1.5))
                proc.check()
                proc.kill9()
                time.sleep(rng.uniform(0.0, 0.3))
                proc.start()
            time.sleep(1.0)
    finally:
        stats = writer.stop()
    assert stats.transactions > 200, stats
    projected.assert_exact()
    report = verify(projected.settings)
    assert report.in_sync, report.as_json()
    assert report.members > 0
    assert proc.starts == 6
    # Only the very first start builds Redis; every restart after kill -9 resumes.
    assert proc.log_text().count("rebuilding Redis") == 1, proc.log_text()


@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_postgres_restart_while_streaming(
    how: str,
    migrated_dsn: str,
    postgres_server: Any,
    start_thread: Callable[..., Projected],
) -> None:
    """PostgreSQL restarted (fast or after kill -9) mid-stream: the projector reconnects, exact."""
    projected = start_thread()
    projected.caught_up()
    writer = Writer(migrated_dsn, seed=11).start()
    with capture_logs() as logs:
        try:
            time.sleep(0.7)
            if how == "restart":
                postgres_server.restart()
            else:
                postgres_server.kill9()
                postgres_server.start()
            time.sleep(1.5)
        finally:
            stats = writer.stop()
        assert stats.failures > 0, "the writer should have noticed the restart"
        projected.assert_exact()
    events = [entry["event"] for entry in logs]
    assert "connection lost; retrying" in events
    assert "rebuilding Redis from PostgreSQL" not in events
    assert verify(projected.settings).in_sync


def test_redis_restart_while_streaming_rebuilds_exactly(
    migrated_dsn: str, redis_server: Any, start_thread: Callable[..., Projected]
) -> None:
    """Redis restarted empty mid-stream: the projector notices, rebuilds, and ends exact."""
    projected = start_thread()
    projected.caught_up()
    writer = Writer(migrated_dsn, seed=13).start()
    with capture_logs() as logs:
        try:
            time.sleep(0.7)
            redis_server.restart()
            time.sleep(1.5)
        finally:
            writer.stop()
        projected.assert_exact()
    assert "rebuilding Redis from PostgreSQL" in [entry["event"] for entry in logs]
    assert verify(projected.settings).in_sync


def test_redis_flushed_while_idle_rebuilds(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """FLUSHALL while idle (watermark gone) makes the projector rebuild from PostgreSQL."""
    db.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now())")
    projected.assert_exact()
    projected.client.flushall()
    db.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now())")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"ann": 2}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_promptly_and_acknowledges_what_redis_applied(
    sig: int, migrated_dsn: str, config: dict[str, Any], start_process: StartProcess
) -> None:
    """SIGTERM/SIGINT under load: exit 0 within 5 s, the slot confirmed exactly at the watermark."""
    proc, projected = start_process()
    writer = Writer(migrated_dsn, seed=17).start()
    try:
        projected.caught_up()
        with _Bursts(migrated_dsn):
            time.sleep(0.5)
            started = time.monotonic()
            proc.signal(sig)
            code = proc.wait(10)
            elapsed = time.monotonic() - started
    finally:
        writer.stop()
    assert code == 0, proc.log_tail()
    assert elapsed < 5.0
    # Stopped mid-stream, Redis still shows each 5,000-row transaction whole or not at all.
    board = projected.client.zrange("pomo:lb:pomodoros:all:all", 0, -1, withscores=True)
    assert sum(score for member, score in board if member.startswith(b"burst")) % 5000 == 0
    applied = parse_lsn(watermark(projected.client)["lsn"])
    deadline = time.monotonic() + 3
    while (confirmed := slot_confirmed_lsn(migrated_dsn, config["slot"])) != applied:
        assert time.monotonic() < deadline, f"slot confirmed {confirmed}, Redis watermark {applied}"
        time.sleep(0.05)
    # Whatever was committed after the stop is delivered, once, by the next run.
    proc.start()
    projected.assert_exact()


def test_redis_rolled_back_to_an_older_state_is_detected_and_rebuilt(
    db: psycopg.Connection[Any], start_thread: Callable[..., Projected]
) -> None:
    """Redis back at an older state (a lagging replica) is behind the slot: it is rebuilt."""
    projected = start_thread()
    db.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now())")
    projected.assert_exact()
    projected.stop()
    client = projected.client
    saved = {key: client.dump(key) for key in client.scan_iter(match="pomo:*")}
    projected = start_thread()
    db.execute(
        "INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now()), ('bob', now())"
    )
    projected.assert_exact()
    projected.stop()
    client.flushall()
    for key, value in saved.items():
        client.restore(key, 0, value)
    assert client.zscore("pomo:lb:pomodoros:all:all", "ann") == 1
    with capture_logs() as logs:
        projected = start_thread()
        got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"ann": 2, "bob": 1}
    reasons = [
        e.get("reason", "") for e in logs if e["event"] == "rebuilding Redis from PostgreSQL"
    ]
    assert reasons and "behind" in reasons[0], reasons


def test_kill9_during_rebuild_then_restart_is_exact(
    migrated_dsn: str, config: dict[str, Any], start_process: StartProcess
) -> None:
    """kill -9 in the middle of a rebuild leaves no half-built boards; the next start is exact."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT 'u' || (g % 5000), timestamptz '2026-01-01 00:00+00' + g * interval '97 s'"
            " FROM generate_series(1, 200000) AS g"
        )
        conn.execute("INSERT INTO users (id, display_name) VALUES ('u1', 'One')")
    proc, projected = start_process()
    deadline = time.monotonic() + 30
    while slot_confirmed_lsn(migrated_dsn, config["slot"]) is None:
        proc.check()
        assert time.monotonic() < deadline, "the rebuild never created its slot"
        time.sleep(0.002)
    time.sleep(0.05)  # the rebuild of 200,000 rows takes about a second here
    proc.kill9()
    client = projected.client
    assert not watermark(client), "killed too late: the rebuild had finished"
    assert not list(client.scan_iter(match="pomo:lb:*")), "half-built boards are visible"
    proc.start()
    got = projected.assert_exact()
    assert sum(got.boards[("all", "all")].values()) == 200_000
