"""The only code that writes the projector's Redis keys.

``RedisSink.apply`` writes a ``BatchDelta`` and the new ``Watermark`` in one Lua script:
atomic, and guarded by compare-and-set on the watermark's position so a stale or second
writer, or a Redis that lost data, fails loudly instead of counting twice. A process that
takes the slot over first ``claim``s the projection: each script also checks that fencing
token, so a former owner that was paused or cut off, and wakes up, writes nothing.

With ``min_replicas`` a batch is durable only once ``WAIT`` confirms that many replicas
received it: only then may its position be confirmed to PostgreSQL, so a Redis failover
cannot lose a position PostgreSQL has already forgotten the WAL for. WAIT would block the
connection, and so every batch sent behind it, until the replicas have applied what it
covers; so while batches flow, a batch is followed (at most every ``_PROBE_EVERY``) by
``INFO replication`` instead, which never blocks: the master's replication offset after
that batch, and the offsets the replicas acknowledged (about every second). A batch is
durable once ``min_replicas`` replicas acknowledged its offset. Before the projector
confirms what is not durable yet, with nothing in flight, ``seal`` WAITs for the rest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis

from projector.core.errors import ConfigError, ConnectionLost, RebuildRequired
from projector.core.keys import Keys
from projector.core.projection import BatchDelta
from projector.core.watermark import Watermark
from projector.redis_nodes import MOVED_AWAY, moved_away

_APPLY_LUA = resources.files("projector").joinpath("apply_batch.lua").read_text()
# What a JSON string must escape (ensure_ascii off): members without it are joined as is.
# Keys with at least this many members in a batch have their arrays joined by hand.
_JOIN_FROM = 32
_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')
_SWAP_LUA = resources.files("projector").joinpath("swap_boards.lua").read_text()
# With min_replicas: how often a batch is followed by INFO replication (see the module doc).
_PROBE_EVERY = 0.5


class Fenced(ConnectionLost):
    """Another process took the projection over: this one must stop writing and stand by."""

    def __init__(self, owner: str) -> None:
        super().__init__(
            f"another projector took the slot over, or Redis went back to an older claim"
            f" (owner {owner}); standing by"
            if owner
            else "Redis no longer holds this process' ownership (it lost data, or failed over"
            " to a replica that never received the claim); standing by, then claiming again",
            service="redis",
        )
        self.owner = owner


class ReplicasBehind(ConnectionLost):
    """Fewer replicas than required acknowledged a write within the timeout."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    replay_request: str | None
    # The position up to which every batch is durable now (this one's, when a WAIT covered
    # it or none is required), or None: not yet.
    durable: int | None = None


class RedisSink:
    """Writes batches, the watermark and the heartbeat under one key prefix.

    ``owner`` is this writer's fencing token (``new_owner()``); it writes only while Redis
    names it the owner (``claim``). ``min_replicas``: see the module's doc.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        owner: str = "",
        min_replicas: int = 0,
        replica_timeout: float = 2.0,
    ) -> None:
        self._client = client
        self.keys = keys
        self.owner = owner
        self.min_replicas = min_replicas
        self._wait_ms = max(1, int(replica_timeout * 1000))
        self._apply = client.register_script(_APPLY_LUA)
        self._conn: Any = None
        # Sent batches: script arguments, new and expected watermark, whether INFO follows.
        self._in_flight: deque[tuple[tuple[object, ...], Watermark, Watermark | None, bool]] = (
            deque()
        )
        # Replies read ahead of ``receive`` (a batch that reads the registry waits for them).
        self._answered: deque[Any] = deque()
        self._probed_at = 0.0
        # Applied batches not known durable yet: (master's offset after it, its position).
        self._undurable: deque[tuple[int, int]] = deque()

    @property
    def client(self) -> redis.Redis:
        return self._client

    def durably(self, pipe: Any) -> list[Any]:
        """Run ``pipe`` and WAIT for ``min_replicas`` (``_waited``); return the replies.
        A refused command raises; ``ReplicasBehind`` when too few replicas acknowledged."""
        replies, acked = self._waited(pipe)
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._demoted(reply) if moved_away(reply) else reply
        if acked is not None:
            self._require_replicas(acked, "the write")
        return replies

    def _waited(self, pipe: Any) -> tuple[list[Any], int | None]:
        """Run ``pipe`` on one connection, then (with ``min_replicas``) WAIT there: WAIT counts
        what its own connection wrote, and all that Redis replicated before it. Returns the
        replies (errors as values) and how many replicas acknowledged (None: no WAIT)."""
        if self.min_replicas:
            pipe.execute_command("WAIT", self.min_replicas, self._wait_ms)
        replies: list[Any] = self.call(pipe.execute, False)
        if not self.min_replicas:
            return replies, None
        acked = replies.pop()
        if isinstance(acked, redis.ResponseError):  # WAIT on a node demoted meanwhile
            raise self._demoted(acked)
        return replies, int(acked)

    def _require_replicas(self, acked: int, what: str) -> None:
        if acked < self.min_replicas:
            raise ReplicasBehind(
                f"only {acked} of {self.min_replicas} Redis replicas "
                f"(PROJECTOR_REDIS_MIN_REPLICAS) acknowledged {what} within {self._wait_ms} ms;"
                " retrying",
                service="redis",
            )

    def read_watermark(self) -> Watermark | None:
        """The stored watermark, or None when Redis has none (lost or never built)."""
        raw = self.call(self._client.hgetall, self.keys.watermark)
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
        removed = sorted(batch.clear_boards) + (list(batch.swap.unlink) if batch.swap else [])
        # Boards a batch removes are found in the registry, read after every earlier batch.
        registered = self._registered(removed) if removed else []
        declared, document = encode_batch(
            batch,
            new,
            # A batch that creates the watermark, makes built boards live or changes which
            # boards Redis holds writes it whole.
            full=expected is None
            or batch.swap is not None
            or (new.fingerprint, new.unavailable) != (expected.fingerprint, expected.unavailable),
            registered=registered,
        )
        args = (
            4 + len(declared),
            keys.watermark,
            keys.registry,
            keys.replay_request,
            keys.owner,
            *declared,
            expected.position if expected else "",
            new.position,
            document,
            keys.events,
            self.owner,
        )
        now = time.monotonic()
        probe = bool(self.min_replicas) and now - self._probed_at >= _PROBE_EVERY
        try:
            connection = self._connection()
            if probe:
                self._probed_at = now
                connection.send_packed_command(
                    connection.pack_commands(
                        [("EVALSHA", self._apply.sha, *args), ("INFO", "replication")]
                    )
                )
            else:
                connection.send_command("EVALSHA", self._apply.sha, *args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_connection()
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
        self._in_flight.append((args, new, expected, probe))

    @property
    def in_flight(self) -> int:
        """How many batches were sent and not yet received."""
        return len(self._in_flight)

    def reply_fd(self) -> int | None:
        """The socket that becomes readable when the oldest batch in flight is answered."""
        if not self._in_flight or self._answered or self._conn is None or self._conn._sock is None:
            return None
        return int(self._conn._sock.fileno())

    def busy(self) -> bool:
        """True while Redis has not yet answered the oldest batch in flight (never blocks)."""
        if not self._in_flight or self._answered:
            return False
        try:
            return not self._connection().can_read(timeout=0)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False  # receive() will report it

    def receive(self) -> ApplyResult:
        """Wait for the oldest batch in flight; raise ``RebuildRequired`` if Redis refused it,
        ``Fenced`` if another process owns the projection now. With ``min_replicas`` the
        result says up to where batches are durable, if that moved."""
        if not self._in_flight:
            raise RuntimeError("no batch in flight")
        args, new, expected, probe = self._in_flight.popleft()
        outcome, info = self._answered.popleft() if self._answered else self._read_answer(probe)
        acked = None
        if isinstance(outcome, redis.exceptions.NoScriptError):
            # Redis restarted or flushed its scripts: load it and run it once more (INFO's
            # offset came before that write: no measure of it).
            (outcome, acked), info = self._retry_without_script(args), None
        if isinstance(outcome, Exception):
            raise self._failure(outcome, new, expected) from outcome
        request = as_text(outcome[1]) if outcome and len(outcome) > 1 else ""
        if not self.min_replicas:
            return ApplyResult(replay_request=request or None, durable=new.lsn)
        if acked is not None:  # that WAIT covered it and everything before it
            self._require_replicas(acked, f"the batches up to {new.position}")
            self._undurable.clear()
            return ApplyResult(replay_request=request or None, durable=new.lsn)
        durable = None
        if info is not None:
            offset, acknowledged = _replication(info, self.min_replicas)
            undurable = self._undurable
            while undurable and undurable[0][0] <= acknowledged:
                durable = undurable.popleft()[1]
            undurable.append((offset, new.lsn))
        return ApplyResult(replay_request=request or None, durable=durable)

    def seal(self) -> None:
        """With ``min_replicas`` and no batch in flight: WAIT until every batch applied so far
        is durable; ``ReplicasBehind`` if too few replicas acknowledged them in time."""
        if not self.min_replicas:
            return
        if self._in_flight:
            raise RuntimeError("seal with batches in flight")
        connection = self._connection()
        try:
            connection.send_command("WAIT", self.min_replicas, self._wait_ms)
            acked = int(connection.read_response())
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_connection()
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
        except redis.ResponseError as exc:  # WAIT refused: the node was demoted meanwhile
            raise self._demoted(exc) from exc
        self._require_replicas(acked, "the batches applied")
        self._undurable.clear()

    def _read_answer(self, probe: bool) -> tuple[Any, Any]:
        """The script's reply (or its error) and, if INFO followed it, INFO's."""
        connection = self._connection()
        try:
            try:
                outcome: Any = connection.read_response()
            except redis.ResponseError as exc:  # this script's error; the stream is intact
                outcome = exc
            info = connection.read_response() if probe else None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._drop_connection()
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
        return outcome, info

    def _retry_without_script(self, args: tuple[object, ...]) -> tuple[Any, int | None]:
        """Run the batch once more, on another connection (so ``seal``'s WAIT would not
        cover it): with ``min_replicas`` a WAIT follows it there."""
        self.call(self._client.script_load, _APPLY_LUA)
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(self._apply.sha, *args)  # type: ignore[arg-type]
        (outcome,), acked = self._waited(pipe)
        return outcome, acked

    def _demoted(self, exc: Exception) -> ConnectionLost:
        """The node took our write as a master but is a replica now (or no longer serves
        our keys): what it took is unconfirmed; find the master again."""
        self._drop_connection()
        return ConnectionLost(
            f"Redis is a read-only replica now, or no longer serves our keys (failover?): {exc}",
            service="redis",
        )

    def _failure(self, exc: Exception, new: Watermark, expected: Watermark | None) -> Exception:
        """What a refused script means for the projector."""
        message = str(exc)
        if moved_away(exc):
            return self._demoted(exc)
        if message.startswith("POSITION"):
            found = message.removeprefix("POSITION").strip()
            reason = (
                "Redis holds no watermark: it lost its data or was flushed"
                if not found
                else f"Redis watermark moved under us (expected "
                f"{expected.position if expected else 'nothing'}, found {found})"
            )
            return RebuildRequired(reason, slot=new.slot, lsn=new.lsn)
        if message.startswith("FENCED"):
            return Fenced(message.removeprefix("FENCED").strip())
        if message.startswith("BUILD LOST"):
            return RebuildRequired(
                f"Redis lost keys of boards being built ({message})", slot=new.slot
            )
        return exc

    def _registered(self, prefixes: Iterable[str] | None = None) -> list[str]:
        """Registered board keys (under ``prefixes``, if given), read once Redis answered
        every batch in flight (their answers are kept for ``receive``)."""
        while len(self._answered) < len(self._in_flight):
            self._answered.append(self._read_answer(self._in_flight[len(self._answered)][3]))
        listed = self.call(self._client.zrange, self.keys.registry, 0, -1)
        listed = [as_text(key) for key in listed]
        if prefixes is None:
            return listed
        starts = tuple(prefixes)
        return [key for key in listed if key.startswith(starts)]

    def swap_build(
        self,
        build: str,
        boards: Sequence[tuple[str, int | None, int]],
        labels: Sequence[tuple[str, int]],
        watermark: Watermark,
        replay_id: str | None,
    ) -> None:
        """Replace every board, label hash and the watermark by a rebuild's (swap_boards.lua):
        ``boards`` (suffix, expiry, members) and ``labels`` (suffix, fields) under ``build``."""
        keys = self.keys
        old = self._registered()
        declared: list[str] = [f"{build}started"]
        args: list[Any] = [self.owner, replay_id or "", watermark.position, keys.events]
        fields = watermark.fields(now=datetime.now(UTC))
        args.append(len(fields))
        for item in fields.items():
            args.extend(item)
        args.append(len(boards))
        for suffix, expires, members in boards:
            declared += (build + suffix, keys.prefix + suffix)
            args.extend(("" if expires is None else expires, members))
        args.append(len(labels))
        for suffix, count in labels:
            declared += (build + suffix, keys.prefix + suffix)
            args.append(count)
        args.append(len(old))
        declared += old
        fixed = (keys.watermark, keys.registry, keys.replay_request, keys.owner)
        pipe = self._client.pipeline(transaction=False)
        pipe.eval(_SWAP_LUA, len(fixed) + len(declared), *fixed, *declared, *args)
        self.durably(pipe)

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
        self._answered.clear()
        self._drop_connection()

    def eviction_policy(self) -> str:
        """Redis' ``maxmemory-policy``, read from INFO (which managed services allow)."""
        info = self.call(self._client.info, "memory")
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

    def unlink_matching(self, pattern: str) -> int:
        """Unlink every key matching a SCAN ``pattern``, in small steps (``projector clear``,
        and build keys a crashed rebuild left); return how many."""
        client, removed = self._client, 0
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

    def build_writer(self, ttl_seconds: int) -> BuildWriter:
        """A writer of build keys (``BuildWriter``) on this sink's Redis."""
        return BuildWriter(self._client, ttl_seconds)

    def mark_build_started(self, build: str, ttl_seconds: int) -> None:
        """Set a build's marker before its first key: the swap refuses a build without it."""
        self.call(lambda: self._client.set(f"{build}started", "1", ex=ttl_seconds))

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a Redis call of this writer: a lost connection is ``ConnectionLost``, a node
        that no longer serves the keys (failover) is a demotion."""
        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
        except MOVED_AWAY as exc:
            raise self._demoted(exc) from exc


class BuildWriter:
    """Writes a build's keys (a rebuild's or a backfill's, under its build prefix) in
    pipelined chunks; each key expires on its own if the build never reaches its swap.
    One per loading thread."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._pipe = client.pipeline(transaction=False)
        self._ttl = ttl_seconds
        self.queued = 0

    def zadd(self, key: str, members: dict[str, int]) -> None:
        self._pipe.zadd(key, members)  # type: ignore[arg-type,unused-ignore]
        self._pipe.expire(key, self._ttl)
        self.queued += 1

    def hset(self, key: str, fields: dict[str, str]) -> None:
        self._pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        self._pipe.expire(key, self._ttl)
        self.queued += 1

    def flush(self) -> None:
        """Send what is queued; ``ConnectionLost`` when Redis cannot take it (out of
        memory: a rebuild holds the old and the new boards until its swap)."""
        try:
            self._pipe.execute()
        except redis.exceptions.OutOfMemoryError as exc:
            raise out_of_memory(exc) from exc
        except (redis.ConnectionError, redis.TimeoutError, *MOVED_AWAY) as exc:
            raise ConnectionLost(f"Redis cannot take writes: {exc}", service="redis") from exc
        self.queued = 0


def out_of_memory(exc: Exception) -> ConnectionLost:
    """A rebuild needs room for the old and the new boards at once until the swap."""
    return ConnectionLost(
        "Redis refused the rebuild: out of memory (maxmemory). A rebuild holds the old and "
        f"the new boards until the swap; raise maxmemory or free memory ({exc})",
        service="redis",
    )


def _replication(info: Any, replicas: int) -> tuple[int, int]:
    """From ``INFO replication``: the master's replication offset, and the offset that at
    least ``replicas`` replicas acknowledged (-1 if fewer are connected)."""
    offset, acknowledged = 0, []
    for line in as_text(info).splitlines():
        if line.startswith("master_repl_offset:"):
            offset = int(line.partition(":")[2])
        elif line.startswith("slave") and ",offset=" in line:
            fields = dict(item.split("=", 1) for item in line.partition(":")[2].split(","))
            if fields.get("state") == "online":
                acknowledged.append(int(fields["offset"]))
    acknowledged.sort(reverse=True)
    return offset, acknowledged[replicas - 1] if len(acknowledged) >= replicas else -1


def process_name() -> str:
    """``host:pid`` of this process (how the standbys are listed)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_owner() -> str:
    """A fencing token naming this process and this takeover: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def encode_batch(
    batch: BatchDelta, new: Watermark, *, full: bool = True, registered: Sequence[str] = ()
) -> tuple[list[str], str]:
    """The keys apply_batch.lua touches besides its fixed four (in KEYS order) and its JSON
    argument, which names each key by its index in KEYS (see the script's header)."""
    declared: list[str] = []
    index: dict[str, int] = {}

    def at(key: str) -> int:
        found = index.get(key)
        if found is None:
            declared.append(key)
            found = index[key] = 4 + len(declared)
        return found

    clear_starts = tuple(batch.clear_boards)
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
        labels.append((at(hash_key), set_pairs, deleted))
    expiry, raw = batch.expiry, batch.raw
    # Members and deltas as two arrays per key, built in C; a delta of 0 (a row moved away
    # and back) is left out. The arrays of a key with many members (most of a catch-up's
    # batch) are joined here, the few of a fresh commit's keys written by json.dumps.
    boards: list[list[Any]] = []
    joined: list[str] = []
    # A swap replaces whole boards after the batch's deltas: their old version's deltas are
    # left out (a key they would create is not in the registry read before, so the swap
    # would not remove it; the built board holds every transaction it carried).
    replaced = batch.swap.unlink if batch.swap is not None else ()
    for key, scores in batch.deltas.items():
        if replaced and key.startswith(replaced) and key not in raw:
            continue
        named, values = list(scores), list(scores.values())
        if 0 in values:
            named = [member for member, delta in scores.items() if delta]
            values = [delta for delta in values if delta]
        if not named:
            continue
        expires = expiry.get(key)
        if len(named) < _JOIN_FROM:
            boards.append(
                [at(key), "" if expires is None else expires, named, values, int(key in raw)]
            )
            continue
        when = '""' if expires is None else str(int(expires))
        scores_text = ",".join(map(str, values))
        joined.append(
            f"[{at(key)},{when},{_string_array(named)},[{scores_text}],{int(key in raw)}]"
        )
    document: dict[str, Any] = {
        "w": [x for pair in new.fields(now=datetime.now(UTC), full=full).items() for x in pair],
        "cb": [at(key) for key in registered if clear_starts and key.startswith(clear_starts)],
        "cl": [at(key) for key in sorted(batch.clear_labels)],
        "l": labels,
    }
    if batch.windows:
        document["a"] = [
            [
                at(step.key),
                at(step.old) if step.old else 0,
                [at(k) for k in step.sources],
                list(step.weights),
                step.expires,
            ]
            for step in batch.windows
        ]
    swap = batch.swap
    if swap is not None:
        going = swap.unlink
        document["s"] = {
            "started": at(swap.started),
            "u": [at(key) for key in registered if going and key.startswith(going)],
            "x": [[at(key), members] for key, members in swap.expect],
            "m": [
                [at(base), at(delta), at(final), "" if when is None else when]
                for base, delta, final, when in swap.merge
            ],
        }
    document["b"] = boards  # last: the joined entries go at the end of its array
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    if not joined:
        return declared, text
    deltas = ",".join(joined)
    joined.clear()  # (the parts go before the whole is copied once more: a lower peak)
    return declared, f"{text[:-2]}{',' if boards else ''}{deltas}]}}"


def _string_array(items: list[str]) -> str:
    """``items`` as a JSON array, as json.dumps writes it (without ASCII escapes)."""
    joined = '","'.join(items)
    if items and _JSON_ESCAPED.search(joined) is None:
        return f'["{joined}"]'
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def as_text(value: bytes | str) -> str:
    """A Redis reply element as text."""
    return value.decode() if isinstance(value, bytes) else value
