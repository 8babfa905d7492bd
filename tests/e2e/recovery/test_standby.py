"""Hot standby: several `projector run` processes against one slot, exactly one streaming.

The others stand by; when the active one dies (kill -9), pauses (SIGSTOP) or is cut off
from PostgreSQL longer than PROJECTOR_TAKEOVER_TIMEOUT, a standby takes over within 10 s,
measured from the fault to the next commit being visible in Redis. A former driver that
wakes up never writes: every board still equals its SQL recomputation.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from harness.tcp_proxy import TcpProxy
from projector.standby import LOCK_CLASS

from .support import DEFAULT_BOARD, Deployment, ProjectorProcess, seed, writing

pytestmark = pytest.mark.timeout(150)

# Fast detection for the tests; the default (5 s) is measured by bench/bench_ha.py.
TAKEOVER = "2"
# The bound on takeover, measured from the fault to the next visible commit.
TAKEOVER_LIMIT = 10.0


@pytest.fixture
def pg_proxy(deployment: Deployment) -> Iterator[TcpProxy]:
    """A TCP forwarder to the deployment's PostgreSQL that can be stalled (a partition that
    leaves every connection open)."""
    params = conninfo_to_dict(deployment.pg_dsn)
    proxy = TcpProxy(str(params.get("host", "127.0.0.1")), int(params["port"]), "postgres")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


def _through(dsn: str, proxy: TcpProxy) -> str:
    params = conninfo_to_dict(dsn)
    params.update(host="127.0.0.1", port=str(proxy.port))
    return make_conninfo(**params)  # type: ignore[arg-type]


def _pair(deployment: Deployment, **first_env: str) -> tuple[ProjectorProcess, ProjectorProcess]:
    """An active projector (streaming) and a second one standing by beside it."""
    active = deployment.start("active.log", PROJECTOR_TAKEOVER_TIMEOUT=TAKEOVER, **first_env)
    active.wait_event("streaming")
    standby = deployment.start("standby.log", PROJECTOR_TAKEOVER_TIMEOUT=TAKEOVER)
    standby.wait_event("standby")
    return active, standby


def _status(deployment: Deployment) -> dict[str, object]:
    done = deployment.cli("status", "--json")
    report: dict[str, object] = json.loads(done.stdout)
    return report


def _commit_probe(deployment: Deployment, user: str) -> None:
    deployment.sql("INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, now())", (user,))


def _visible(deployment: Deployment, user: str, timeout: float) -> float:
    """Seconds until ``user`` shows on the all-time board (AssertionError after timeout)."""
    key = f"{deployment.prefix}lb:{DEFAULT_BOARD}:all:all"
    began = time.monotonic()
    with deployment.redis() as client:
        while client.zscore(key, user) is None:
            elapsed = time.monotonic() - began
            assert elapsed < timeout, f"{user} not visible after {timeout}s:\n" + "\n".join(
                p.log_text()[-3000:] for p in deployment.processes
            )
            time.sleep(0.01)
    return time.monotonic() - began


def _takeover_after(deployment: Deployment, fault_at: float) -> float:
    """Commit a probe after the fault; seconds from the fault until it is visible."""
    _commit_probe(deployment, "probe-after-fault")
    _visible(deployment, "probe-after-fault", timeout=TAKEOVER_LIMIT * 3)
    return time.monotonic() - fault_at


def _finish(deployment: Deployment) -> None:
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()


def test_a_standby_takes_over_within_ten_seconds_of_a_kill9(deployment: Deployment) -> None:
    active, standby = _pair(deployment)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(30)
        fault_at = time.monotonic()
        active.kill9()
        took = _takeover_after(deployment, fault_at)
        writer.wait_commits(30)
    assert took < TAKEOVER_LIMIT, f"takeover took {took:.1f}s"
    standby.wait_event("active", after=0)
    standby.wait_event("streaming")
    _finish(deployment)
    # The takeover resumed from the watermark: no rebuild beyond the bootstrap.
    assert standby.count("rebuilding Redis from PostgreSQL") == 0


def test_a_paused_active_process_never_writes_after_a_standby_took_over(
    deployment: Deployment,
) -> None:
    """SIGSTOP the active one with changes in flight; the standby takes over (its lock
    session ended by PostgreSQL); SIGCONT: the old one finds itself fenced, writes nothing,
    and stands by."""
    active, standby = _pair(deployment)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(30)
        fault_at = time.monotonic()
        active.proc.send_signal(signal.SIGSTOP)
        try:
            took = _takeover_after(deployment, fault_at)
            standby.wait_event("streaming")
            writer.wait_commits(50)  # the new driver moves the watermark on
        finally:
            active.proc.send_signal(signal.SIGCONT)
        # The old driver wakes with frames it read before the pause still to apply.
        active.wait_event("standby", timeout=30)
        writer.wait_commits(30)
    assert took < TAKEOVER_LIMIT, f"takeover took {took:.1f}s"
    lost = [e for e in active.events() if e.get("event") == "connection lost; retrying"]
    assert lost, active.log_text()[-3000:]
    assert any(
        "took the slot over" in str(e.get("error")) or "lost the slot's lock" in str(e.get("error"))
        for e in lost
    ), lost
    # Fenced, it stood by: it did not take the new driver's progress for lost data.
    assert active.count("rebuilding Redis from PostgreSQL") == 1  # the bootstrap only
    assert standby.proc.poll() is None
    _finish(deployment)  # a write by the old driver would double-count here
    assert _status(deployment)["projector"]["pid"] == standby.proc.pid  # type: ignore[index]


def test_a_standby_takes_over_from_a_process_cut_off_from_postgres(
    deployment: Deployment, pg_proxy: TcpProxy
) -> None:
    """A partition that leaves the old driver's connections open: PostgreSQL ends its idle
    lock session after the takeover timeout, and the standby takes the slot over."""
    active, standby = _pair(deployment, PROJECTOR_PG_DSN=_through(deployment.pg_dsn, pg_proxy))
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(30)
        fault_at = time.monotonic()
        pg_proxy.stall()
        try:
            took = _takeover_after(deployment, fault_at)
            standby.wait_event("streaming")
            writer.wait_commits(30)
        finally:
            pg_proxy.resume()
        active.wait_event("standby", timeout=60)
    assert took < TAKEOVER_LIMIT, f"takeover took {took:.1f}s"
    _finish(deployment)


def test_processes_started_together_pick_one_driver_and_status_names_them(
    deployment: Deployment,
) -> None:
    """Three processes started at once: one drives the slot, the others stand by, and
    `status` names the active one (heartbeat pid and fencing token) and the standbys."""
    started = [
        deployment.start(f"p{index}.log", PROJECTOR_TAKEOVER_TIMEOUT=TAKEOVER) for index in range(3)
    ]
    pids = {process.proc.pid for process in started}
    deadline = time.monotonic() + 30
    while True:
        report = _status(deployment)
        projector, standbys = report["projector"], report["standbys"]
        assert isinstance(projector, dict) and isinstance(standbys, list)
        if projector.get("state") == "streaming" and len(standbys) == 2:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    assert projector["pid"] in pids and projector["owner"]
    standing = {int(name.rsplit(":", 1)[1]) for name in standbys}
    assert standing == pids - {projector["pid"]}
    for process in started:
        streams = process.count("streaming") > 0
        assert streams == (process.proc.pid == projector["pid"]), process.log_text()[-2000:]
    slot = deployment.slot_row()
    assert slot is not None and slot["active"]
    text = deployment.cli("status").stdout
    assert all(name in text for name in standbys), text
    with psycopg.connect(deployment.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('x', now())")
    _finish(deployment)


def _lock_holders(deployment: Deployment) -> list[int]:
    """Backends holding the slot's advisory lock (its first key is LOCK_CLASS)."""
    rows = deployment.sql(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid"
        " AND objsubid = 2 AND granted",
        (LOCK_CLASS,),
    )
    return [int(row[0]) for row in rows]


def test_the_active_holds_the_lock_from_its_rebuilds_into_its_sessions(
    deployment: Deployment,
) -> None:
    """The session that finds Redis empty, the rebuild it asks for, the session after it,
    and a replay's rebuild all run under one lock session: there is no moment in which a
    standby or `projector replay` could take the slot (a replay then always goes through
    the running projector)."""
    seed(deployment.pg_dsn, rows=20_000, users=200, days=60)
    projector = deployment.start(PROJECTOR_TAKEOVER_TIMEOUT=TAKEOVER)
    deadline = time.monotonic() + 30
    while not (holders := _lock_holders(deployment)):
        projector.assert_running()
        assert time.monotonic() < deadline, "the projector never took the slot's lock"
        time.sleep(0.005)
    first = holders
    projector.wait_event("streaming")
    assert projector.count("rebuilding Redis from PostgreSQL") == 1
    assert _lock_holders(deployment) == first
    replay = deployment.cli("replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "rebuilt by the running projector" in replay.stdout
    projector.wait_event("streaming", after=1)
    assert _lock_holders(deployment) == first
    deployment.assert_matches_postgres()
