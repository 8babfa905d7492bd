"""The read API while servers die, hang or lag: fallback, recovery, read-your-writes, 503.

Real servers, really killed (``kill -9``), stopped (SIGSTOP) and restarted; the projector
runs in a thread, or as a process when it must be paused.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from harness import servers
from projector.settings import Settings

from .conftest import unreachable_redis_url
from .support import (
    ApiServer,
    ProjectorThread,
    current_lsn,
    insert_rows,
    serve,
    start_projector,
    wait_caught_up,
)

BOARD = "/v1/leaderboards/day"
TODAY = [("ann", None), ("ann", None), ("ann", None), ("bob", None), ("bob", None), ("cy", None)]


@contextmanager
def projector_thread(settings: Settings) -> Iterator[ProjectorThread]:
    projector = ProjectorThread(settings)
    try:
        yield projector
    finally:
        projector.stop()


def scores(body: dict[str, Any]) -> dict[str, int]:
    return {entry["user_id"]: entry["score"] for entry in body["entries"]}


def poll(
    api: ApiServer,
    path: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 30.0,
    **params: Any,
) -> dict[str, Any]:
    """GET ``path`` until the body satisfies ``until``; return that body."""
    deadline = time.monotonic() + timeout
    while True:
        body = api.json(path, **params)
        if until(body):
            return body
        assert time.monotonic() < deadline, f"no satisfying answer in {timeout} s: {body}"
        time.sleep(0.05)


def timed(api: ApiServer, path: str, **params: Any) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    body = api.json(path, **params)
    return body, time.monotonic() - started


def test_redis_killed_falls_back_then_returns_to_redis(
    settings_for: Callable[..., Settings], redis_server: servers.RedisServer
) -> None:
    """kill -9 Redis: answers come from PostgreSQL at once; Redis back and rebuilt: from Redis."""
    settings = settings_for(api_redis_down_cooldown=0.2)
    insert_rows(settings.pg_dsn, TODAY)
    with projector_thread(settings), serve(settings) as api:
        wait_caught_up(settings)
        before = api.json(BOARD)
        assert before["source"] == "redis" and scores(before) == {"ann": 3, "bob": 2, "cy": 1}

        redis_server.kill9()
        body, elapsed = timed(api, BOARD)
        assert body["source"] == "postgres" and body["entries"] == before["entries"]
        assert elapsed < 2.0
        insert_rows(settings.pg_dsn, [("cy", None), ("cy", None), ("cy", None)])
        body = api.json(BOARD)
        assert body["source"] == "postgres" and scores(body)["cy"] == 4
        ready = api.json("/readyz")
        assert ready["source"] == "postgres" and ready["redis"]["up"] is False

        redis_server.start()  # empty: the projector rebuilds it from PostgreSQL
        body = poll(api, BOARD, lambda b: b["source"] == "redis")
        assert scores(body) == {"ann": 3, "bob": 2, "cy": 4}
        assert [(e["rank"], e["user_id"]) for e in body["entries"]] == [
            (1, "cy"),
            (2, "ann"),
            (3, "bob"),
        ]
        assert api.json("/readyz")["source"] == "redis"
        assert 'reason="redis_down"}' in api.client.get("/metrics").text


def test_hung_redis_is_remembered_instead_of_waited_for(
    settings_for: Callable[..., Settings], redis_server: servers.RedisServer
) -> None:
    """A Redis that stops answering costs one timeout; then requests skip it for the cooldown."""
    settings = settings_for(api_redis_timeout=1.0, api_redis_down_cooldown=30)
    insert_rows(settings.pg_dsn, TODAY)
    with projector_thread(settings):
        wait_caught_up(settings)
    with serve(settings) as api:
        assert api.json(BOARD)["source"] == "redis"
        pid = redis_server.pid()  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGSTOP)
        try:
            body, first = timed(api, BOARD)
            assert body["source"] == "postgres" and 0.9 < first < 3.0
            for _ in range(10):
                body, elapsed = timed(api, BOARD)
                assert body["source"] == "postgres" and elapsed < 0.5  # no 1 s timeout
        finally:
            os.kill(pid, signal.SIGCONT)
        assert "api_redis_up 0.0" in api.client.get("/metrics").text.splitlines()


def test_read_your_writes_with_the_projector_paused(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """With min_lsn past Redis, the API waits briefly, then PostgreSQL answers with the write."""
    settings = settings_for(api_min_lsn_wait=0.5)
    insert_rows(settings.pg_dsn, TODAY)
    projector = start_projector(settings, tmp_path / "projector.log")
    try:
        wait_caught_up(settings)
        with serve(settings) as api:
            assert api.json(BOARD, min_lsn="0/0")["source"] == "redis"
            projector.pause()
            insert_rows(settings.pg_dsn, [("newbie", None)])
            lsn = current_lsn(settings.pg_dsn)

            body, elapsed = timed(api, BOARD, min_lsn=lsn)
            assert body["source"] == "postgres" and scores(body)["newbie"] == 1
            assert 0.45 <= elapsed < 5
            standing = api.json(f"{BOARD}/users/newbie", min_lsn=lsn)
            assert standing["source"] == "postgres" and standing["rank"] == 3  # tied with cy
            user = api.json("/v1/users/newbie", min_lsn=lsn)
            assert user["source"] == "postgres" and user["periods"]["all"]["score"] == 1
            stale = api.json(BOARD)
            assert stale["source"] == "redis" and "newbie" not in scores(stale)

            projector.resume()
            body = poll(api, BOARD, lambda b: b["source"] == "redis", min_lsn=lsn)
            assert scores(body)["newbie"] == 1
    finally:
        projector.stop()


def test_redis_not_built_answers_from_postgres_until_built(
    settings_for: Callable[..., Settings],
) -> None:
    """An empty Redis (no watermark) sends queries to PostgreSQL until the projector built it."""
    settings = settings_for()
    insert_rows(settings.pg_dsn, TODAY)
    with serve(settings) as api:
        body = api.json(BOARD)
        assert body["source"] == "postgres" and scores(body) == {"ann": 3, "bob": 2, "cy": 1}
        ready = api.json("/readyz")
        assert ready["source"] == "postgres" and ready["redis"] == {"up": True, "built": False}
        with projector_thread(settings):
            body = poll(api, BOARD, lambda b: b["source"] == "redis")
        assert scores(body) == {"ann": 3, "bob": 2, "cy": 1}
        assert 'reason="not_built"}' in api.client.get("/metrics").text


def test_postgres_down_while_redis_answers(settings_for: Callable[..., Settings]) -> None:
    """Redis answers without PostgreSQL; only what needs the fallback gets 503."""
    settings = settings_for(retention_day_days=1, api_pg_timeout=0.5)
    long_ago = datetime.now(UTC) - timedelta(days=10)
    insert_rows(settings.pg_dsn, [*TODAY, ("ann", long_ago)])
    with projector_thread(settings):
        wait_caught_up(settings)
    dead_pg = settings.model_copy(update={"pg_dsn": "postgresql://nobody@127.0.0.1:1/none"})
    with serve(dead_pg) as api:
        assert scores(api.json(BOARD)) == {"ann": 3, "bob": 2, "cy": 1}
        assert api.json("/v1/users/ann")["periods"]["all"]["score"] == 4
        ready = api.json("/readyz")
        assert ready["source"] == "redis" and ready["postgres"]["up"] is False
        expired = api.get(BOARD, bucket=long_ago.date().isoformat())
        assert expired.status_code == 503 and expired.json()["error"]["code"] == "unavailable"


def test_expired_bucket_is_answered_by_postgres(settings_for: Callable[..., Settings]) -> None:
    """A bucket past its retention is gone from Redis; PostgreSQL answers it."""
    settings = settings_for(retention_day_days=1)
    long_ago = datetime.now(UTC) - timedelta(days=10)
    insert_rows(settings.pg_dsn, [*TODAY, ("ann", long_ago), ("old", long_ago)])
    with projector_thread(settings):
        wait_caught_up(settings)
    with serve(settings) as api:
        body = api.json(BOARD, bucket=long_ago.date().isoformat())
        assert body["source"] == "postgres" and scores(body) == {"ann": 1, "old": 1}
        assert api.json(BOARD)["source"] == "redis"
        assert api.json(f"{BOARD}/users/old", bucket=long_ago.date().isoformat())["rank"] == 1


def test_fallback_concurrency_is_bounded(settings_for: Callable[..., Settings]) -> None:
    """Many concurrent fallback requests all succeed with at most api_pg_concurrency queries."""
    settings = settings_for(api_pg_concurrency=2, redis_url=unreachable_redis_url())
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT 'u' || (i % 5000), now() FROM generate_series(1, 60000) AS i"
        )
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'pomodoro-api' AND state = 'active'"
                ).fetchone()
                assert row is not None
                seen.append(int(row[0]))
                time.sleep(0.002)

    with serve(settings) as api:
        statuses: list[int] = []

        def fetch(limit: int) -> None:
            # Different limits: identical queries would share one statement.
            statuses.append(api.get(BOARD, limit=limit).status_code)

        sampler = threading.Thread(target=sample)
        sampler.start()
        workers = [threading.Thread(target=fetch, args=(n,)) for n in range(1, 25)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        done.set()
        sampler.join()
    assert statuses == [200] * 24
    assert max(seen) <= 2 and max(seen) >= 1


def test_identical_fallback_queries_share_one_statement(
    settings_for: Callable[..., Settings],
) -> None:
    """Concurrent identical fallback requests are answered by one query, all alike."""
    settings = settings_for(redis_url=unreachable_redis_url())
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT 'u' || (i % 5000), now() FROM generate_series(1, 60000) AS i"
        )
    with serve(settings) as api:
        bodies: list[dict[str, Any]] = []
        threads = [
            threading.Thread(target=lambda: bodies.append(api.json(BOARD))) for _ in range(16)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = api.client.get("/metrics").text
    assert len(bodies) == 16 and all(b["entries"] == bodies[0]["entries"] for b in bodies)
    shared = next(
        line for line in metrics.splitlines() if line.startswith("api_fallbacks_shared_total ")
    )
    assert float(shared.rsplit(" ", 1)[1]) > 0


def test_both_down_is_503_then_postgres_back_answers(
    settings_for: Callable[..., Settings], postgres_server: servers.PostgresServer
) -> None:
    """Redis unreachable and PostgreSQL stopped: 503 JSON, fast; PostgreSQL back: answers."""
    settings = settings_for(
        redis_url=unreachable_redis_url(), api_pg_timeout=1.0, api_redis_down_cooldown=0.2
    )
    insert_rows(settings.pg_dsn, TODAY)
    with serve(settings) as api:
        assert scores(api.json(BOARD)) == {"ann": 3, "bob": 2, "cy": 1}
        postgres_server.stop("fast")
        try:
            started = time.monotonic()
            for _ in range(5):
                response = api.get(BOARD)
                assert response.status_code == 503 and response.headers["retry-after"] == "1"
                assert response.json()["error"]["code"] == "unavailable"
            assert time.monotonic() - started < 5
            assert api.get("/readyz").status_code == 503
        finally:
            postgres_server.start()
        deadline = time.monotonic() + 30
        while (response := api.get(BOARD)).status_code != 200:
            assert time.monotonic() < deadline, "PostgreSQL did not answer again"
            time.sleep(0.1)
        body = response.json()
        assert body["source"] == "postgres" and scores(body) == {"ann": 3, "bob": 2, "cy": 1}
