"""``projector verify``: catches a single wrong score, a missing and an extra member, and does
not report drift that is only writes in flight."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from .support import Deployment, ProjectorProcess, seed, writing


@pytest.fixture
def running(deployment: Deployment) -> ProjectorProcess:
    """A projector streaming into Redis built from 5,000 rows over 60 days (some today)."""
    seed(deployment.pg_dsn, rows=5_000, users=80, days=60)
    deployment.sql(
        "INSERT INTO pomodoros (user_id, completed_at)"
        " SELECT 'today' || (g % 5), now() FROM generate_series(1, 20) g"
    )
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    deployment.wait_caught_up()
    return projector


def _verify(deployment: Deployment, *args: str) -> tuple[int, dict[str, Any]]:
    result = deployment.cli("verify", "--json", *args)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def _board(deployment: Deployment, period: str, days_ago: int = 0) -> str:
    day = (datetime.now(ZoneInfo(deployment.timezone)) - timedelta(days=days_ago)).date()
    if period == "day":
        return f"{deployment.prefix}lb:pomodoros:day:{day.isoformat()}"
    return f"{deployment.prefix}lb:pomodoros:all:all"


def test_verify_in_sync_exits_0(deployment: Deployment, running: ProjectorProcess) -> None:
    """A faithful Redis verifies in sync at 100%, in JSON and as text."""
    code, report = _verify(deployment)
    assert code == 0 and report["in_sync"] is True and report["drift"] == []
    assert report["sync_percent"] == 100.0
    assert report["boards_checked"] >= 9 and report["members_checked"] > 80
    text = deployment.cli("verify")
    assert text.returncode == 0 and text.stdout.startswith("IN SYNC"), text.stdout


def test_verify_finds_a_single_wrong_score(
    deployment: Deployment, running: ProjectorProcess
) -> None:
    """One member's all-time score off by one: exit 1, the board and member are named."""
    key = _board(deployment, "all")
    with deployment.redis() as client:
        member, score = client.zrevrange(key, 0, 0, withscores=True)[0]
        client.zincrby(key, 1, member)
    code, report = _verify(deployment)
    assert code == 1 and report["in_sync"] is False
    assert report["sync_percent"] < 100.0
    [drift] = report["drift"]
    assert drift["key"] == key
    assert drift["wrong_score"] == {
        member.decode(): {"redis": int(score) + 1, "postgres": int(score)}
    }
    assert drift["missing_in_redis"] == {} and drift["extra_in_redis"] == {}
    text = deployment.cli("verify")
    assert text.returncode == 1 and "DRIFT" in text.stdout and member.decode() in text.stdout


def test_verify_finds_missing_and_extra_members(
    deployment: Deployment, running: ProjectorProcess
) -> None:
    """A member removed from today's board and one invented are both reported."""
    key = _board(deployment, "day")
    with deployment.redis() as client:
        member, score = client.zrange(key, 0, 0, withscores=True)[0]
        client.zrem(key, member)
        client.zadd(key, {"intruder": 3})
    code, report = _verify(deployment)
    assert code == 1
    [drift] = report["drift"]
    assert drift["key"] == key
    assert drift["missing_in_redis"] == {member.decode(): int(score)}
    assert drift["extra_in_redis"] == {"intruder": 3}


def test_verify_all_checks_older_boards_in_retention(
    deployment: Deployment, running: ProjectorProcess
) -> None:
    """Drift in a 20-day-old board escapes the default check but not ``--all``."""
    key = _board(deployment, "day", days_ago=20)
    with deployment.redis() as client:
        member = client.zrange(key, 0, 0)[0]
        client.zincrby(key, -1, member)
    code, report = _verify(deployment)
    assert code == 0, report
    code, report = _verify(deployment, "--all")
    assert code == 1
    assert [d["key"] for d in report["drift"]] == [key]
    assert report["boards_checked"] > 36


def test_verify_does_not_cry_wolf_under_concurrent_writes(
    deployment: Deployment, running: ProjectorProcess
) -> None:
    """Five verifies while a writer commits inserts, moves and deletes all report in sync."""
    with writing(deployment.pg_dsn, days=3) as writer:
        writer.wait_commits(20)
        for _ in range(5):
            before = len(writer.commits)
            code, report = _verify(deployment)
            assert code == 0, report["drift"]
            assert len(writer.commits) > before  # writes really overlapped this verify
    running.assert_running()
