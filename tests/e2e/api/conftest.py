"""Fixtures of the read-API suite: settings for the harness's servers, and a module-wide
dataset in Europe/Berlin (around both 2026 clock changes, with ties) that the projector has
built into Redis, served by one API that reads Redis and one whose Redis is unreachable."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from harness import servers
from projector.commands.migrate import migrate
from projector.settings import Settings, load_settings

from .support import ApiServer, Boards, ProjectorThread, insert_rows, oracle, wait_caught_up

BERLIN = "Europe/Berlin"
# Wide enough that no board of the dataset expires from Redis during the tests.
WIDE_RETENTION = {
    "retention_day_days": 36_500,
    "retention_week_weeks": 5_200,
    "retention_month_months": 1_200,
    "retention_year_years": 100,
}

NAMES = {
    "alice": "Alice",
    "bob": "Bob",
    "carol": "Carol",
    "Eve": "Eve",
    "émile": "Émile",
    "zoë": "Zoë",
    "Z": "Zed",
    "ä": "Ä",
    "ann/slash": "Ann Slash",
    "dave": "Dave",
    # "ghost" completes pomodoros but has no users row: display_name null
}

# (UTC instant, what it is in Berlin)
SPRING_DAY = [  # 2026-03-29: clocks go 02:00 CET -> 03:00 CEST; the day lasts 23 hours
    "2026-03-28T23:00:00+00:00",  # 00:00 CET, the day's first instant
    "2026-03-29T00:59:59+00:00",  # 01:59:59 CET, the last before the change
    "2026-03-29T01:00:00+00:00",  # 03:00 CEST, the first after it
    "2026-03-29T21:59:59+00:00",  # 23:59:59 CEST, the day's last instant
]
AUTUMN_DAY = [  # 2026-10-25: clocks go 03:00 CEST -> 02:00 CET; the day lasts 25 hours
    "2026-10-24T22:00:00+00:00",  # 00:00 CEST
    "2026-10-25T00:30:00+00:00",  # 02:30 CEST, the first 02:30
    "2026-10-25T01:30:00+00:00",  # 02:30 CET, the second 02:30
    "2026-10-25T22:59:59+00:00",  # 23:59:59 CET
]
EDGES = [
    "2026-03-28T22:59:59+00:00",  # 2026-03-28 23:59:59 CET: the day before
    "2026-03-29T22:00:00+00:00",  # 2026-03-30 00:00 CEST: Monday, week 2026-W14, next day
    "2026-10-24T21:59:59+00:00",  # 2026-10-24 23:59:59 CEST
    "2026-10-25T23:00:00+00:00",  # 2026-10-26 00:00 CET: Monday, week 2026-W44
    "2025-12-31T22:59:59+00:00",  # 2025-12-31 23:59:59 CET: year 2025 but ISO week 2026-W01
    "2025-12-31T23:00:00+00:00",  # 2026-01-01 00:00 CET: year 2026
    "2027-01-01T10:00:00+00:00",  # 2027-01-01: year 2027, ISO week 2026-W53 (future)
]
# How many pomodoros each user completes on each of the two clock-change days: ties that
# page boundaries cut, and ids whose code-point order differs from a locale's ("Eve" < "bob",
# "ä" and "émile" after "zoë").
SPRING_COUNTS = {
    "alice": 3,
    "ann/slash": 3,
    "bob": 2,
    "carol": 2,
    "Eve": 2,
    "ä": 2,
    "émile": 2,
    "zoë": 1,
    "Z": 1,
    "ghost": 1,
    "dave": 4,
}
AUTUMN_COUNTS = {"bob": 2, "carol": 2, "Eve": 2, "ä": 2, "zoë": 2, "ghost": 5, "alice": 1}
EDGE_USERS = ["alice", "bob", "carol", "Eve", "ä", "zoë", "ghost"]
TODAY_COUNTS = {"alice": 2, "bob": 2, "carol": 1, "ann/slash": 1, "ghost": 2}


@dataclass
class Dataset:
    """The module-wide data: settings the projector used, rows, and the boards they make."""

    settings: Settings
    names: dict[str, str]
    boards: Boards
    redis_api: ApiServer
    postgres_api: ApiServer

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(BERLIN)


def unreachable_redis_url() -> str:
    """A Redis URL on a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def api_settings(pg_dsn: str, redis_url: str, **overrides: Any) -> Settings:
    """Settings for one test: a slot and a key prefix of its own, wide retention."""
    values: dict[str, Any] = {
        "pg_dsn": pg_dsn,
        "redis_url": redis_url,
        "slot": f"api_{uuid.uuid4().hex[:12]}",
        "publication": "projector",
        "timezone": "UTC",
        "key_prefix": "pomo:",
        "reconnect_max_delay": 1.0,
        "api_access_log": False,
        **WIDE_RETENTION,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings_for(pg_dsn: str, redis_url: str) -> Callable[..., Settings]:
    """Make settings for this test's migrated database and flushed Redis."""
    migrate(pg_dsn, "projector")
    return lambda **overrides: api_settings(
        overrides.pop("pg_dsn", pg_dsn), overrides.pop("redis_url", redis_url), **overrides
    )


@pytest.fixture(scope="module")
def dataset(
    postgres_server: servers.PostgresServer, redis_server: servers.RedisServer
) -> Iterator[Dataset]:
    """The Berlin dataset, projected into Redis, and the two APIs that serve it."""
    postgres_server.start()
    redis_server.start()
    name = servers.unique_database_name("api_dataset")
    dsn = postgres_server.create_database(name)
    prefix = f"apitest{uuid.uuid4().hex[:6]}:"
    try:
        migrate(dsn, "projector")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.cursor().executemany(
                "INSERT INTO users (id, display_name) VALUES (%s, %s)", list(NAMES.items())
            )
        rows: list[tuple[str, datetime | None]] = []
        for counts, instants in ((SPRING_COUNTS, SPRING_DAY), (AUTUMN_COUNTS, AUTUMN_DAY)):
            for user, count in counts.items():
                rows += [(user, datetime.fromisoformat(instants[i % 4])) for i in range(count)]
        for index, user in enumerate(EDGE_USERS):
            rows += [(user, datetime.fromisoformat(when)) for when in EDGES[: index + 1]]
        rows += [(user, None) for user, count in TODAY_COUNTS.items() for _ in range(count)]
        insert_rows(dsn, rows)
        with psycopg.connect(dsn) as conn:
            stored = conn.execute("SELECT user_id, completed_at FROM pomodoros").fetchall()
        settings = api_settings(
            dsn,
            redis_server.url(),
            timezone=BERLIN,
            key_prefix=prefix,
            api_access_log=True,
            api_min_lsn_wait=0.05,
        )
        projector = ProjectorThread(settings)
        try:
            wait_caught_up(settings)
        finally:
            projector.stop()
        fallback = settings.model_copy(update={"redis_url": unreachable_redis_url()})
        redis_api, postgres_api = ApiServer(settings), ApiServer(fallback)
        try:
            yield Dataset(
                settings=settings,
                names=NAMES,
                boards=oracle([(u, t.astimezone(UTC)) for u, t in stored], ZoneInfo(BERLIN)),
                redis_api=redis_api,
                postgres_api=postgres_api,
            )
        finally:
            redis_api.close()
            postgres_api.close()
    finally:
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
        postgres_server.drop_database(name)
