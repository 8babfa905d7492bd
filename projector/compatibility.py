"""What the projector and the read API require of their servers, checked at start-up.

Redis 7.0 or later: the read API calls Redis Functions (``FUNCTION LOAD`` by the projector,
``FCALL_RO`` of functions flagged ``no-writes``), and its ACL user is read-only by key
(``%R~``); none of these exist before 7.0. A server that
is unreachable at start is not refused here: the processes retry (or fall back) as usual.
"""

from __future__ import annotations

import redis

from projector import redis_nodes
from projector.core.errors import ConfigError, ConnectionLost
from projector.settings import Settings

REDIS_FLOOR = (7, 0)


def redis_version_problem(version: str) -> str | None:
    """Why a Redis of ``version`` (``INFO server``'s ``redis_version``) will not do, or None."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return f"cannot read the Redis version {version!r}"
    if found < REDIS_FLOOR:
        floor = ".".join(map(str, REDIS_FLOOR))
        return (
            f"Redis {version} is too old: read-only functions (FCALL_RO, no-writes) and "
            f"read-only ACL users need Redis {floor} or later"
        )
    return None


def check_redis(settings: Settings, url: str | None = None, *, timeout: float = 3.0) -> None:
    """Refuse (``ConfigError``) a reachable Redis older than ``REDIS_FLOOR``: the master that
    ``settings`` name (a single node, through the Sentinels, or the Cluster node of the
    projection's slot), logging in with ``url``'s credentials (default the projector's)."""
    try:
        client = redis_nodes.client(
            settings, url=url, socket_timeout=timeout, connect_timeout=timeout
        )
    except ConnectionLost:
        return  # unreachable now: the caller's retries and fallbacks deal with it
    try:
        info = client.info("server")
    except (redis.ConnectionError, redis.TimeoutError):
        return
    finally:
        client.close()
    problem = redis_version_problem(str(info.get("redis_version", "?")))
    if problem:
        raise ConfigError(f"{problem} (at {redis_nodes.describe(settings, url)})")
