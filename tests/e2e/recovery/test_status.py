"""``projector status`` as a monitoring probe, and the WAL safety it watches."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from harness import servers
from projector.core.lsn import parse_lsn

from .support import Deployment, ProjectorProcess, seed


def _status(deployment: Deployment, **env: str) -> tuple[int, dict[str, Any]]:
    result = deployment.cli("status", "--json", **env)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def _running(deployment: Deployment, **env: str) -> ProjectorProcess:
    seed(deployment.pg_dsn, rows=3_000, users=60, days=20)
    deployment.sql("INSERT INTO pomodoros (user_id) SELECT 'now' || g FROM generate_series(1, 7) g")
    projector = deployment.start(**env)
    projector.wait_event("rebuild finished")
    deployment.wait_caught_up()
    # Caught up already by the rebuild's swap: wait until the stream holds the slot too.
    deadline = time.monotonic() + 15
    while not (row := deployment.slot_row()) or not row["active"]:
        assert time.monotonic() < deadline, f"the slot never became active: {row}"
        time.sleep(0.05)
    return projector


def _wait_status(
    deployment: Deployment, problem: str, timeout: float = 15.0, **env: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, report = _status(deployment, **env)
        if code == 1 and any(problem in p for p in report["problems"]):
            assert report["healthy"] is False
            return report
        assert time.monotonic() < deadline, f"status never reported {problem!r}: {report}"
        time.sleep(0.3)


def test_status_of_a_healthy_projector_exits_0_with_every_field(
    deployment: Deployment,
) -> None:
    """Healthy: exit 0 and the slot, positions, lag, watermark, Redis and liveness fields."""
    projector = _running(deployment)
    before = parse_lsn(deployment.watermark()["lsn"])
    code, report = _status(deployment)
    after = parse_lsn(deployment.watermark()["lsn"])  # an idle watermark moves meanwhile
    assert code == 0, report["problems"]
    assert report["healthy"] is True and report["problems"] == []

    slot = report["slot"]
    assert slot["name"] == deployment.slot and slot["exists"] is True
    assert slot["active"] is True and isinstance(slot["active_pid"], int)
    assert slot["wal_status"] in ("reserved", "extended")
    assert "safe_wal_size" in slot  # NULL unless max_slot_wal_keep_size is set
    assert slot["retained_wal_bytes"] >= 0
    server = parse_lsn(report["postgres"]["server_lsn"])
    assert parse_lsn(slot["restart_lsn"]) <= parse_lsn(slot["confirmed_flush_lsn"]) <= server

    wm = report["watermark"]
    assert before <= parse_lsn(wm["lsn"]) <= after and wm["slot"] == deployment.slot
    assert datetime.fromisoformat(wm["commit_time"]).tzinfo is not None
    assert report["lag"]["bytes"] >= 0 and report["lag"]["seconds"] >= 0
    assert report["lag"]["bytes"] == max(0, server - parse_lsn(wm["lsn"]))

    redis_part = report["redis"]
    assert redis_part["reachable"] is True and redis_part["version"].startswith("7")
    assert redis_part["used_memory"] > 0
    today = datetime.now(ZoneInfo(deployment.timezone)).date().isoformat()
    assert set(redis_part["boards"]) == {
        f"pomodoros/{period}" for period in ("day", "week", "month", "year", "all")
    }
    assert (
        redis_part["boards"]["pomodoros/day"]["key"]
        == f"{deployment.prefix}lb:pomodoros:day:{today}"
    )
    with deployment.redis() as client:
        for size in redis_part["boards"].values():
            assert size["members"] == client.zcard(size["key"])
    assert redis_part["boards"]["pomodoros/all"]["members"] >= 60

    assert report["projector"]["alive"] is True
    assert report["projector"]["pid"] == projector.proc.pid

    text = deployment.cli("status")
    assert text.returncode == 0 and text.stdout.splitlines()[0].split() == ["health", "OK"]


def test_status_exits_1_when_the_projector_is_not_alive(deployment: Deployment) -> None:
    """kill -9 of the projector: once its heartbeat expires, status exits 1."""
    projector = _running(deployment)
    projector.kill9()
    report = _wait_status(deployment, "not alive", timeout=15)
    assert report["projector"]["alive"] is False
    assert report["slot"]["exists"] is True and report["slot"]["active"] is False


def test_status_exits_1_when_the_slot_is_missing(deployment: Deployment) -> None:
    """A dropped slot is reported by name with exit 1."""
    projector = _running(deployment)
    assert projector.stop() == 0
    deployment.drop_slot()
    report = _wait_status(deployment, "does not exist")
    assert report["slot"] == {"name": deployment.slot, "exists": False}
    assert any(deployment.slot in p for p in report["problems"])


def test_status_exits_1_when_redis_is_down(
    deployment: Deployment, redis_server: servers.RedisServer
) -> None:
    """Redis stopped: status still answers, exit 1, Redis unreachable."""
    _running(deployment)
    redis_server.stop()
    report = _wait_status(deployment, "Redis unreachable")
    assert report["redis"]["reachable"] is False and report["redis"]["error"]
    assert report["postgres"]["reachable"] is True


def test_status_exits_1_when_lag_exceeds_the_threshold(deployment: Deployment) -> None:
    """Writes the stopped projector has not applied for longer than the threshold: exit 1."""
    projector = _running(deployment)
    assert projector.stop() == 0
    deployment.sql("INSERT INTO pomodoros (user_id) VALUES ('late')")
    time.sleep(1.2)
    report = _wait_status(deployment, "lag", PROJECTOR_LAG_UNHEALTHY_SECONDS="1")
    assert report["lag"]["bytes"] > 0 and report["lag"]["seconds"] > 1


def test_retained_wal_above_the_threshold_is_a_problem_and_a_warning(
    deployment: Deployment,
) -> None:
    """Retained WAL beyond PROJECTOR_WAL_WARNING_BYTES: a status problem and a log warning."""
    projector = _running(deployment, PROJECTOR_WAL_WARNING_BYTES="1")
    warning = projector.wait_event("slot retains much WAL", timeout=15)
    assert warning["level"] == "warning" and warning["slot"] == deployment.slot
    assert projector.stop() == 0

    deployment.sql(
        "INSERT INTO pomodoros (user_id) SELECT 'bulk' || (g % 100)"
        " FROM generate_series(1, 20000) g"
    )
    code, report = _status(deployment, PROJECTOR_WAL_WARNING_BYTES="500000")
    retained = report["slot"]["retained_wal_bytes"]
    assert code == 1 and retained > 500_000
    assert any("retains" in p and "500000" in p for p in report["problems"]), report
    code, report = _status(deployment, PROJECTOR_WAL_WARNING_BYTES=str(retained * 10))
    assert not any("retains" in p for p in report["problems"])


def test_busy_database_with_idle_publication_still_moves_the_slot(
    deployment: Deployment,
) -> None:
    """WAL from tables outside the publication is acknowledged, so the slot retains little."""
    _running(deployment)
    deployment.sql("CREATE TABLE noise (id bigint, payload text)")
    for _ in range(5):
        deployment.sql(
            "INSERT INTO noise SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g"
        )
    target = deployment.wait_caught_up(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        row = deployment.slot_row()
        assert row is not None
        if parse_lsn(row["confirmed_flush_lsn"]) >= target:
            break
        assert time.monotonic() < deadline, f"slot stuck at {row['confirmed_flush_lsn']}"
        time.sleep(0.1)
    deployment.assert_matches_postgres()


def test_a_projector_busy_rebuilding_is_reported_alive(deployment: Deployment) -> None:
    """A rebuild outlasting the heartbeat's TTL (here: its slot creation waits for an open
    transaction) still shows the projector alive, so a liveness probe does not kill it."""
    projector = _running(deployment)
    with deployment.pg() as blocker, blocker.transaction():
        # A transaction holding an xid: a new slot becomes consistent only after it ends.
        blocker.execute("INSERT INTO pomodoros (user_id) VALUES ('blocker')")
        with deployment.redis() as client:
            client.set(f"{deployment.prefix}replay:request", "probe-test", ex=600)
        projector.wait_event("rebuild started")
        time.sleep(6.0)  # longer than the heartbeat's 5 s TTL
        code, report = _status(deployment)
        assert report["projector"]["alive"] is True, report
        assert report["projector"]["state"] == "rebuilding"
        assert report["projector"]["pid"] == projector.proc.pid
    projector.wait_event("rebuild finished", after=1)
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    code, report = _status(deployment)
    assert code == 0 and report["projector"]["state"] == "streaming", report
