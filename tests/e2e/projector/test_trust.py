"""No path to a silently wrong score: each state in which Redis could differ from PostgreSQL
without the projector noticing is made to happen here, against real servers, and the
projector must rebuild (logging the cause) or refuse to start with one clear line.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis

from projector.core.errors import RebuildRequired
from projector.rebuild import RebuildProgress, advisory_lock, rebuild
from projector.settings import load_settings
from projector.sink import RedisSink
from projector.stream import connect

from .conftest import Projected
from .support import (
    ProjectorProcess,
    current_wal_lsn,
    projector_executable,
    settings_env,
    watermark,
)

StartProcess = Callable[..., tuple[ProjectorProcess, Projected]]


def _insert(dsn: str, rows: list[tuple[str, str]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)", rows
        )


def _stop(proc: ProjectorProcess) -> None:
    proc.signal(signal.SIGTERM)
    assert _wait_exit(proc) == 0, proc.log_tail()


def _wait_exit(proc: ProjectorProcess, timeout: float = 30.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"projector kept running:\n{proc.log_tail()}") from None


def _rebuilt(proc: ProjectorProcess, timeout: float = 30.0) -> str:
    """Wait until the process finished a rebuild; return the reason it logged."""
    deadline = time.monotonic() + timeout
    while "rebuild finished" not in proc.log_text():
        proc.check()
        assert time.monotonic() < deadline, f"no rebuild:\n{proc.log_tail()}"
        time.sleep(0.02)
    return _rebuild_reasons(proc)[-1]


def _rebuild_reasons(proc: ProjectorProcess) -> list[str]:
    return [
        line for line in proc.log_text().splitlines() if "rebuilding Redis from PostgreSQL" in line
    ]


@pytest.fixture
def eviction_policy(rds: redis.Redis) -> Iterator[Callable[[str], None]]:
    """Set Redis' maxmemory-policy for this test; noeviction again afterwards."""

    def set_policy(policy: str) -> None:
        rds.config_set("maxmemory-policy", policy)

    yield set_policy
    rds.config_set("maxmemory-policy", "noeviction")


# -- 1. a crash inside a large transaction, with keepalives while it is decoded again -------


def test_keepalives_while_a_large_transaction_is_decoded_again_do_not_double_count(
    migrated_dsn: str, start_process: StartProcess, postgres_server: Any
) -> None:
    """kill -9 between the chunks of a large transaction, with a short wal_sender_timeout so
    that PostgreSQL sends keepalives while it decodes the transaction again: exactly once."""
    postgres_server.set_config(wal_sender_timeout="400ms")
    proc, projected = start_process(max_tx_changes=2_000)
    projected.caught_up()
    client = projected.client
    killed_midway = 0
    for attempt in range(4):
        with psycopg.connect(migrated_dsn) as conn, conn.transaction():
            conn.execute(
                "INSERT INTO pomodoros (user_id, completed_at)"
                " SELECT 'big' || (g % 13), timestamptz '2026-06-01 00:00+00'"
                "   + (g % 300) * interval '1 day' FROM generate_series(1, 40000) AS g"
            )
            conn.execute(
                "DELETE FROM pomodoros WHERE id IN"
                " (SELECT id FROM pomodoros ORDER BY id DESC LIMIT %s)",
                (1_000 + attempt,),
            )
        deadline = time.monotonic() + 30
        while int(watermark(client).get("tx_rows", "0") or 0) == 0:
            proc.check()
            assert time.monotonic() < deadline, "no chunk was applied"
            time.sleep(0.002)
        proc.kill9()
        rows = int(watermark(client).get("tx_rows", "0") or 0)
        killed_midway += 0 < rows < 41_000 + attempt
        proc.start()
        projected.assert_exact()
    assert killed_midway >= 2
    log = proc.log_text()
    assert "resuming a large transaction" in log
    assert not _rebuild_reasons(proc)[1:], "only the first start may rebuild"


# -- 2. a changed configuration -----------------------------------------------------------


def test_a_changed_time_zone_rebuilds_in_the_new_zone(
    migrated_dsn: str, start_process: StartProcess
) -> None:
    """A restart in another time zone rebuilds (naming the change); later deletes then
    subtract from the new zone's buckets."""
    proc, projected = start_process(timezone="UTC")
    _insert(migrated_dsn, [("ada", "2026-11-26 20:30+00"), ("ada", "2026-11-26 10:00+00")])
    before = projected.assert_exact()
    assert before.boards[("day", "2026-11-26")] == {"ada": 2}
    _stop(proc)

    proc, projected = start_process(timezone="Asia/Kolkata")
    assert "timezone 'UTC' -> 'Asia/Kolkata'" in _rebuilt(proc)
    after = projected.assert_exact()
    assert after.boards[("day", "2026-11-27")] == {"ada": 1}  # 02:00 in Kolkata
    assert len(_rebuild_reasons(proc)) == 1
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pomodoros WHERE completed_at = '2026-11-26 20:30+00'")
    after = projected.assert_exact()
    assert ("day", "2026-11-27") not in after.boards


def test_a_changed_retention_rebuilds(migrated_dsn: str, start_process: StartProcess) -> None:
    """A restart with a longer day retention rebuilds: boards it had let expire come back."""
    proc, projected = start_process(retention_day_days=1)
    _insert(migrated_dsn, [("ada", "2026-01-05 10:00+00"), ("bob", "2026-11-01 10:00+00")])
    assert ("day", "2026-01-05") not in projected.assert_exact().boards
    _stop(proc)
    proc, projected = start_process(retention_day_days=36_500)
    assert "retention" in _rebuilt(proc)
    assert projected.assert_exact().boards[("day", "2026-01-05")] == {"ada": 1}


def test_status_reports_a_configuration_that_differs_from_redis(
    config: dict[str, Any], start_process: StartProcess
) -> None:
    """`projector status` says Redis was built under another configuration."""
    proc, projected = start_process(timezone="UTC")
    projected.caught_up()
    _stop(proc)
    env = settings_env({**config, "timezone": "Europe/Paris"})
    out = subprocess.run(
        [projector_executable(), "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "built under another configuration (timezone 'UTC' -> 'Europe/Paris')" in out.stdout


# -- 3. Redis evictions ---------------------------------------------------------------------


def test_an_evicting_redis_is_refused_and_rebuilt_once_fixed(
    config: dict[str, Any],
    start_process: StartProcess,
    rds: redis.Redis,
    eviction_policy: Callable[[str], None],
) -> None:
    """With maxmemory-policy volatile-lru the projector refuses to start with one line that
    names the fix, and forgets the watermark: once fixed, it rebuilds."""
    proc, projected = start_process()
    projected.caught_up()
    _stop(proc)
    eviction_policy("volatile-lru")
    env = settings_env(config)
    out = subprocess.run(
        [projector_executable(), "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "maxmemory-policy volatile-lru" in out.stdout and out.returncode == 1
    run = subprocess.run(
        [projector_executable(), "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "projector: Redis maxmemory-policy is 'volatile-lru': it may evict boards and silently "
        "lose scores; set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in "
        "redis.conf or the managed service's parameter group)"
    )
    assert not rds.exists("pomo:watermark")
    eviction_policy("noeviction")
    proc, projected = start_process()
    assert "no watermark" in _rebuilt(proc)
    projected.assert_exact()


def test_an_eviction_policy_set_while_running_stops_the_projector(
    start_process: StartProcess, rds: redis.Redis, eviction_policy: Callable[[str], None]
) -> None:
    """Switching Redis to allkeys-lru under a running projector stops it (exit 2)."""
    proc, projected = start_process(heartbeat_interval=0.3)
    projected.caught_up()
    eviction_policy("allkeys-lru")
    assert _wait_exit(proc, 15) == 2
    assert "maxmemory-policy is 'allkeys-lru'" in proc.log_tail(5)
    assert not rds.exists("pomo:watermark")


@pytest.mark.parametrize("loss", ["board", "member", "label"])
def test_the_swap_refuses_a_build_that_lost_a_board(
    config: dict[str, Any], migrated_dsn: str, rds: redis.Redis, loss: str
) -> None:
    """A build key lost or cut short before the swap (evicted, unlinked, Redis restarted
    from an older snapshot) fails the rebuild loudly instead of publishing a board short or
    empty; build keys carry their safety TTL until then."""
    _insert(
        migrated_dsn,
        [
            ("ada", "2026-11-26 10:00+00"),
            ("bob", "2025-02-01 10:00+00"),
            ("cy", "2026-11-26 11:00+00"),
        ],
    )
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users VALUES ('ada', 'Ada'), ('bob', 'Bob')")
    settings = load_settings(**config)
    sink = RedisSink(rds, settings.keys)
    ttls: dict[str, int] = {}

    def lose_a_board(state: RebuildProgress) -> None:
        if state.phase != "swapping":
            return
        keys = [k.decode() for k in rds.scan_iter(match="pomo:rebuild:*:lb:*")]
        ttls.update({key: int(rds.ttl(key)) for key in keys})
        if loss == "board":
            rds.unlink(next(key for key in keys if key.endswith(":day:2025-02-01")))
        elif loss == "member":
            rds.zrem(next(key for key in keys if key.endswith(":day:2026-11-26")), "cy")
        else:
            (names,) = rds.scan_iter(match="pomo:rebuild:*:users")
            rds.hdel(names, "bob")

    pg = connect(migrated_dsn)
    try:
        with (
            advisory_lock(pg, settings.slot, wait=True),
            pytest.raises(RebuildRequired, match="lost keys"),
        ):
            rebuild(settings, sink, reason="test", progress=lose_a_board)
    finally:
        pg.close()
    assert len(ttls) == 9  # two days, weeks, months and years, one all-time board
    assert all(0 < ttl <= 24 * 3600 for ttl in ttls.values()), ttls
    assert not rds.exists("pomo:watermark")


# -- 4. replica identity ------------------------------------------------------------------


def test_a_replica_identity_without_old_values_is_refused_at_start(
    config: dict[str, Any], db: psycopg.Connection[Any]
) -> None:
    """pomodoros back at REPLICA IDENTITY DEFAULT: one line with the ALTER TABLE that fixes it."""
    db.execute("ALTER TABLE pomodoros REPLICA IDENTITY DEFAULT")
    run = subprocess.run(
        [projector_executable(), "run"],
        env=settings_env(config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "projector: board 'pomodoros': table public.pomodoros has REPLICA IDENTITY DEFAULT"
    )
    assert 'ALTER TABLE "public"."pomodoros" REPLICA IDENTITY FULL' in line


def test_deletes_logged_without_old_values_stop_the_projector_then_rebuild(
    db: psycopg.Connection[Any], start_process: StartProcess
) -> None:
    """Identity dropped while running: the projector stops (its only board cannot be
    projected) before it loses a delete; once the identity is fixed it builds the board
    again from a snapshot (the logged deletes lack old values) and is exact."""
    proc, projected = start_process()
    _insert(projected.config["pg_dsn"], [("ada", "2026-11-26 10:00+00")] * 3)
    projected.assert_exact()
    db.execute("ALTER TABLE pomodoros REPLICA IDENTITY DEFAULT")
    db.execute("DELETE FROM pomodoros WHERE id = (SELECT min(id) FROM pomodoros)")
    assert _wait_exit(proc) == 2
    assert "REPLICA IDENTITY DEFAULT" in proc.log_tail(5)
    db.execute("ALTER TABLE pomodoros REPLICA IDENTITY USING INDEX pomodoros_user_time_id")
    proc, projected = start_process()
    deadline = time.monotonic() + 30
    while "boards built and live" not in proc.log_text():
        proc.check()
        assert time.monotonic() < deadline, f"not built again:\n{proc.log_tail()}"
        time.sleep(0.02)
    assert "REPLICA IDENTITY DEFAULT" in proc.log_text()  # the stream's layout said so
    assert projected.assert_exact().boards[("all", "all")] == {"ada": 2}


# -- 5. a watermark ahead of the server, or on another timeline -------------------------------


def _rewrite_watermark(client: redis.Redis, **fields: str) -> None:
    client.hset("pomo:watermark", mapping=fields)


def test_a_watermark_ahead_of_the_wal_rebuilds(
    migrated_dsn: str, start_process: StartProcess, rds: redis.Redis
) -> None:
    """A watermark past PostgreSQL's WAL (a restore with the same system id) is not trusted."""
    proc, projected = start_process()
    _insert(migrated_dsn, [("ada", "2026-11-26 10:00+00")])
    projected.assert_exact()
    _stop(proc)
    ahead = current_wal_lsn(migrated_dsn) + (1 << 32)
    _rewrite_watermark(rds, lsn=f"{ahead >> 32:X}/{ahead & 0xFFFFFFFF:X}")
    proc, projected = start_process()
    assert "ahead of PostgreSQL's WAL" in _rebuilt(proc)
    projected.assert_exact()


def test_a_watermark_from_another_timeline_rebuilds(
    start_process: StartProcess, rds: redis.Redis
) -> None:
    """A watermark recorded on another timeline (PITR, promotion) is not trusted."""
    proc, projected = start_process()
    projected.caught_up()
    _stop(proc)
    assert watermark(rds)["timeline"] == "1"
    _rewrite_watermark(rds, timeline="2")
    proc, projected = start_process()
    assert "timeline 2, PostgreSQL is on timeline 1" in _rebuilt(proc)
    projected.assert_exact()


def test_a_running_projector_reports_its_work_in_metrics(
    config: dict[str, Any], start_process: StartProcess, migrated_dsn: str
) -> None:
    """`projector run` with PROJECTOR_METRICS_PORT: rows and transactions applied by kind,
    the rebuild that bootstrapped it, role active, state streaming, and a healthy probe."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, projected = start_process(metrics_port=port)
    projected.caught_up()  # the bootstrap rebuild is done: what follows streams
    _insert(migrated_dsn, [("ada", "2026-11-26 10:00+00"), ("bob", "2026-11-27 10:00+00")])
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pomodoros WHERE user_id = 'bob'")
    projected.assert_exact()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    deadline = time.monotonic() + 10
    while 'projector_rows_applied_total{kind="delete"} 1.0' not in (text := scrape()):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    assert 'projector_rows_applied_total{kind="insert"} 2.0' in text
    assert "projector_transactions_applied_total 2.0" in text
    assert 'projector_rebuilds_total{cause="slot_missing"} 1.0' in text
    assert 'projector_role{role="active"} 1.0' in text
    assert 'projector_state{state="streaming"} 1.0' in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
    proc.check()
