"""Remove every key under the prefix without blocking Redis (SCAN + UNLINK, by the sink)."""

from __future__ import annotations

from projector import redis_nodes
from projector.settings import Settings
from projector.sink import RedisSink


def clear(settings: Settings) -> int:
    """Unlink every key under ``PROJECTOR_KEY_PREFIX``; return how many were removed."""
    client = redis_nodes.client(settings, socket_timeout=None)
    try:
        sink = RedisSink(client, settings.keys)
        return sink.unlink_matching(settings.keys.prefix.replace("\\", "\\\\") + "*")
    finally:
        client.close()
