"""How projector processes show themselves in Redis, beside the boards the sink writes.

The active process claims the projection with a fencing token (``owner``: the sink's
scripts write only while Redis names it) and keeps a heartbeat; standbys list themselves;
``projector replay`` leaves a request that the active process answers with its progress.
Every write goes through the ``RedisSink`` it is the presence of (its client, its token,
its durability on ``PROJECTOR_REDIS_MIN_REPLICAS`` replicas).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping

from projector import read_functions
from projector.core.errors import ProjectorError
from projector.sink import Fenced, RedisSink, as_text, process_name


class Presence:
    """The presence of one writer (``sink``); a standby's sink has no owner token."""

    def __init__(self, sink: RedisSink) -> None:
        self._sink = sink
        self._client = sink.client
        self.keys = sink.keys

    @property
    def owner(self) -> str:
        return self._sink.owner

    def claim(self) -> None:
        """Make this writer the owner: from now on only its scripts write (any former owner's
        fail with "FENCED"). Durable on ``min_replicas`` replicas before it returns.

        Every session and every rebuild's swap starts here, so this also (re)loads the read
        API's functions (``read_functions``): a Redis that lost them has them again before
        the watermark the API needs is (re)written."""
        if not self.owner:
            raise ProjectorError("a sink without an owner token cannot claim the projection")
        pipe = self._client.pipeline(transaction=False)
        read_functions.queue_load(pipe)
        pipe.set(self.keys.owner, self.owner)
        pipe.hdel(self.keys.standbys, process_name())  # no longer standing by
        self._sink.durably(pipe)

    def require_ownership(self) -> None:
        """``Fenced`` when another process claimed Redis since this one did (then whatever
        changed there is that process' doing, not lost data)."""
        if not self.owner:
            return
        current = as_text(self._sink.call(self._client.get, self.keys.owner) or b"")
        if current != self.owner:
            raise Fenced(current)

    def beat(self, ttl_seconds: float, info: Mapping[str, str]) -> None:
        """Record that the projector is alive (expires unless renewed)."""
        fields: dict[str | bytes | bytearray | memoryview[int] | int | float, str | bytes] = {
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
            "at": str(time.time()),
            "owner": self.owner,
        }
        fields.update(info)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self.keys.heartbeat, mapping=fields)
        pipe.pexpire(self.keys.heartbeat, max(1, int(ttl_seconds * 1000)))
        self._sink.call(pipe.execute)

    def forget_heartbeat(self) -> None:
        """Say at once that the projector stopped (instead of letting the beat expire)."""
        self._sink.call(self._client.delete, self.keys.heartbeat)

    def announce_standby(self, ttl_seconds: float) -> None:
        """Record that this process stands by (for ``status``), and forget long-gone ones."""
        key, now = self.keys.standbys, time.time()
        seen = self._sink.call(self._client.hgetall, key)
        gone = [field for field, until in seen.items() if float(until) < now]
        pipe = self._client.pipeline(transaction=True)
        if gone:
            pipe.hdel(key, *gone)
        pipe.hset(key, process_name(), str(now + ttl_seconds))
        self._sink.call(pipe.execute)

    def standbys(self) -> list[str]:
        """``host:pid`` of every process standing by now."""
        now = time.time()
        seen = self._sink.call(self._client.hgetall, self.keys.standbys)
        return sorted(as_text(field) for field, until in seen.items() if float(until) >= now)

    # -- `projector replay` ------------------------------------------------------------------

    def replay_request(self) -> str | None:
        """The id of a pending ``projector replay`` request, if any."""
        value = self._sink.call(self._client.get, self.keys.replay_request)
        return as_text(value) if value else None

    def request_replay(self, ttl_seconds: int) -> str:
        """Ask the active projector to rebuild (a later request replaces this one); the
        request's id, which sorts after every earlier request's: Redis's clock, then a
        random part."""
        seconds, micros = self._sink.call(self._client.time)
        request = f"{seconds:011d}.{micros:06d}-{uuid.uuid4().hex[:8]}"
        self._sink.call(lambda: self._client.set(self.keys.replay_request, request, ex=ttl_seconds))
        return request

    def withdraw_replay(self) -> None:
        """Take back a replay request nobody answered."""
        self._sink.call(self._client.delete, self.keys.replay_request)

    def report_replay(self, fields: Mapping[str, str | int | float], ttl_seconds: int) -> None:
        """Publish the progress of the rebuild that answers a replay request."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self.keys.replay_progress, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.expire(self.keys.replay_progress, ttl_seconds)
        self._sink.call(pipe.execute)

    def replay_progress(self) -> dict[str, str]:
        """The progress the active projector published for a replay request."""
        raw = self._sink.call(self._client.hgetall, self.keys.replay_progress)
        return {as_text(k): as_text(v) for k, v in raw.items()}
