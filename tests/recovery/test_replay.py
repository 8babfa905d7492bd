"""``projector replay``: an operator's full rebuild, beside a running projector or without one."""

from __future__ import annotations

from .support import Deployment, lsn_int, seed, writing


def test_replay_during_writes_with_projector_running_ends_exact(deployment: Deployment) -> None:
    """Replay asked of a running projector under writes: progress shown, exit 0, exact boards."""
    seed(deployment.pg_dsn, rows=20_000, users=200, days=60)
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(30)
        before = lsn_int(deployment.watermark()["lsn"])
        result = deployment.cli("replay", timeout=120)
        writer.wait_commits(50)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked the running projector" in result.stderr
    assert "] done" in result.stderr and "boards" in result.stderr  # the progress bar
    assert "rebuilt by the running projector" in result.stdout
    projector.wait_event("replay requested by operator")
    rebuilt = projector.wait_event("rebuild finished", after=1)
    assert lsn_int(rebuilt["watermark"]) > before
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    projector.assert_running()
    with deployment.redis() as client:
        assert client.get(f"{deployment.prefix}replay:request") is None


def test_replay_without_projector_rebuilds_in_process(deployment: Deployment) -> None:
    """With no projector running, replay rebuilds itself; a later run streams on from there."""
    seed(deployment.pg_dsn, rows=20_000, users=200, days=60)
    result = deployment.cli("replay", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no projector is running: rebuilding here" in result.stderr
    assert "rows" in result.stderr and "done" in result.stderr
    assert "rebuilt at" in result.stdout
    deployment.assert_matches_postgres()
    replayed_at = deployment.watermark()["lsn"]
    row = deployment.slot_row()
    assert row is not None and row["active"] is False

    with writing(deployment.pg_dsn) as writer:  # changes made before the projector returns
        writer.wait_commits(50)
    projector = deployment.start()
    projector.wait_event("streaming")
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    assert projector.count("rebuild started") == 0, "the replayed state should be streamed on"
    assert lsn_int(deployment.watermark()["lsn"]) > lsn_int(replayed_at)
