"""Remove every key under the prefix without blocking Redis (SCAN + UNLINK)."""

from __future__ import annotations

import redis

from projector import redis_nodes
from projector.core.errors import ConnectionLost
from projector.settings import Settings


def clear(settings: Settings) -> int:
    """Unlink every key under ``PROJECTOR_KEY_PREFIX``; return how many were removed."""
    client = redis_nodes.client(settings, socket_timeout=None)
    try:
        return unlink_matching(client, settings.keys.prefix.replace("\\", "\\\\") + "*")
    finally:
        client.close()


def unlink_matching(client: redis.Redis, pattern: str) -> int:
    """Unlink every key matching a SCAN ``pattern``, in small steps; return how many."""
    removed = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
    return removed
