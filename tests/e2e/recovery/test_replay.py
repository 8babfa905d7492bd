"""``projector replay``: an operator's full rebuild, beside a running projector or without one."""

from __future__ import annotations

import subprocess
import sys

from projector.core.lsn import parse_lsn

from .support import Deployment, seed, writing


def test_replay_during_writes_with_projector_running_ends_exact(deployment: Deployment) -> None:
    """Replay asked of a running projector under writes: progress shown, exit 0, exact boards."""
    seed(deployment.pg_dsn, rows=20_000, users=200, days=60)
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(30)
        before = parse_lsn(deployment.watermark()["lsn"])
        result = deployment.cli("replay", timeout=120)
        writer.wait_commits(50)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked the running projector" in result.stderr
    assert "] done" in result.stderr and "boards" in result.stderr  # the progress bar
    assert "rebuilt by the running projector" in result.stdout
    projector.wait_event("replay requested by operator")
    rebuilt = projector.wait_event("rebuild finished", after=1)
    assert parse_lsn(rebuilt["watermark"]) > before
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    projector.assert_running()
    with deployment.redis() as client:
        assert client.get(f"{deployment.prefix}replay:request") is None


def test_two_replays_at_once_both_end_when_the_boards_are_rebuilt(
    deployment: Deployment,
) -> None:
    """A second replay that replaces the first's request before the projector took it: the
    first follows the later request (its rebuild starts after both were made); both exit 0."""
    seed(deployment.pg_dsn, rows=20_000, users=200, days=60)
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    replays = [
        subprocess.Popen(
            [sys.executable, "-m", "projector", "replay"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=deployment.env(),
        )
        for _ in range(2)
    ]
    outputs = [replay.communicate(timeout=120) for replay in replays]
    for replay, (out, err) in zip(replays, outputs, strict=True):
        assert replay.returncode == 0, out + err
        assert "rebuilt by the running projector" in out
    errors = "".join(err for _, err in outputs)
    rebuilds = projector.count("replay requested by operator")
    # Either the projector took both requests in turn, or one replaced the other first.
    assert rebuilds == 2 or "replaces this one; following it" in errors, (rebuilds, errors)
    deployment.wait_caught_up()
    deployment.assert_matches_postgres()
    projector.assert_running()


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
    assert parse_lsn(deployment.watermark()["lsn"]) > parse_lsn(replayed_at)
