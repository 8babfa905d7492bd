"""The read API over declared boards (examples/focus_minutes.toml) against real servers:
``/v1/boards``, each board's page, member and events routes from Redis and from the
PostgreSQL fallback alike, the default board's historical routes as aliases, and errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from projector.commands.migrate import migrate
from projector.core.boards import load_boards
from projector.core.buckets import Period, current_bucket

from .conftest import api_settings, unreachable_redis_url
from .support import ApiServer, ProjectorThread, current_lsn, wait_caught_up, without_source

FOCUS = Path(__file__).resolve().parents[3] / "examples" / "focus_minutes.toml"
SQL = FOCUS.with_suffix(".sql")
NOW = datetime.now(UTC)
# (user, team, minutes, days ago)
ROWS = [
    ("ada", "red", 25, 0),
    ("ada", "red", 50, 0),
    ("bob", "red", 25, 0),
    ("bob", "blue", 10, 0),
    ("cy", "blue", 25, 0),
    ("cy", None, 25, 0),
    ("dee", "green", 0, 0),
    ("ada", "green", 25, 40),
]
TEAMS = {"red": "Red Team", "blue": "Blue Team", "green": "Green Team"}


@dataclass
class Served:
    dsn: str
    redis_api: ApiServer
    postgres_api: ApiServer


@pytest.fixture(scope="module")
def served(postgres_server: Any, redis_server: Any) -> Iterator[Served]:
    """The example's schema and rows, projected by a running projector; the API over Redis
    and the API over PostgreSQL alone."""
    from harness import servers

    postgres_server.start()
    redis_server.start()
    name = servers.unique_database_name("declared_api")
    dsn = postgres_server.create_database(name)
    try:
        migrate(dsn, "projector")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL.read_text())  # type: ignore[arg-type]
            conn.cursor().executemany("INSERT INTO teams VALUES (%s, %s)", list(TEAMS.items()))
            conn.execute("INSERT INTO users VALUES ('ada', 'Ada Lovelace')")
            conn.cursor().executemany(
                "INSERT INTO pomodoros (user_id, team_id, minutes, completed_at)"
                " VALUES (%s, %s, %s, %s)",
                [(u, t, m, NOW - timedelta(days=d)) for u, t, m, d in ROWS],
            )
        migrate(dsn, "projector", load_boards(str(FOCUS)))
        settings = api_settings(
            dsn, redis_server.url(), boards_file=str(FOCUS), key_prefix="declared:"
        )
        projector = ProjectorThread(settings)
        redis_api = postgres_api = None
        try:
            wait_caught_up(settings)
            redis_api = ApiServer(settings)
            postgres_api = ApiServer(
                settings.model_copy(update={"redis_url": unreachable_redis_url()})
            )
            yield Served(dsn, redis_api, postgres_api)
        finally:
            for api in (redis_api, postgres_api):
                if api is not None:
                    api.close()
            projector.stop()
    finally:
        postgres_server.drop_database(name)


def _week() -> str:
    return current_bucket(Period.WEEK, ZoneInfo("UTC"), datetime.now(UTC))


def test_boards_lists_the_declared_boards_default_first(served: Served) -> None:
    """GET /v1/boards names each board, its periods, score and labels; the first is default."""
    body = served.redis_api.json("/v1/boards")
    assert [(b["name"], b["default"], b["score"], b["periods"]) for b in body["boards"]] == [
        ("pomodoros", True, "count", ["day", "week", "month", "year", "all"]),
        ("team-focus", False, "sum", ["week"]),
        ("focus-minutes", False, "sum", ["month"]),
        ("team-long", False, "count", ["week", "all"]),
    ]


@pytest.mark.parametrize("api", ["redis_api", "postgres_api"])
def test_a_sum_board_ranks_members_by_their_sum_with_labels(served: Served, api: str) -> None:
    """team-focus: minutes per team this week, competition ranks, team names as labels; a
    team whose minutes sum to 0, and rows without a team, are not listed."""
    body = getattr(served, api).json("/v1/boards/team-focus/week")
    assert body["board"] == "team-focus" and body["bucket"] == _week()
    assert body["entries"] == [
        {"rank": 1, "member": "red", "label": "Red Team", "score": 100},
        {"rank": 2, "member": "blue", "label": "Blue Team", "score": 35},
    ]
    assert body["total"] == 2
    assert body["source"] == ("redis" if api == "redis_api" else "postgres")


@pytest.mark.parametrize("api", ["redis_api", "postgres_api"])
def test_a_filtered_board_counts_only_the_rows_that_qualify(served: Served, api: str) -> None:
    """team-long (minutes >= 25 and team_id is not null), from Redis and from the PostgreSQL
    fallback alike: cy's team-less, bob's 10-minute and dee's 0-minute pomodoros do not count."""
    body = getattr(served, api).json("/v1/boards/team-long/all")
    assert [(e["member"], e["score"]) for e in body["entries"]] == [
        ("ada", 3),
        ("bob", 1),
        ("cy", 1),
    ]
    week = getattr(served, api).json("/v1/boards/team-long/week")
    assert [(e["member"], e["score"]) for e in week["entries"]] == [
        ("ada", 2),
        ("bob", 1),
        ("cy", 1),
    ]


def test_both_stores_answer_every_board_route_alike(served: Served) -> None:
    """Redis and the PostgreSQL fallback give the same JSON for each board's routes."""
    month = current_bucket(Period.MONTH, ZoneInfo("UTC"), datetime.now(UTC))
    for path, params in [
        ("/v1/boards/pomodoros/day", {}),
        ("/v1/boards/pomodoros/all", {"limit": 2, "offset": 1}),
        ("/v1/boards/focus-minutes/month", {"bucket": month}),
        ("/v1/boards/focus-minutes/month/members/bob", {"around": 1}),
        ("/v1/boards/team-focus/week/members/blue", {"around": 2}),
        ("/v1/boards/team-focus/week/members/nobody", {}),
    ]:
        from_redis = served.redis_api.json(path, **params)
        from_postgres = served.postgres_api.json(path, **params)
        assert without_source(from_redis) == without_source(from_postgres), path


def test_a_member_route_gives_rank_score_and_neighbours(served: Served) -> None:
    """focus-minutes: ada has 75 minutes this month (the 40-day-old row is elsewhere)."""
    body = served.redis_api.json("/v1/boards/focus-minutes/month/members/ada", around=1)
    assert (body["member"], body["label"], body["rank"], body["score"]) == (
        "ada",
        "Ada Lovelace",
        1,
        75,
    )
    assert body["above"] == []
    assert body["below"] == [{"rank": 2, "member": "cy", "label": None, "score": 50}]


def test_the_historical_routes_are_aliases_of_the_default_board(served: Served) -> None:
    """/v1/leaderboards/{period} is the default board's page, named with user_id."""
    alias = served.redis_api.json("/v1/leaderboards/day")
    board = served.redis_api.json("/v1/boards/pomodoros/day")
    renamed = [
        {"rank": e["rank"], "member": e["user_id"], "label": e["display_name"], "score": e["score"]}
        for e in alias["entries"]
    ]
    assert renamed == board["entries"] and renamed
    user = served.redis_api.json("/v1/users/ada")
    assert user["periods"]["day"]["score"] == 2


def test_board_errors_name_the_problem(served: Served) -> None:
    """An unknown board is 404; a period the board does not keep is 400 naming the periods."""
    missing = served.redis_api.get("/v1/boards/nope/week")
    assert missing.status_code == 404
    assert "no board named 'nope'" in missing.json()["error"]["message"]
    wrong = served.redis_api.get("/v1/boards/team-focus/day")
    assert wrong.status_code == 400
    assert wrong.json()["error"] == {
        "status": 400,
        "code": "bad_parameter",
        "message": "board 'team-focus' keeps the periods week, not day",
        "parameter": "period",
    }


@pytest.mark.parametrize("api", ["redis_api", "postgres_api"])
def test_a_group_ranks_its_members_among_themselves(served: Served, api: str) -> None:
    """Friends: the asked members by score (competition ranks, ties by member), each with
    the rank on the whole board; a member without rows is listed last with 0 and null ranks;
    a repeat counts once. Today's pomodoros: ada 2, bob 2, cy 2, dee 1."""
    server = getattr(served, api)
    body = server.json("/v1/boards/pomodoros/day/group", members="nobody,dee,bob,ada,dee")
    assert body["board"] == "pomodoros" and body["total"] >= 4
    assert body["members"] == [
        {"rank": 1, "board_rank": 1, "member": "ada", "label": "Ada Lovelace", "score": 2},
        {"rank": 1, "board_rank": 1, "member": "bob", "label": None, "score": 2},
        {"rank": 3, "board_rank": 4, "member": "dee", "label": None, "score": 1},
        {"rank": None, "board_rank": None, "member": "nobody", "label": None, "score": 0},
    ]
    assert body["source"] == ("redis" if api == "redis_api" else "postgres")
    # The same from a JSON body, where a member may hold a comma.
    posted = server.client.post(
        "/v1/boards/pomodoros/day/group", json={"members": ["ada", "dee", "a,b"]}
    )
    assert posted.status_code == 200, posted.text
    assert [(m["member"], m["rank"]) for m in posted.json()["members"]] == [
        ("ada", 1),
        ("dee", 2),
        ("a,b", None),
    ]


def test_both_stores_rank_a_group_alike(served: Served) -> None:
    """A sum board's group, from Redis and from the fallback: the same JSON."""
    path = "/v1/boards/team-focus/week/group"
    for members in ("red,blue,green,nobody", "blue"):
        from_redis = served.redis_api.json(path, members=members)
        from_postgres = served.postgres_api.json(path, members=members)
        assert without_source(from_redis) == without_source(from_postgres), members


def test_group_errors_name_the_problem(served: Served) -> None:
    """No members, too many, an empty one, members in both places, a bad body: 400 naming
    ``members``; a body over 1 MiB 413; another method 405 with its Allow header."""
    path = "/v1/boards/pomodoros/day/group"
    client = served.redis_api.client
    for params, message in [
        ({}, "members is required: a comma-separated list of members"),
        ({"members": "a,,b"}, "members must not hold an empty member"),
        ({"members": ",".join(f"m{i}" for i in range(1001))}, "the limit is 1000"),
    ]:
        response = client.get(path, params=params)
        assert response.status_code in (400, 414), (params, response.text)
        if response.status_code == 400:
            error = response.json()["error"]
            assert error["parameter"] == "members" and message in error["message"], error
    for body, message in [
        (b'{"members": []}', "members must list at least one member"),
        (b'{"members": ["a"], "x": 1}', "and nothing else"),
        (b'{"members": [1]}', "members must list strings"),
        (b"not json", "the body must be JSON"),
    ]:
        response = client.post(path, content=body)
        assert response.status_code == 400, (body, response.text)
        assert message in response.json()["error"]["message"], response.text
    both = client.post(path, params={"members": "a"}, json={"members": ["a"]})
    assert both.status_code == 400 and "not both" in both.text
    huge = client.post(path, content=b"x" * ((1 << 20) + 1))
    assert huge.status_code == 413, huge.text
    put = client.put(path, json={"members": ["a"]})
    assert put.status_code == 405 and put.headers["allow"] == "GET, HEAD, POST"
    assert client.post("/v1/boards/pomodoros/day").headers["allow"] == "GET, HEAD"


def test_min_lsn_reads_its_own_write_on_a_board(served: Served) -> None:
    """A write then a read with min_lsn: the board includes it."""
    with psycopg.connect(served.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pomodoros (user_id, team_id, minutes) VALUES ('eve', 'green', 60)"
        )
    lsn = current_lsn(served.dsn)
    body = served.redis_api.json("/v1/boards/team-focus/week", min_lsn=lsn)
    assert {"rank": 2, "member": "green", "label": "Green Team", "score": 60} in body["entries"]


def test_a_board_event_stream_starts_with_the_board(served: Served) -> None:
    """GET /v1/boards/{board}/{period}/events sends the board's page as its first event."""
    url = f"{served.redis_api.base_url}/v1/boards/team-focus/week/events"
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", url, params={"limit": 1}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = None
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                break
    assert data is not None and data["board"] == "team-focus"
    assert data["entries"] == [{"rank": 1, "member": "red", "label": "Red Team", "score": 100}]


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


@pytest.mark.parametrize("api", ["redis_api", "postgres_api"])
def test_a_watched_member_hears_of_being_passed(served: Served, api: str) -> None:
    """GET .../members/{member}/events: the member's standing on connect, then an event when
    someone passes it (a write through PostgreSQL), with the previous rank and the passer
    just above; from Redis, and from the PostgreSQL fallback alike."""
    watched, passer = f"watched-{api}", f"passer-{api}"
    # More rows than anyone else on the board, and than the other case's members: no ties.
    count = 30 if api == "redis_api" else 40
    rows = [(watched, "red", 1)] * count
    # Long ago: on the all-time board only, so the other tests' boards stay as they were.
    insert = (
        "INSERT INTO pomodoros (user_id, team_id, minutes, completed_at)"
        " VALUES (%s, %s, %s, now() - interval '400 days')"
    )
    with psycopg.connect(served.dsn, autocommit=True) as conn:
        conn.cursor().executemany(insert, rows)
    server: ApiServer = getattr(served, api)
    path = f"/v1/boards/pomodoros/all/members/{watched}"
    standing = server.json(path, min_lsn=current_lsn(served.dsn))
    with (
        httpx.Client(timeout=15) as client,
        client.stream("GET", f"{server.base_url}{path}/events") as response,
    ):
        assert response.status_code == 200
        events = _events(response)
        first = next(events)
        assert (first["member"], first["score"], first["previous_rank"]) == (watched, count, None)
        assert first["rank"] == standing["rank"] and first["board"] == "pomodoros"
        with psycopg.connect(served.dsn, autocommit=True) as conn:
            conn.cursor().executemany(insert, [(passer, "red", 1)] * (count + 1))
        passed = next(events)
    assert passed["previous_rank"] == first["rank"] and passed["rank"] == first["rank"] + 1
    assert passed["score"] == passed["previous_score"] == count
    above = {"rank": first["rank"], "member": passer, "label": None, "score": count + 1}
    assert passed["above"] == above
    assert passed["source"] == ("redis" if api == "redis_api" else "postgres")
