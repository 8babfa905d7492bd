"""The projector's main loop: stream, project, apply in batches, acknowledge.

A session checks that Redis still matches the slot (else ``RebuildRequired``), then reads
pgoutput frames, feeds whole transactions to the ``Projection`` and applies them with
the watermark in one atomic step; only then is the position confirmed to PostgreSQL.
``run_forever`` retries lost connections with backoff and rebuilds when told to.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import psycopg
import redis
import structlog

from projector.errors import ConnectionLost, ProjectorError, ProtocolError, RebuildRequired
from projector.lsn import format_lsn
from projector.pgoutput import (
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
    pg_time_to_datetime,
)
from projector.projection import Projection
from projector.rebuild import RebuildInterrupted, advisory_lock, rebuild
from projector.replication import PrimaryKeepalive, pg_now_us
from projector.settings import Settings
from projector.sink import MAX_IN_FLIGHT, RedisSink, Watermark
from projector.stream import ReplicationStream, connect, slot_info, system_identifier

log = structlog.get_logger(__name__)

# A lone commit is applied as soon as the socket runs dry; under load a batch is applied
# at the latest this long after its first commit arrived.
_MAX_BATCH_DELAY = 0.010
_STATUS_EVERY = 1.0
# Keepalive positions reach the watermark this often at most (read-your-writes clients wait
# on it when other WAL follows their commit; a busy database sends many keepalives).
_IDLE_ADVANCE_EVERY = 0.1
# A commit received this long after it happened means a backlog (see _Session._behind).
_BEHIND_US = 1_000_000
# Even then (or with clocks that disagree) a batch waits no longer than this.
_MAX_BEHIND_BATCH_AGE = 1.0
_POLL_TIMEOUT = 0.2
# A session that lasted this long resets the reconnect backoff.
_HEALTHY_SESSION = 60.0


class ReplayRequested(ProjectorError):
    """An operator asked (``projector replay``) for a rebuild while we run."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"replay requested ({request_id})")
        self.request_id = request_id


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client with timeouts suited to a long-running writer."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=30.0,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        decode_responses=False,
    )


@dataclass(slots=True)
class _Tx:
    """Bookkeeping of the transaction being received."""

    begin: Begin
    rows: int = 0  # row changes seen so far
    skip_rows: int = 0  # the first N were applied before a restart
    skip_all: bool = False  # fully applied before a restart
    chunk_rows: int = 0  # row changes projected since the last chunk was applied


@contextmanager
def _beating(sink: RedisSink, settings: Settings) -> Iterator[None]:
    """Keep the heartbeat alive (state "rebuilding") while the block runs.

    A rebuild can outlast the heartbeat's TTL many times over (large tables, or a slot
    waiting for old transactions); status must not then call the projector dead.
    """
    done = threading.Event()
    ttl = max(3 * settings.heartbeat_interval, 5.0)

    def beat() -> None:
        while True:
            # An unreachable Redis fails, and is reported by, the rebuild itself.
            with suppress(ConnectionLost):
                sink.beat(ttl, {"slot": settings.slot, "state": "rebuilding"})
            if done.wait(settings.heartbeat_interval):
                return

    thread = threading.Thread(target=beat, name="rebuild-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5.0)


class Worker:
    """Runs the projector until ``stop`` is set."""

    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()

    def run_forever(self) -> None:
        """Stream until stopped; retry lost connections, rebuild Redis when it lost data."""
        delay = 0.5
        replay_id: str | None = None
        reason: str | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if reason is not None:
                    self._rebuild(reason, replay_id)
                    reason, replay_id = None, None
                self._session()
                return
            except RebuildInterrupted as exc:
                log.warning("stopped during a rebuild", error=str(exc))
                return
            except RebuildRequired as exc:
                log.warning("rebuilding Redis from PostgreSQL", reason=exc.reason)
                reason = exc.reason
                delay = 0.5
            except ReplayRequested as exc:
                log.info("replay requested by operator", request=exc.request_id)
                reason, replay_id = "replay requested by operator", exc.request_id
                delay = 0.5
            except ConnectionLost as exc:
                if time.monotonic() - started > _HEALTHY_SESSION:
                    delay = 0.5  # it worked for a while: this is a new outage
                wait = min(delay, self.settings.reconnect_max_delay) * random.uniform(0.8, 1.2)
                log.warning(
                    "connection lost; retrying",
                    service=exc.service,
                    error=str(exc),
                    retry_in=round(wait, 2),
                )
                self.stop.wait(wait)
                delay = min(delay * 2, self.settings.reconnect_max_delay)

    # -- rebuild -----------------------------------------------------------------------

    def _rebuild(self, reason: str, replay_id: str | None) -> None:
        with self._driving_slot() as (_pg, sink), _beating(sink, self.settings):
            rebuild(self.settings, sink, reason=reason, replay_id=replay_id, stop=self.stop)

    # -- streaming ---------------------------------------------------------------------

    def _session(self) -> None:
        with self._driving_slot() as (pg, sink):
            applied = self._check_state(pg, sink)
            _Session(self, sink, applied, pg).run()

    @contextmanager
    def _driving_slot(
        self,
    ) -> Iterator[tuple[psycopg.Connection[tuple[object, ...]], RedisSink]]:
        """Hold the slot's advisory lock (one process drives it) and open the sink."""
        settings = self.settings
        pg = connect(settings.pg_dsn)
        try:
            with advisory_lock(pg, settings.slot, wait=False) as locked:
                if not locked:
                    raise ConnectionLost(
                        f"another projector process holds slot {settings.slot!r}",
                        service="postgres",
                    )
                yield pg, RedisSink(redis_client(settings), settings.key_prefix)
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
        finally:
            pg.close()

    def _check_state(
        self, pg: psycopg.Connection[tuple[object, ...]], sink: RedisSink
    ) -> Watermark:
        """The watermark to resume from; ``RebuildRequired`` when Redis and the slot disagree."""
        slot_name = self.settings.slot
        slot = slot_info(pg, slot_name)
        if slot is None:
            raise RebuildRequired(f"replication slot {slot_name!r} does not exist", slot=slot_name)
        if slot.wal_status == "lost" or slot.confirmed_flush_lsn is None:
            raise RebuildRequired(
                f"replication slot {slot_name!r} was invalidated (wal_status={slot.wal_status})",
                slot=slot_name,
            )
        if slot.active:
            raise ConnectionLost(
                f"replication slot {slot_name!r} is in use by PID {slot.active_pid}",
                service="postgres",
            )
        system_id = system_identifier(pg)
        wm = sink.read_watermark()
        if wm is None:
            raise RebuildRequired("Redis holds no watermark (empty, flushed or lost data)")
        if wm.system_id != system_id:
            raise RebuildRequired(
                f"PostgreSQL is a different cluster (system id {system_id}, "
                f"watermark names {wm.system_id})"
            )
        if wm.slot != slot_name:
            raise RebuildRequired(f"Redis was built from slot {wm.slot!r}, not {slot_name!r}")
        if wm.lsn < slot.confirmed_flush_lsn:
            raise RebuildRequired(
                f"Redis watermark {format_lsn(wm.lsn)} is behind the slot's confirmed "
                f"position {format_lsn(slot.confirmed_flush_lsn)}: Redis lost data",
                slot=slot_name,
                lsn=wm.lsn,
            )
        return wm


class _Session:
    """One connected streaming session; see ``Worker._session``."""

    def __init__(
        self,
        worker: Worker,
        sink: RedisSink,
        applied: Watermark,
        pg: psycopg.Connection[tuple[object, ...]],
    ) -> None:
        settings = worker.settings
        self.pg = pg
        self.settings = settings
        self.stop = worker.stop
        self.sink = sink
        # Sent to Redis (the next compare-and-set expects it) / confirmed by Redis.
        self.applied = applied
        self.acked = applied
        self.in_flight: deque[Watermark] = deque()
        self.projection = Projection(settings.key_prefix, settings.zone, settings.retention)
        self.decoder = Decoder(1)
        self.stream = ReplicationStream(settings.pg_dsn, settings.slot, settings.publication)
        self.tx: _Tx | None = None
        # End LSN and commit time of the newest whole transaction not yet applied.
        self.pending_end: int | None = None
        self.pending_time: int = 0
        self.batch_started = 0.0
        self.confirmed = 0
        self.last_status = 0.0
        self.last_beat = 0.0
        self.last_idle_advance = 0.0
        self.idle_end = 0
        self.last_wal_check = 0.0
        self.last_wal_heartbeat = time.monotonic()

    def run(self) -> None:
        log.info(
            "streaming",
            slot=self.settings.slot,
            publication=self.settings.publication,
            watermark=format_lsn(self.applied.lsn),
        )
        self.stream.open()
        try:
            self.stream.start(self.applied.lsn)
            self._loop()
        finally:
            self.stream.close()
            self.sink.close()

    def _loop(self) -> None:
        stream = self.stream
        decode = self.decoder.decode
        handle = self._handle
        sink = self.sink
        while True:
            quiet = True
            for frame in stream.frames(_POLL_TIMEOUT, sink.reply_fd()):
                quiet = False
                if isinstance(frame, PrimaryKeepalive):
                    self._keepalive(frame.wal_end, frame.reply_requested)
                else:
                    handle(decode(frame.data))
            # The stream ran dry, or Redis answered: apply what is complete, for freshness.
            # While Redis still works on the previous batch this one keeps growing (and the
            # wait above wakes on Redis' answer): big batches when Redis is the bottleneck.
            self._collect()
            if (
                not sink.in_flight
                and self.tx is None
                and self.pending_end is not None
                and (
                    quiet
                    or not self._behind()
                    or time.monotonic() - self.batch_started >= _MAX_BEHIND_BATCH_AGE
                )
            ):
                self._flush()
            self._advance_idle()
            now = time.monotonic()
            if now - self.last_beat >= self.settings.heartbeat_interval:
                self._beat(now)
            if now - self.last_status >= self.settings.status_interval:
                self._send_status(self.acked.lsn)
            if now - self.last_wal_check >= self.settings.status_interval:
                self._check_retained_wal(now)
            interval = self.settings.wal_heartbeat_interval
            if interval and now - self.last_wal_heartbeat >= interval:
                self._emit_wal_heartbeat(now)
            if self.stop.is_set():
                # Not while a transaction is part-received: the batch holds some of its
                # rows, and the slot will send it again whole.
                if self.pending_end is not None and self.tx is None:
                    self._flush()
                while self.sink.in_flight:
                    self._receive()
                self._send_status(self.acked.lsn)
                self.stream.end_copy()
                self.sink.forget_heartbeat()
                log.info("stopped", watermark=format_lsn(self.acked.lsn))
                return

    def _handle(self, msg: object) -> None:
        tx = self.tx
        if tx is not None:
            if isinstance(msg, Insert | Update | Delete | Truncate):
                tx.rows += 1
                if tx.skip_all or tx.rows <= tx.skip_rows:
                    return
                self.projection.on_change(msg)
                tx.chunk_rows += 1
                if tx.chunk_rows >= self.settings.max_tx_changes:
                    self._flush_chunk(tx)
                return
            if isinstance(msg, Commit):
                self._commit(tx, msg)
                return
        if isinstance(msg, Begin):
            self._begin(msg)
        elif isinstance(msg, Relation):
            self.projection.on_relation(msg)
        elif isinstance(msg, LogicalMessage | Origin | Type):
            pass
        else:
            raise ProtocolError(f"unexpected message {type(msg).__name__} in the stream")

    def _begin(self, msg: Begin) -> None:
        applied = self.applied
        tx = _Tx(begin=msg)
        if msg.final_lsn < applied.lsn:
            tx.skip_all = True
        elif msg.final_lsn == applied.tx_lsn:
            tx.skip_rows = applied.tx_rows
            log.info(
                "resuming a large transaction",
                commit_lsn=format_lsn(msg.final_lsn),
                rows_already_applied=applied.tx_rows,
            )
        self.tx = tx

    def _commit(self, tx: _Tx, msg: Commit) -> None:
        self.tx = None
        if tx.skip_all:
            return
        if self.pending_end is None:
            self.batch_started = time.monotonic()
        self.pending_end = msg.end_lsn
        self.pending_time = msg.commit_time
        if self.projection.pending_row_changes >= self.settings.batch_changes:
            self._flush()
        elif (
            (age := time.monotonic() - self.batch_started) >= _MAX_BEHIND_BATCH_AGE
            or (age >= _MAX_BATCH_DELAY and not self._behind())
        ) and not self._collect():
            # While Redis still works on the previous batch, this one keeps growing:
            # bigger batches when Redis is the bottleneck, tiny ones when it is not.
            self._flush()

    def _behind(self) -> bool:
        """Catching up on a backlog: the newest commit received is old already.

        Then batches fill up to ``batch_changes``: fewer, larger Redis scripts aggregate
        more (one update per member and board) and cost less per row. Fresh commits are
        applied at once.
        """
        return pg_now_us() - self.pending_time > _BEHIND_US

    def _flush(self) -> None:
        """Apply every whole transaction received so far, with its watermark."""
        assert self.pending_end is not None
        self._apply(
            Watermark(
                lsn=self.pending_end,
                system_id=self.applied.system_id,
                slot=self.applied.slot,
                commit_time=pg_time_to_datetime(self.pending_time),
            )
        )
        self.pending_end = None
        if time.monotonic() - self.last_status >= _STATUS_EVERY:
            self._send_status(self.acked.lsn)

    def _flush_chunk(self, tx: _Tx) -> None:
        """Apply part of a transaction too large to apply at once, and record how far."""
        applied = self.applied
        lsn = self.pending_end if self.pending_end is not None else applied.lsn
        commit_time = (
            pg_time_to_datetime(self.pending_time)
            if self.pending_end is not None
            else applied.commit_time
        )
        self._apply(
            Watermark(
                lsn=lsn,
                system_id=applied.system_id,
                slot=applied.slot,
                commit_time=commit_time,
                tx_lsn=tx.begin.final_lsn,
                tx_rows=tx.rows,
            )
        )
        self.pending_end = None
        tx.chunk_rows = 0
        log.info(
            "applied a chunk of a large transaction",
            commit_lsn=format_lsn(tx.begin.final_lsn),
            rows_applied=tx.rows,
        )

    def _apply(self, new: Watermark) -> None:
        """Send the accumulated batch with ``new``; Redis runs it while we decode on.

        When the most batches are in flight already, the oldest is collected first.
        """
        batch = self.projection.take_batch()
        if self.sink.in_flight >= MAX_IN_FLIGHT:
            self._receive()
        self.sink.send(batch, new, self.applied)
        self.applied = new
        self.in_flight.append(new)

    def _receive(self) -> None:
        """Collect the oldest batch in flight: only now may its position be confirmed."""
        result = self.sink.receive()
        self.acked = self.in_flight.popleft()
        if result.replay_request:
            raise ReplayRequested(result.replay_request)

    def _collect(self) -> int:
        """Collect every batch Redis has answered (never waits); return how many remain."""
        sink = self.sink
        while sink.in_flight and not sink.busy():
            self._receive()
        return sink.in_flight

    def _keepalive(self, wal_end: int, reply_requested: bool) -> None:
        # The server has sent everything before wal_end: once nothing is in flight, Redis
        # and the slot may both move there (see _advance_idle).
        if wal_end > self.idle_end:
            self.idle_end = wal_end
        if reply_requested:
            self._advance_idle(force=True)
            self._send_status(self.acked.lsn)

    def _advance_idle(self, *, force: bool = False) -> None:
        """Move the watermark to the last keepalive position when nothing is in flight.

        This keeps an idle publication from retaining WAL. At most every
        ``_IDLE_ADVANCE_EVERY`` unless the server asks.
        """
        if self.tx is not None or self.pending_end is not None or self.sink.in_flight:
            return
        if self.idle_end <= self.applied.lsn:
            return
        now = time.monotonic()
        if not force and now - self.last_idle_advance < _IDLE_ADVANCE_EVERY:
            return
        self.last_idle_advance = now
        self._apply(
            Watermark(
                lsn=self.idle_end,
                system_id=self.applied.system_id,
                slot=self.applied.slot,
                commit_time=self.applied.commit_time,
            )
        )
        self._receive()
        self._send_status(self.acked.lsn)

    def _send_status(self, lsn: int) -> None:
        if lsn < self.confirmed:
            lsn = self.confirmed
        self.stream.send_status(lsn)
        self.confirmed = lsn
        self.last_status = time.monotonic()

    def _check_retained_wal(self, now: float) -> None:
        self.last_wal_check = now
        info = slot_info(self.pg, self.settings.slot)
        if info is not None and (info.retained_bytes or 0) > self.settings.wal_warning_bytes:
            log.warning(
                "slot retains much WAL",
                slot=self.settings.slot,
                retained_bytes=info.retained_bytes,
                threshold=self.settings.wal_warning_bytes,
                wal_status=info.wal_status,
            )

    def _emit_wal_heartbeat(self, now: float) -> None:
        """Write a tiny logical message so even a database idle for hours moves the slot."""
        self.last_wal_heartbeat = now
        self.pg.execute(
            "SELECT pg_logical_emit_message(false, 'projector-heartbeat', %s)",
            (self.settings.slot,),
        )

    def _beat(self, now: float) -> None:
        self.last_beat = now
        ttl = max(3 * self.settings.heartbeat_interval, 5.0)
        self.sink.beat(
            ttl,
            {"slot": self.settings.slot, "lsn": format_lsn(self.acked.lsn), "state": "streaming"},
        )
        if not self.sink.in_flight:
            # Otherwise a flush of Redis goes unnoticed until the publication's next write.
            stored = self.sink.read_watermark()
            if stored is None or stored.position != self.acked.position:
                raise RebuildRequired(
                    "Redis holds no watermark: it lost its data or was flushed"
                    if stored is None
                    else f"Redis watermark moved under us (expected {self.acked.position}, "
                    f"found {stored.position})",
                    slot=self.settings.slot,
                )
        request = self.sink.replay_request()
        if request:
            raise ReplayRequested(request)
