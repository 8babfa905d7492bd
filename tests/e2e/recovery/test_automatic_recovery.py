"""Automatic recovery: whenever Redis and the slot disagree, the projector rebuilds by itself,
says why in a warning, and ends equal to a recomputation from PostgreSQL."""

from __future__ import annotations

import json
import time
from typing import Any

from harness import servers
from projector.core.lsn import parse_lsn

from .support import (
    Deployment,
    ProjectorProcess,
    event_time,
    redis_boards,
    redis_writes_paused,
    seed,
    writing,
)

REBUILDING = "rebuilding Redis from PostgreSQL"


def _started(deployment: Deployment, rows: int = 5_000) -> ProjectorProcess:
    seed(deployment.pg_dsn, rows=rows, users=100, days=60)
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    # The rebuild's swap catches up by itself: the faults are meant for a streaming session.
    projector.wait_event("streaming")
    deployment.wait_caught_up()
    return projector


def _warning(projector: ProjectorProcess, after: int = 0, timeout: float = 60) -> dict[str, Any]:
    event = projector.wait_event(REBUILDING, after=after, timeout=timeout)
    assert event["level"] == "warning"
    return event


def test_flushall_while_writes_continue_is_repaired_without_operator(
    deployment: Deployment,
) -> None:
    """FLUSHALL under a write load: a warning names the lost watermark and Redis is rebuilt."""
    projector = _started(deployment)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
        with deployment.redis() as client:
            client.flushall()
        warning = _warning(projector, after=1)
        projector.wait_event("rebuild finished", after=1)
        writer.wait_commits(100)
    assert "watermark" in warning["reason"]
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    projector.assert_running()


def test_flushall_of_an_idle_database_is_repaired_without_operator(
    deployment: Deployment,
) -> None:
    """FLUSHALL while nothing is written: the projector notices within seconds and rebuilds."""
    projector = _started(deployment)
    with deployment.redis() as client:
        client.flushall()
    # No WAL need come to reveal the loss: the heartbeat checks the watermark too.
    warning = _warning(projector, after=1, timeout=5)
    assert "watermark" in warning["reason"]
    projector.wait_event("rebuild finished", after=1)
    deployment.assert_matches_postgres()


def test_redis_restarted_empty_is_rebuilt(
    deployment: Deployment, redis_server: servers.RedisServer
) -> None:
    """Redis restarted without persistence on the same port under writes: rebuilt, exact."""
    projector = _started(deployment)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
        redis_server.restart()
        warning = _warning(projector, after=1)
        projector.wait_event("rebuild finished", after=1)
        writer.wait_commits(100)
    assert "watermark" in warning["reason"]
    assert any(e["event"] == "connection lost; retrying" for e in projector.events())
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    projector.assert_running()


def test_slot_dropped_while_stopped_is_rebuilt_on_start(deployment: Deployment) -> None:
    """Without its slot the projector rebuilds on start, naming the slot; changes made while
    it was away are all counted."""
    projector = _started(deployment)
    assert projector.stop() == 0
    deployment.drop_slot()
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(100)
    projector = deployment.start()
    warning = _warning(projector)
    assert deployment.slot in warning["reason"] and "does not exist" in warning["reason"]
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()


def _invalidate_slot(deployment: Deployment) -> None:
    """Write WAL past max_slot_wal_keep_size and checkpoint until the slot is lost."""
    with deployment.pg() as conn:
        for _ in range(20):
            row = deployment.slot_row()
            assert row is not None
            if row["wal_status"] == "lost":
                return
            for _ in range(3):
                conn.execute(
                    "INSERT INTO pomodoros (user_id, completed_at)"
                    " SELECT 'filler' || (g % 7), now() FROM generate_series(1, 200) g"
                )
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    raise AssertionError(f"slot never became lost: {deployment.slot_row()}")


def test_slot_invalidated_for_real_is_reported_then_rebuilt(
    deployment: Deployment, postgres_server: servers.PostgresServer
) -> None:
    """A slot lost to max_slot_wal_keep_size: status exits 1 naming it, run rebuilds exactly."""
    projector = _started(deployment)
    assert projector.stop() == 0
    postgres_server.set_config(max_slot_wal_keep_size="1MB")
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
    _invalidate_slot(deployment)

    status = deployment.cli("status", "--json")
    assert status.returncode == 1, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["slot"]["exists"] is True
    assert report["slot"]["wal_status"] == "lost"
    assert any("invalidated" in p and deployment.slot in p for p in report["problems"])

    projector = deployment.start()
    warning = _warning(projector)
    assert deployment.slot in warning["reason"] and "lost" in warning["reason"]
    projector.wait_event("rebuild finished")
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    row = deployment.slot_row()
    assert row is not None and row["wal_status"] != "lost"


def test_other_cluster_in_watermark_is_rebuilt_on_start(deployment: Deployment) -> None:
    """A watermark naming another system identifier (restore, upgrade) makes a rebuild."""
    projector = _started(deployment)
    assert projector.stop() == 0
    real = deployment.watermark()["system_id"]
    with deployment.redis() as client:
        client.hset(deployment.watermark_key, "system_id", "1234567890123456789")
        # Stale boards from "the other cluster" must not survive the rebuild.
        client.zincrby(f"{deployment.prefix}lb:pomodoros:all:all", 5, "ghost")
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(30)
    status = deployment.cli("status", "--json")
    assert status.returncode == 1
    problems = json.loads(status.stdout)["problems"]
    # The same diagnosis as the projector's, below.
    assert any("different cluster" in p and "1234567890123456789" in p for p in problems), problems
    projector = deployment.start()
    warning = _warning(projector)
    assert "different cluster" in warning["reason"] and "1234567890123456789" in warning["reason"]
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    assert deployment.watermark()["system_id"] == real


def test_watermark_behind_the_slot_is_rebuilt_on_start(deployment: Deployment) -> None:
    """Redis restored from an older copy (watermark behind confirmed_flush_lsn) is rebuilt."""
    projector = _started(deployment)
    with deployment.redis() as client:
        stale = client.dump(f"{deployment.prefix}lb:pomodoros:all:all")
        stale_watermark = client.dump(deployment.watermark_key)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
    deployment.wait_caught_up()
    assert projector.stop() == 0
    with deployment.redis() as client:  # "failover to a lagging replica"
        client.restore(f"{deployment.prefix}lb:pomodoros:all:all", 0, stale, replace=True)
        client.restore(deployment.watermark_key, 0, stale_watermark, replace=True)
    row = deployment.slot_row()
    assert row is not None
    assert parse_lsn(deployment.watermark()["lsn"]) < parse_lsn(row["confirmed_flush_lsn"])
    projector = deployment.start()
    warning = _warning(projector)
    assert "behind" in warning["reason"]
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()


_DROP_ALL_BUT_LIVE = """
for _, key in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do
    if not (key:sub(-9) == 'projector' or key:sub(-5) == 'owner') then
        redis.call('DEL', key)
    end
end
"""


def _rolled_back(deployment: Deployment, *, owner: str | None = None) -> ProjectorProcess:
    """A running projector, then an older copy of the boards and watermark restored under
    writes, as a failover to a lagging replica does (with ``owner``: the fencing token of an
    earlier session too); returns the projector once writes went on after the rollback."""
    projector = _started(deployment)
    with deployment.redis() as client:
        keys = list(client.scan_iter(match=f"{deployment.prefix}*"))
        # The heartbeat and fencing token as they are now (the token may still be the
        # bootstrap's: the streaming session claims Redis a moment after the rebuild).
        live = (b"projector", b"owner")
        stale = {key: client.dump(key) for key in keys if not key.endswith(live)}
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
        with deployment.redis() as client, client.pipeline(transaction=True) as pipe:
            # The replica never saw keys made after the copy (such as the first board of a
            # day that began in between): they go too, in the same transaction.
            pipe.eval(_DROP_ALL_BUT_LIVE, 0, deployment.prefix)
            for key, value in stale.items():
                pipe.restore(key, 0, value, replace=True)
            if owner is not None:
                pipe.set(f"{deployment.prefix}owner", owner)
            pipe.execute()
        projector.wait_event("connection lost; retrying" if owner else REBUILDING, after=0)
        writer.wait_commits(50)
    return projector


def test_redis_rolled_back_under_a_running_projector_is_rebuilt(deployment: Deployment) -> None:
    """An older copy of the boards and watermark restored while streaming under writes
    (failover to a lagging replica) is detected and replaced by an exact rebuild."""
    projector = _rolled_back(deployment)
    assert "watermark moved" in _warning(projector, after=1)["reason"]
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()


def test_a_rollback_of_the_fencing_token_too_ends_exact(deployment: Deployment) -> None:
    """With the older fencing token restored as well, the running projector's next write is
    refused as fenced: it lets go of the slot, takes it again, claims Redis anew and checks
    the restored watermark like any start (resume if the slot is not past it, else
    rebuild). Either way every board ends exact."""
    projector = _rolled_back(deployment, owner="vm:1:an-earlier-session")
    lost = [e for e in projector.events() if e.get("event") == "connection lost; retrying"]
    assert any("took the slot over" in str(e.get("error")) for e in lost), lost
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()


def test_projector_killed_mid_rebuild_recovers_exactly(deployment: Deployment) -> None:
    """kill -9 in the middle of a rebuild (new slot made, nothing swapped): readers keep the
    old boards; the next start sees the slot ahead of the watermark, rebuilds, and clears
    the crashed build's keys."""
    projector = _started(deployment)
    old = deployment.assert_matches_postgres()
    old_watermark = deployment.watermark()
    assert projector.stop() == 0
    deployment.drop_slot()
    deployment.sql(
        "INSERT INTO pomodoros (user_id) SELECT 'late' || g FROM generate_series(1, 9) g"
    )

    with redis_writes_paused(deployment.redis_url):  # the rebuild stops after its new slot
        projector = deployment.start()
        projector.wait_event("slot created")
        projector.kill9()
    prefix = deployment.prefix
    with deployment.redis() as client:
        assert redis_boards(client, prefix) == old
        # What a crash during loading leaves behind (they expire, but must not linger).
        client.zadd(f"{prefix}rebuild:0123456789ab:lb:pomodoros:all:all", {"ghost": 99})
        client.set(f"{prefix}rebuild:0123456789ab:started", "1", ex=3600)
    assert deployment.watermark() == old_watermark
    assert projector.count("rebuild finished") == 0

    projector = deployment.start()
    warning = _warning(projector)
    assert "behind" in warning["reason"]
    projector.wait_event("rebuild finished")
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()  # also: no build key left


def test_redis_flushed_in_the_middle_of_a_rebuild_is_not_swapped_in_partial(
    deployment: Deployment,
) -> None:
    """FLUSHALL while a rebuild is loading: the half-lost build is not published as a full
    state with a watermark; the projector rebuilds again and ends exact."""
    seed(deployment.pg_dsn, rows=150_000, users=600, days=40)
    projector = deployment.start()
    with deployment.redis() as client:
        deadline = time.monotonic() + 30
        while not list(client.scan_iter(match=f"{deployment.prefix}rebuild:*:lb:*")):
            assert time.monotonic() < deadline, "the rebuild wrote no build key"
            time.sleep(0.002)
        client.flushall()
    flushed_at = time.time()
    finished = projector.wait_event("rebuild finished")
    assert event_time(finished) > flushed_at, "flushed too late: the build was complete"
    warning = _warning(projector, after=1)
    assert "lost keys of the rebuild" in warning["reason"]
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
