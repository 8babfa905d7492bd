"""Fixtures of the live suite: the whole system (``projector run`` and ``python -m api`` as
processes) on the harness's servers, one per test module, and a Redis client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from .support import Stack, start_stack


@pytest.fixture(scope="module")
def stack(
    postgres_server: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """PostgreSQL, Redis, the projector and the API, shared by the tests of a module."""
    logs = tmp_path_factory.mktemp("live")
    system, database = start_stack(postgres_server, redis_server, logs, "live")
    try:
        yield system
    finally:
        system.stop()
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{system.prefix}*"))
            if keys:
                client.delete(*keys)
        postgres_server.drop_database(database)


@pytest.fixture(scope="module")
def rds(redis_server: Any) -> Iterator[redis.Redis]:
    """A client of the harness's Redis."""
    client = redis.Redis.from_url(redis_server.url())
    yield client
    client.close()
