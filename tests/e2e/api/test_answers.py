"""Kept answers against the real projector and Redis: each write drops them, ``min_lsn`` never
gets one older than itself, and a flushed Redis serves none of them as a Redis answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from projector.core.lsn import parse_lsn
from projector.settings import Settings

from .support import ApiServer, ProjectorThread, current_lsn, insert_rows, serve, wait_caught_up

ROUTES = (
    "/v1/leaderboards/day",
    "/v1/boards/pomodoros/day",
    "/v1/leaderboards/day/users/bob",
    "/v1/boards/pomodoros/day/members/bob",
)


def bob(body: dict[str, Any]) -> int:
    """Bob's score in a page or a standing."""
    if "entries" in body:
        return next(
            e["score"] for e in body["entries"] if e.get("user_id", e.get("member")) == "bob"
        )
    return int(body["score"])


def hits(api: ApiServer) -> int:
    running = api.app._running
    assert running is not None
    return running.answers.hits


def test_kept_answers_follow_every_write_and_min_lsn(
    settings_for: Callable[..., Settings],
) -> None:
    """Board pages and standings are served again until the projector writes; after a commit,
    ``min_lsn`` always sees it; a flushed Redis gives PostgreSQL answers, not kept ones."""
    settings = settings_for()
    dsn = settings.pg_dsn
    insert_rows(dsn, [("ann", None), ("ann", None), ("bob", None)])
    with serve(settings) as api:
        projector = ProjectorThread(settings)
        try:
            wait_caught_up(settings)
            for path in ROUTES:
                assert bob(api.json(path)) == 1
            before = hits(api)
            for path in ROUTES:
                body = api.json(path)
                assert bob(body) == 1 and body["source"] == "redis"
            assert hits(api) - before == len(ROUTES)

            for score in (2, 3):
                insert_rows(dsn, [("bob", None)])
                lsn = current_lsn(dsn)
                for path in ROUTES:  # at once, before the projector may have applied it
                    body = api.json(path, min_lsn=lsn)
                    assert bob(body) == score, (path, body)
                    assert parse_lsn(body["as_of"]["lsn"]) >= parse_lsn(lsn)
            insert_rows(dsn, [("bob", None)])
            wait_caught_up(settings)
            for path in ROUTES:  # without min_lsn: the write dropped what was kept
                body = api.json(path)
                assert bob(body) == 4 and body["source"] == "redis", (path, body)
                assert bob(api.json(path)) == 4
        finally:
            projector.stop()

        with redis.Redis.from_url(settings.redis_url) as client:
            client.flushall()
        for path in ROUTES:
            body = api.json(path)
            assert body["source"] == "postgres" and bob(body) == 4, (path, body)
