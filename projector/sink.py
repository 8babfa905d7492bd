"""The only code that writes the projector's Redis keys.

``RedisSink.apply`` writes a ``BatchDelta`` and the new ``Watermark`` in one Lua script:
atomic, and guarded by compare-and-set on the watermark's position so a stale or second
writer, or a Redis that lost data, fails loudly instead of counting twice.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from projector.errors import ConfigError, ConnectionLost, RebuildRequired
from projector.keys import Keys
from projector.projection import BatchDelta
from projector.watermark import Watermark

_APPLY_LUA = resources.files("projector").joinpath("apply_batch.lua").read_text()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    replay_request: str | None


class RedisSink:
    """Writes batches, the watermark and the heartbeat under one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self.keys = keys
        self._apply = client.register_script(_APPLY_LUA)
        self._conn: Any = None
        self._in_flight: deque[tuple[tuple[str | int, ...], Watermark, Watermark | None]] = deque()

    @property
    def client(self) -> redis.Redis:
        return self._client

    def read_watermark(self) -> Watermark | None:
        """The stored watermark, or None when Redis has none (lost or never built)."""
        raw = self._call(self._client.hgetall, self.keys.watermark)
        if not raw:
            return None
        return Watermark.from_fields({as_text(k): as_text(v) for k, v in raw.items()})

    def apply(self, batch: BatchDelta, new: Watermark, expected: Watermark | None) -> ApplyResult:
        """Apply ``batch`` and store ``new`` if Redis still holds ``expected``; atomically."""
        self.send(batch, new, expected)
        return self.receive()

    def send(self, batch: BatchDelta, new: Watermark, expected: Watermark | None) -> None:
        """Start applying ``batch`` without waiting; ``receive`` collects the outcome.

        Redis runs the script while the caller prepares the next batch. Several batches
        may be in flight; each expects the position the previous one sets, so if one is
        refused every later one is refused too.
        """
        keys = self.keys
        args = (
            3,
            keys.watermark,
            keys.registry,
            keys.replay_request,
            expected.position if expected else "",
            new.position,
            # A batch that creates the watermark, or makes built boards live, writes it whole.
            encode_batch(batch, new, full=expected is None or batch.swap is not None),
            keys.events,
        )
        try:
            self._connection().send_command("EVALSHA", self._apply.sha, *args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_connection()
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
        self._in_flight.append((args, new, expected))

    @property
    def in_flight(self) -> int:
        """How many batches were sent and not yet received."""
        return len(self._in_flight)

    def reply_fd(self) -> int | None:
        """The socket that becomes readable when the oldest batch in flight is answered."""
        if not self._in_flight or self._conn is None or self._conn._sock is None:
            return None
        return int(self._conn._sock.fileno())

    def busy(self) -> bool:
        """True while Redis has not yet answered the oldest batch in flight (never blocks)."""
        if not self._in_flight:
            return False
        try:
            return not self._connection().can_read(timeout=0)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False  # receive() will report it

    def receive(self) -> ApplyResult:
        """Wait for the oldest batch in flight; raise ``RebuildRequired`` if Redis refused it."""
        if not self._in_flight:
            raise RuntimeError("no batch in flight")
        args, new, expected = self._in_flight.popleft()
        try:
            try:
                reply = self._connection().read_response()
            except redis.exceptions.NoScriptError:
                # Redis restarted or flushed its scripts: load it and run it once more.
                self._client.script_load(_APPLY_LUA)
                reply = self._client.evalsha(self._apply.sha, *args)  # type: ignore[arg-type]
        except redis.exceptions.ReadOnlyError as exc:
            self._drop_connection()
            raise ConnectionLost(
                f"Redis is a read-only replica now (failover?): {exc}", service="redis"
            ) from exc
        except redis.ResponseError as exc:
            message = str(exc)
            if message.startswith("POSITION"):
                found = message.removeprefix("POSITION").strip()
                reason = (
                    "Redis holds no watermark: it lost its data or was flushed"
                    if not found
                    else f"Redis watermark moved under us (expected "
                    f"{expected.position if expected else 'nothing'}, found {found})"
                )
                raise RebuildRequired(reason, slot=new.slot, lsn=new.lsn) from exc
            if message.startswith("BUILD LOST"):
                raise RebuildRequired(
                    f"Redis lost keys of boards being built ({message})", slot=new.slot
                ) from exc
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_connection()
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
        request = as_text(reply[1]) if reply and len(reply) > 1 else ""
        return ApplyResult(replay_request=request or None)

    def _connection(self) -> Any:
        if self._conn is None:
            self._client.script_load(_APPLY_LUA)
            self._conn = self._client.connection_pool.get_connection()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._client.connection_pool.release(self._conn)
            self._conn = None

    def close(self) -> None:
        """Give the dedicated connection back; batches still in flight are abandoned."""
        self._in_flight.clear()
        self._drop_connection()

    def beat(self, ttl_seconds: float, info: dict[str, str]) -> None:
        """Record that the projector is alive (expires unless renewed)."""
        fields: dict[str | bytes | bytearray | memoryview[int] | int | float, str | bytes] = {
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
            "at": str(time.time()),
        }
        fields.update(info)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self.keys.heartbeat, mapping=fields)
        pipe.pexpire(self.keys.heartbeat, max(1, int(ttl_seconds * 1000)))
        self._call(pipe.execute)

    def forget_heartbeat(self) -> None:
        """Say at once that the projector stopped (instead of letting the beat expire)."""
        self._call(self._client.delete, self.keys.heartbeat)

    def eviction_policy(self) -> str:
        """Redis' ``maxmemory-policy``, read from INFO (which managed services allow)."""
        info = self._call(self._client.info, "memory")
        return str(info.get("maxmemory_policy", "unknown"))

    def require_no_eviction(self) -> str:
        """Refuse a Redis that may evict keys: an evicted board is a silently wrong score.

        The watermark goes too: boards may have been evicted already, so once the policy
        is fixed the next start rebuilds instead of trusting them.
        """
        policy = self.eviction_policy()
        if policy != "noeviction":
            with suppress(redis.RedisError):
                self._client.delete(self.keys.watermark)
            raise ConfigError(
                f"Redis maxmemory-policy is {policy!r}: it may evict boards and silently lose "
                "scores; set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in "
                "redis.conf or the managed service's parameter group)"
            )
        return policy

    def replay_request(self) -> str | None:
        """The id of a pending ``projector replay`` request, if any."""
        value = self._call(self._client.get, self.keys.replay_request)
        return as_text(value) if value else None

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc


def encode_batch(batch: BatchDelta, new: Watermark, *, full: bool = True) -> str:
    """The JSON argument of apply_batch.lua (see its header for the shape)."""
    labels = []
    for hash_key, members in batch.labels.items():
        set_pairs: list[str] = []
        deleted: list[str] = []
        for member, label in members.items():
            if label is None:
                deleted.append(member)
            else:
                set_pairs.append(member)
                set_pairs.append(label)
        labels.append((hash_key, set_pairs, deleted))
    expiry, raw = batch.expiry, batch.raw
    boards = []
    for key, scores in batch.deltas.items():
        flat = [x for pair in scores.items() if pair[1] for x in pair]
        if flat:
            expires = expiry.get(key)
            boards.append((key, "" if expires is None else expires, flat, int(key in raw)))
    document: dict[str, Any] = {
        "w": [x for pair in new.fields(full=full).items() for x in pair],
        "cb": sorted(batch.clear_boards),
        "cl": sorted(batch.clear_labels),
        "l": labels,
        "b": boards,
    }
    if batch.swap is not None:
        document["s"] = batch.swap
    return json.dumps(
        document,
        ensure_ascii=False,
        separators=(",", ":"),
    )


def as_text(value: bytes | str) -> str:
    """A Redis reply element as text."""
    return value.decode() if isinstance(value, bytes) else value
