"""The Redis floor: 7.0 or later, refused at start with one line otherwise."""

from __future__ import annotations

import pytest

from projector.compatibility import check_redis, redis_version_problem
from projector.errors import ConfigError


@pytest.mark.parametrize("version", ["7.0.0", "7.0.15", "7.2.4", "8.0.1", "10.0.0"])
def test_redis_7_and_later_will_do(version: str) -> None:
    """Any Redis from 7.0 on passes."""
    assert redis_version_problem(version) is None


@pytest.mark.parametrize("version", ["6.2.14", "6.0.16", "5.0.7", "x.y"])
def test_older_redis_is_refused_with_a_reason(version: str) -> None:
    """An older (or unreadable) version is refused, saying what needs 7.0."""
    problem = redis_version_problem(version)
    assert problem is not None
    if version[0].isdigit():
        assert "Redis 7.0 or later" in problem and version in problem


def test_check_passes_the_harness_redis_and_skips_an_unreachable_one(redis_url: str) -> None:
    """The test Redis (7.x) passes; an unreachable Redis is left to the retries."""
    check_redis(redis_url, redis_url)
    check_redis("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0", timeout=0.5)


def test_check_raises_config_error_naming_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable old Redis is one ConfigError naming the (masked) URL."""
    import redis

    monkeypatch.setattr(redis.Redis, "info", lambda self, section=None: {"redis_version": "6.2.6"})
    with pytest.raises(ConfigError, match=r"Redis 6\.2\.6 is too old.*\(at redis://h/0\)"):
        check_redis("redis://127.0.0.1:1/0", "redis://h/0")
