"""A migration that breaks one declared board: the API answers that board with 503
``board_unavailable`` from Redis and from the PostgreSQL fallback alike, names it in
``/readyz``, and answers the other boards as usual; labels follow the 64-code-point rule in
both stores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from projector.commands.migrate import migrate
from projector.core.boards import load_boards
from projector.core.limits import clean_label

from .conftest import api_settings, unreachable_redis_url
from .support import ApiServer, ProjectorThread, wait_caught_up

FOCUS = Path(__file__).resolve().parents[3] / "examples" / "focus_minutes.toml"
SQL = FOCUS.with_suffix(".sql")
LONG_NAME = "\u202eAda\x1b[1m" + "a" * 100_000


def _until(what: str, done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def apis(pg_dsn: str, redis_url: str) -> Iterator[tuple[ApiServer, ApiServer, str]]:
    """The example's boards projected by a running projector; the API over Redis and the
    API over PostgreSQL alone."""
    migrate(pg_dsn, "projector")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SQL.read_text())  # type: ignore[arg-type]
        conn.execute("INSERT INTO teams VALUES ('red', 'Red Team')")
        conn.execute("INSERT INTO users VALUES ('ada', %s)", (LONG_NAME,))
        conn.execute(
            "INSERT INTO pomodoros (user_id, team_id, minutes, completed_at)"
            " VALUES ('ada', 'red', 25, %s)",
            (datetime.now(UTC),),
        )
    migrate(pg_dsn, "projector", load_boards(str(FOCUS)))
    settings = api_settings(pg_dsn, redis_url, boards_file=str(FOCUS), heartbeat_interval=0.2)
    projector = ProjectorThread(settings)
    redis_api = postgres_api = None
    try:
        wait_caught_up(settings)
        redis_api = ApiServer(settings)
        postgres_api = ApiServer(settings.model_copy(update={"redis_url": unreachable_redis_url()}))
        yield redis_api, postgres_api, pg_dsn
    finally:
        for api in (redis_api, postgres_api):
            if api is not None:
                api.close()
        projector.stop()


def test_a_broken_board_answers_503_and_the_others_answer(
    apis: tuple[ApiServer, ApiServer, str],
) -> None:
    """After `RENAME COLUMN team_id`, team-focus answers 503 board_unavailable (Redis and
    fallback), /readyz names it, pomodoros still answers; after the fix it answers again."""
    redis_api, postgres_api, dsn = apis
    assert redis_api.json("/v1/boards/team-focus/week")["entries"][0]["member"] == "red"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pomodoros RENAME COLUMN team_id TO squad")
        conn.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('bob', now())")

    def unavailable() -> bool:
        return redis_api.get("/v1/boards/team-focus/week").status_code == 503

    _until("team-focus never became unavailable", unavailable)
    for api in (redis_api, postgres_api):
        answer = api.get("/v1/boards/team-focus/week")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "board_unavailable"
        assert answer.headers["retry-after"]
        assert "squad" not in answer.text  # the schema is the operators' (projector status)
        assert api.get("/v1/boards/team-focus/week/members/red").status_code == 503
        _until(
            "pomodoros did not go on",
            lambda a=api: a.json("/v1/boards/pomodoros/all")["total"] == 2,
        )
    ready = redis_api.get("/readyz")
    assert ready.status_code == 200
    assert "team-focus" in ready.json()["redis"]["unavailable_boards"]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pomodoros RENAME COLUMN squad TO team_id")
    _until("team-focus never came back", lambda: not unavailable())
    body = redis_api.json("/v1/boards/team-focus/week")
    assert body["entries"][0]["member"] == "red" and body["source"] == "redis"
    assert "unavailable_boards" not in redis_api.json("/readyz")["redis"]


def test_a_huge_display_name_is_served_cut_from_both_stores(
    apis: tuple[ApiServer, ApiServer, str],
) -> None:
    """A 100,000-character display name with controls and a bidi override is served as its
    64 cleaned code points from Redis and from PostgreSQL, on pages and standings."""
    redis_api, postgres_api, _ = apis
    want = clean_label(LONG_NAME)
    assert len(want) == 64 and want.startswith("Ada[1m")
    for api in (redis_api, postgres_api):
        page: dict[str, Any] = api.json("/v1/leaderboards/all")
        assert page["entries"][0]["display_name"] == want
        assert len(api.get("/v1/leaderboards/all").content) < 1_000
        assert api.json("/v1/leaderboards/all/users/ada")["display_name"] == want
