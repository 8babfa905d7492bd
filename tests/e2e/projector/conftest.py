"""Fixtures of the projector-core suite: a migrated database, a projector configuration with
a slot of its own, and projectors run in a thread or as killable processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from projector.commands.migrate import migrate
from projector.core.boards import Board
from projector.settings import Settings, load_settings

from .support import (
    WIDE_RETENTION,
    Expected,
    ProjectorProcess,
    ProjectorThread,
    assert_same,
    projector_process,
    read_redis,
    recompute,
    wait_until_caught_up,
)


@pytest.fixture
def migrated_dsn(pg_dsn: str) -> str:
    """The test's database with the schema and the publication."""
    migrate(pg_dsn, "projector")
    return pg_dsn


@pytest.fixture
def config(migrated_dsn: str, redis_url: str) -> dict[str, Any]:
    """Projector settings (field names) for this test: its own slot, a wide retention."""
    return {
        "pg_dsn": migrated_dsn,
        "redis_url": redis_url,
        "slot": f"t_{uuid.uuid4().hex[:16]}",
        "publication": "projector",
        "timezone": "UTC",
        "key_prefix": "pomo:",
        "reconnect_max_delay": 2.0,
        **WIDE_RETENTION,
    }


@pytest.fixture
def rds(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test's Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def db(migrated_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database, as an application would write."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        yield conn


class Projected:
    """Checks of one test's projection: catch up with PostgreSQL, compare with recomputation."""

    def __init__(
        self,
        config: dict[str, Any],
        client: redis.Redis,
        alive: Callable[[], None] | None,
        stop: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.alive = alive
        self._stop = stop

    def stop(self) -> None:
        """Stop the projector (a thread: finishes its batch and returns)."""
        assert self._stop is not None
        self._stop()

    @property
    def settings(self) -> Settings:
        return load_settings(**self.config)

    def caught_up(self, timeout: float = 30.0) -> int:
        return wait_until_caught_up(
            self.config["pg_dsn"],
            self.client,
            self.config["key_prefix"],
            timeout=timeout,
            alive=self.alive,
        )

    def redis(self, board: Board | None = None) -> Expected:
        return read_redis(self.client, self.config["key_prefix"], board or self.boards[0])

    def expected(self, board: Board | None = None) -> Expected:
        retention = {k: v for k, v in self.config.items() if k.startswith("retention_")}
        return recompute(
            self.config["pg_dsn"], self.config["timezone"], retention, board or self.boards[0]
        )

    @property
    def boards(self) -> tuple[Board, ...]:
        return self.settings.boards

    def assert_exact(self) -> Expected:
        """Wait for the projector, then every board in Redis must equal the recomputation;
        return the first board's."""
        self.caught_up()
        for board in self.boards[1:]:
            assert_same(self.redis(board), self.expected(board))
        actual = self.redis()
        assert_same(actual, self.expected())
        return actual

    def board(self, period: str, bucket: str) -> dict[str, int]:
        return self.redis().boards.get((period, bucket), {})


@pytest.fixture
def start_thread(config: dict[str, Any], rds: redis.Redis) -> Iterator[Callable[..., Projected]]:
    """Start the worker in a thread (with config overrides); it is stopped after the test."""
    running: list[ProjectorThread] = []

    def start(**overrides: Any) -> Projected:
        config.update(overrides)
        runner = ProjectorThread(load_settings(**config)).start()
        running.append(runner)
        return Projected(config, rds, runner.check, runner.stop)

    yield start
    for runner in running:
        runner.stop()


@pytest.fixture
def projected(start_thread: Callable[..., Projected]) -> Projected:
    """A projector running in a thread with the default test configuration."""
    return start_thread()


@pytest.fixture
def start_process(
    config: dict[str, Any], rds: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., tuple[ProjectorProcess, Projected]]]:
    """Start `projector run` processes (config overrides apply); killed after the test."""
    made: list[ProjectorProcess] = []

    def start(**overrides: Any) -> tuple[ProjectorProcess, Projected]:
        config.update(overrides)
        proc = projector_process(config, tmp_path / f"projector-{len(made)}.log").start()
        made.append(proc)
        return proc, Projected(config, rds, proc.check)

    yield start
    for proc in made:
        proc.close()
