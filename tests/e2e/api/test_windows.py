"""Rolling windows through the read API: today's window from Redis equals the PostgreSQL
fallback (board, member and group routes); a past window, or one Redis does not hold (before
the projector moved its windows at midnight), is answered from PostgreSQL, never from the
window key of another day."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis

from projector.settings import Settings

from .conftest import unreachable_redis_url
from .support import ApiServer, ProjectorThread, wait_caught_up

BOARDS = """
[[boards]]
name = "recent"
table = "public.pomodoros"
member = "user_id"
time = "completed_at"
periods = ["day", "all", "last7", "last30"]
"""


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    """What a body says about the board (not which store answered, nor when)."""
    return {k: v for k, v in body.items() if k not in ("source", "as_of")}


def test_windows_from_redis_equal_the_fallback_and_other_days_come_from_postgres(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """Redis answers the window it holds exactly as PostgreSQL does; any other window day
    is PostgreSQL's answer."""
    boards = tmp_path / "boards.toml"
    boards.write_text(BOARDS)
    settings = settings_for(boards_file=str(boards))
    now = datetime.now(UTC)
    today = now.date()
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        rows = []
        for user, back in [("a", 0), ("a", 6), ("b", 7), ("b", 29), ("c", 30), ("c", 1)]:
            rows += [(user, now - timedelta(days=back, minutes=1))] * (1 + back % 3)
        conn.cursor().executemany(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)", rows
        )
    projector = ProjectorThread(settings)
    try:
        wait_caught_up(settings)
        deadline = time.monotonic() + 20
        with redis.Redis.from_url(settings.redis_url) as client:
            while client.hget("pomo:watermark", "window_day") != today.isoformat().encode():
                assert time.monotonic() < deadline, "the windows were never built"
                time.sleep(0.02)
    finally:
        projector.stop()
    if datetime.now(UTC).date() != today:
        return  # midnight passed during the test: today's window is another one now
    from_redis, fallback = (
        ApiServer(settings),
        ApiServer(settings.model_copy(update={"redis_url": unreachable_redis_url()})),
    )
    try:
        for period in ("last7", "last30"):
            base = f"/v1/boards/recent/{period}"
            got, want = from_redis.json(base), fallback.json(base)
            assert (got["source"], want["source"]) == ("redis", "postgres")
            assert got["bucket"] == today.isoformat() == want["bucket"]
            assert got["entries"] == want["entries"] and got["entries"]
            assert got["period_start"] == want["period_start"]
            first = today - timedelta(days=6 if period == "last7" else 29)
            assert got["period_start"] == f"{first.isoformat()}T00:00:00+00:00"
            for user in ("a", "b", "c"):
                mine = from_redis.json(f"{base}/members/{user}")
                assert mine["source"] == "redis"
                assert _answer(mine) == _answer(fallback.json(f"{base}/members/{user}"))
            group = from_redis.json(f"{base}/group", members="a,b,c")
            assert group["source"] == "redis"
            assert _answer(group) == _answer(fallback.json(f"{base}/group", members="a,b,c"))
            # last7 holds a (0 and 6 days back) but not b (7 back); last30 b (29) not c (30).
            scores = {e["member"]: e["score"] for e in got["entries"]}
            assert scores == ({"a": 2, "c": 2} if period == "last7" else {"a": 2, "b": 5, "c": 2})

            yesterday = (today - timedelta(days=1)).isoformat()
            past = from_redis.json(base, bucket=yesterday)
            assert past["source"] == "postgres"
            assert past["entries"] == fallback.json(base, bucket=yesterday)["entries"]

        # Before the projector moves its windows at midnight Redis holds yesterday's: today's
        # window then comes from PostgreSQL, not from a key of another day.
        with redis.Redis.from_url(settings.redis_url) as client:
            client.hset("pomo:watermark", "window_day", (today - timedelta(days=1)).isoformat())
        behind = from_redis.json("/v1/boards/recent/last7")
        assert behind["source"] == "postgres"
        assert behind["entries"] == fallback.json("/v1/boards/recent/last7")["entries"]
        assert from_redis.json("/v1/boards/recent/day")["source"] == "redis"
    finally:
        from_redis.close()
        fallback.close()
