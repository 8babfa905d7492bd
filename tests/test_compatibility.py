"""The Redis floor: 7.0 or later, refused at start with one line otherwise."""

from __future__ import annotations

import pytest

from harness.redis_topology import SentinelTopology
from projector.compatibility import check_redis, redis_version_problem
from projector.core.errors import ConfigError
from projector.settings import Settings, load_settings


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


def _settings(redis_url: str) -> Settings:
    return load_settings(pg_dsn="postgresql://nobody@127.0.0.1:1/none", redis_url=redis_url)


def test_check_passes_the_harness_redis_and_skips_an_unreachable_one(redis_url: str) -> None:
    """The test Redis (7.x) passes; an unreachable Redis is left to the retries."""
    check_redis(_settings(redis_url))
    check_redis(_settings("redis://127.0.0.1:1/0"), timeout=0.5)


def test_check_raises_config_error_naming_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable old Redis is one ConfigError naming the URL, its password masked."""
    import redis

    monkeypatch.setattr(redis.Redis, "info", lambda self, section=None: {"redis_version": "6.2.6"})
    settings = _settings("redis://u:secret@127.0.0.1:1/0")
    with pytest.raises(ConfigError, match=r"Redis 6\.2\.6 is too old") as refused:
        check_redis(settings)
    assert "127.0.0.1:1" in str(refused.value) and "secret" not in str(refused.value)


def test_check_asks_the_master_the_sentinels_name(sentinel_topology: SentinelTopology) -> None:
    """Behind Sentinels the version is read from the master they name (URL: credentials)."""
    settings = load_settings(
        pg_dsn="postgresql://nobody@127.0.0.1:1/none",
        redis_url="redis://ignored/0",
        redis_sentinels=",".join(f"{h}:{p}" for h, p in sentinel_topology.sentinels),
        redis_sentinel_master=sentinel_topology.master_name,
    )
    import redis

    seen: list[int] = []
    original = redis.Redis.info

    def spy(self: redis.Redis, section: str | None = None) -> dict[str, object]:
        reply: dict[str, object] = original(self, section)
        seen.append(int(str(reply["tcp_port"])))
        return reply

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis.Redis, "info", spy)
        check_redis(settings)  # "ignored" resolves nowhere: the Sentinels name the master
    assert seen == [sentinel_topology.master().port]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis.Redis, "info", lambda self, section=None: {"redis_version": "6.0.1"})
        with pytest.raises(ConfigError, match="sentinel master 'projector'"):
            check_redis(settings)
