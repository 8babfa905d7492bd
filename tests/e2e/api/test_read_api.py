"""Every route and field, from Redis and from the PostgreSQL fallback, against an oracle.

The dataset (conftest) lives in Europe/Berlin around both 2026 clock changes and has ties
that page boundaries cut; each answer is checked against ``oracle``/``ranked`` and the two
stores must give identical JSON apart from ``source`` and ``as_of``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from projector.core.buckets import current_bucket

from .conftest import Dataset
from .support import ranked, without_source

PAST_BUCKETS = [
    ("day", "2026-03-29"),
    ("day", "2026-10-25"),
    ("day", "2026-03-28"),
    ("week", "2026-W13"),
    ("week", "2026-W43"),
    ("week", "2026-W01"),
    ("week", "2026-W53"),
    ("month", "2026-03"),
    ("month", "2026-10"),
    ("year", "2025"),
    ("year", "2026"),
    ("year", "2027"),
    ("all", "all"),
]


def both(data: Dataset, path: str, **params: Any) -> dict[str, Any]:
    """GET from both stores; assert each says so and that they agree; return Redis's body."""
    from_redis = data.redis_api.json(path, **params)
    from_postgres = data.postgres_api.json(path, **params)
    assert from_redis["source"] == "redis"
    assert from_postgres["source"] == "postgres"
    assert without_source(from_redis) == without_source(from_postgres), (path, params)
    return from_redis


@pytest.mark.parametrize(("period", "bucket"), PAST_BUCKETS)
def test_every_page_matches_the_oracle_on_both_stores(
    dataset: Dataset, period: str, bucket: str
) -> None:
    """Each page (every offset, several limits) has the oracle's entries, ranks and total."""
    expected = ranked(dataset.boards.get((period, bucket), {}), dataset.names)
    for limit in (1, 2, 3, 1000):
        for offset in range(len(expected) + 2):
            body = both(
                dataset, f"/v1/leaderboards/{period}", bucket=bucket, limit=limit, offset=offset
            )
            assert body["entries"] == expected[offset : offset + limit], (limit, offset)
            assert body["total"] == len(expected)
            assert (body["period"], body["bucket"], body["limit"], body["offset"]) == (
                period,
                bucket,
                limit,
                offset,
            )


def test_ties_share_a_rank_and_are_listed_by_code_point(dataset: Dataset) -> None:
    """On 2026-03-29 ranks run 1, 2, 2, 4 and the tied ids Eve, bob, carol, ä, émile."""
    entries = both(dataset, "/v1/leaderboards/day", bucket="2026-03-29", limit=100)["entries"]
    assert [(e["rank"], e["user_id"], e["score"]) for e in entries] == [
        (1, "dave", 4),
        (2, "alice", 3),
        (2, "ann/slash", 3),
        (4, "Eve", 2),
        (4, "bob", 2),
        (4, "carol", 2),
        (4, "ä", 2),
        (4, "émile", 2),
        (9, "Z", 1),
        (9, "ghost", 1),
        (9, "zoë", 1),
    ]
    names = {e["user_id"]: e["display_name"] for e in entries}
    assert names["émile"] == "Émile" and names["ghost"] is None


@pytest.mark.parametrize(
    ("period", "bucket", "start", "end"),
    [
        ("day", "2026-03-29", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
        ("day", "2026-10-25", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
        ("week", "2026-W13", "2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
        ("week", "2026-W53", "2026-12-28T00:00:00+01:00", "2027-01-04T00:00:00+01:00"),
        ("month", "2026-10", "2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00"),
        ("year", "2026", "2026-01-01T00:00:00+01:00", "2027-01-01T00:00:00+01:00"),
        ("all", "all", None, None),
    ],
)
def test_period_bounds_are_local_midnights_with_their_offsets(
    dataset: Dataset, period: str, bucket: str, start: str | None, end: str | None
) -> None:
    """period_start/period_end are the bucket's bounds in Berlin, offsets changing with DST."""
    body = both(dataset, f"/v1/leaderboards/{period}", bucket=bucket)
    assert (body["period_start"], body["period_end"]) == (start, end)


@pytest.mark.parametrize("period", ["day", "week", "month", "year", "all"])
def test_current_bucket_is_the_default(dataset: Dataset, period: str) -> None:
    """Without ``bucket`` the current one answers, with today's pomodoros, from both stores."""
    bucket = "all" if period == "all" else current_bucket(period, dataset.tz, datetime.now(UTC))  # type: ignore[arg-type]
    body = both(dataset, f"/v1/leaderboards/{period}", limit=1000)
    assert body["bucket"] == bucket
    expected = ranked(dataset.boards.get((period, bucket), {}), dataset.names)
    assert body["entries"] == expected and body["total"] == len(expected)


def test_empty_and_future_buckets_are_empty_boards(dataset: Dataset) -> None:
    """A bucket nobody scored in is an empty board (total 0), not an error."""
    for period, bucket in (("day", "2026-03-27"), ("year", "2031"), ("week", "2020-W53")):
        body = both(dataset, f"/v1/leaderboards/{period}", bucket=bucket)
        assert body["entries"] == [] and body["total"] == 0


@pytest.mark.parametrize(("period", "bucket"), PAST_BUCKETS[:2] + PAST_BUCKETS[-1:])
def test_every_standing_matches_the_oracle(dataset: Dataset, period: str, bucket: str) -> None:
    """Each member's rank, score and neighbours (around 0, 1, 3) match the oracle."""
    expected = ranked(dataset.boards[(period, bucket)], dataset.names)
    for position, entry in enumerate(expected):
        for around in (0, 1, 3):
            user = quote(entry["user_id"], safe="")
            body = both(
                dataset, f"/v1/leaderboards/{period}/users/{user}", bucket=bucket, around=around
            )
            assert body["user_id"] == entry["user_id"]
            assert (body["rank"], body["score"], body["display_name"]) == (
                entry["rank"],
                entry["score"],
                entry["display_name"],
            )
            assert body["total"] == len(expected) and body["around"] == around
            assert body["above"] == expected[max(0, position - around) : position]
            assert body["below"] == expected[position + 1 : position + 1 + around]


def test_a_user_without_pomodoros_has_score_0_and_no_rank(dataset: Dataset) -> None:
    """A known user off the board, or an unknown id, gets score 0 and rank null."""
    body = both(dataset, "/v1/leaderboards/day/users/dave", bucket="2026-10-25", around=3)
    assert (body["rank"], body["score"], body["display_name"]) == (None, 0, "Dave")
    assert body["above"] == [] and body["below"] == [] and body["total"] == 7
    body = both(dataset, "/v1/leaderboards/week/users/nobody")
    assert (body["rank"], body["score"], body["display_name"]) == (None, 0, None)


def test_user_route_covers_every_current_period(dataset: Dataset) -> None:
    """/v1/users/{id} gives score, rank and total in the current bucket of every period."""
    for user in ("alice", "ghost", "ann/slash", "dave", "nobody"):
        body = both(dataset, f"/v1/users/{quote(user, safe='')}")
        assert body["user_id"] == user and body["display_name"] == dataset.names.get(user)
        assert list(body["periods"]) == ["day", "week", "month", "year", "all"]
        for period, item in body["periods"].items():
            bucket = (
                "all" if period == "all" else current_bucket(period, dataset.tz, datetime.now(UTC))
            )  # type: ignore[arg-type]
            board = dataset.boards.get((period, bucket), {})
            mine = next((e for e in ranked(board, dataset.names) if e["user_id"] == user), None)
            assert item["bucket"] == bucket and item["total"] == len(board)
            assert item["score"] == (mine["score"] if mine else 0)
            assert item["rank"] == (mine["rank"] if mine else None)
            bounds = both(dataset, f"/v1/leaderboards/{period}")
            assert (item["period_start"], item["period_end"]) == (
                bounds["period_start"],
                bounds["period_end"],
            )


def test_as_of_names_the_watermark_and_its_commit_time(dataset: Dataset) -> None:
    """as_of carries the watermark LSN and an ISO 8601 commit time from either store."""
    body = dataset.redis_api.json("/v1/leaderboards/all")
    fallback = dataset.postgres_api.json("/v1/leaderboards/all")
    for as_of in (body["as_of"], fallback["as_of"]):
        assert set(as_of) == {"lsn", "commit_time"}
        high, low = as_of["lsn"].split("/")
        int(high, 16), int(low, 16)
        assert datetime.fromisoformat(as_of["commit_time"]).utcoffset() is not None
    # PostgreSQL answers from now: at or past what Redis was built to.
    assert _lsn(fallback["as_of"]["lsn"]) >= _lsn(body["as_of"]["lsn"])


def test_head_answers_like_get_without_a_body(dataset: Dataset) -> None:
    """HEAD gets the GET status and headers and no body."""
    get = dataset.redis_api.client.get("/v1/leaderboards/day")
    head = dataset.redis_api.client.head("/v1/leaderboards/day")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == get.headers["content-length"]


def test_readyz_says_which_store_answers(dataset: Dataset) -> None:
    """/readyz is 200 with source redis, or postgres when Redis is unreachable."""
    body = dataset.redis_api.json("/readyz")
    assert body["ready"] is True and body["source"] == "redis"
    assert body["redis"]["built"] is True and body["postgres"]["up"] is True
    body = dataset.postgres_api.json("/readyz")
    assert body["source"] == "postgres" and body["redis"]["up"] is False
    assert dataset.redis_api.json("/healthz") == {"status": "ok"}


def test_metrics_count_requests_latency_and_fallbacks(dataset: Dataset) -> None:
    """/metrics is Prometheus text with requests by route and status, latency and fallbacks."""
    dataset.postgres_api.json("/v1/leaderboards/day")
    dataset.postgres_api.get("/v1/leaderboards/nope")
    response = dataset.postgres_api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'api_requests_total{method="GET",route="/v1/leaderboards/{period}",status="200"}' in text
    assert 'api_requests_total{method="GET",route="/v1/leaderboards/{period}",status="400"}' in text
    assert "api_request_duration_seconds_bucket{" in text and 'le="+Inf"' in text
    assert 'api_fallbacks_total{reason="redis_down"}' in text
    assert 'api_answers_total{route="/v1/leaderboards/{period}",source="postgres"}' in text
    assert "api_redis_up 0.0" in text.splitlines()
    for line in text.splitlines():
        assert line.startswith("#") or float(line.rsplit(" ", 1)[1]) >= 0, line


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@pytest.mark.parametrize(
    ("period", "bucket"),
    [
        ("day", "0001-01-01"),
        ("day", "9999-12-31"),
        ("week", "0001-W01"),
        ("week", "9999-W52"),
        ("month", "0001-01"),
        ("month", "9999-12"),
        ("year", "0001"),
        ("year", "9999"),
    ],
)
def test_buckets_at_the_ends_of_the_calendar(dataset: Dataset, period: str, bucket: str) -> None:
    """The first and last representable buckets answer (empty) from both stores alike."""
    for path in (f"/v1/leaderboards/{period}", f"/v1/leaderboards/{period}/users/bob"):
        body = dataset.postgres_api.json(path, bucket=bucket)
        assert body["total"] == 0 and body["source"] == "postgres"
        assert body["period_start"] is not None
        from_redis = dataset.redis_api.json(path, bucket=bucket)
        assert without_source(from_redis) == without_source(body)
