"""The projector's main loop: stream, project, apply in batches, acknowledge.

A session checks that Redis provably matches PostgreSQL (else ``RebuildRequired``, or a
``ConfigError`` that refuses to start), then reads pgoutput frames and carries out what the
pure ``Session`` decides: batches with their watermark to Redis in one atomic step, and only
then the position to PostgreSQL. ``run_forever`` retries lost connections with backoff and
rebuilds when told to.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg
import redis
import structlog

from projector import redis_nodes
from projector.backfill import Backfill, BuildRestart
from projector.core.boards import Board, Table
from projector.core.errors import (
    BoardsChanged,
    ConfigError,
    ConnectionLost,
    ProjectorError,
    RebuildRequired,
)
from projector.core.fingerprint import BoardChange, ProjectionConfig, board_change, recorded_boards
from projector.core.lsn import format_lsn
from projector.core.pgoutput import Decoder
from projector.core.projection import BatchDelta, Projection
from projector.core.replication import PrimaryKeepalive
from projector.core.session import Actions, Confirm, InFlight, Receive, Seal, Send, Session
from projector.core.trust import slot_problem, watermark_problem
from projector.core.watermark import Watermark, encode_unavailable
from projector.metrics import ProjectorMetrics
from projector.presence import Presence
from projector.rebuild import RebuildInterrupted, rebuild
from projector.schema import partition_states, schema_problems
from projector.settings import Settings
from projector.sink import RedisSink, new_owner
from projector.standby import SlotLock
from projector.stream import ReplicationStream, ServerPosition, pg_now_us, slot_info

log = structlog.get_logger(__name__)

_POLL_TIMEOUT = 0.2
# A session that lasted this long resets the reconnect backoff.
_HEALTHY_SESSION = 60.0


class _StoppedStandingBy(ProjectorError):
    """``stop`` was set while another process drove the slot."""


@dataclass(frozen=True, slots=True)
class _Start:
    """What a streaming session starts from: the watermark, the boards that stream
    (``live``), a build beside them (``change``), the declared boards that cannot be
    projected (``unavailable``: board -> problem) and the partitions seen at the start."""

    watermark: Watermark
    live: tuple[Board, ...]
    change: BoardChange | None
    effective: tuple[Board, ...]
    unavailable: dict[str, str]
    partitions: dict[Table, str]


class ReplayRequested(ProjectorError):
    """An operator asked (``projector replay``) for a rebuild while we run."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"replay requested ({request_id})")
        self.request_id = request_id


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client (of the master) with timeouts suited to a long-running writer."""
    return redis_nodes.client(settings, health_check_interval=30)


def open_sink(settings: Settings, owner: str = "") -> RedisSink:
    """The projector's sink, with its fencing token and durability settings."""
    return RedisSink(
        redis_client(settings),
        settings.keys,
        owner=owner,
        min_replicas=settings.redis_min_replicas,
        replica_timeout=settings.redis_replica_timeout,
    )


@contextmanager
def _beating(sink: RedisSink, settings: Settings, metrics: ProjectorMetrics) -> Iterator[None]:
    """Keep the heartbeat alive (state "rebuilding") while the block runs.

    A rebuild can outlast the heartbeat's TTL many times over (large tables, or a slot
    waiting for old transactions); status must not then call the projector dead.
    """
    done = threading.Event()
    ttl = settings.heartbeat_ttl
    presence = Presence(sink)

    def beat() -> None:
        while True:
            # An unreachable Redis fails, and is reported by, the rebuild itself.
            with suppress(ConnectionLost):
                presence.beat(ttl, {"slot": settings.slot, "state": "rebuilding"})
            metrics.progress()  # a long query is progress too
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

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event | None = None,
        metrics: ProjectorMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        # The wall clock (Unix seconds) that decides the local date: which buckets are live
        # and when the rolling windows move (a test drives it).
        self.clock = clock
        self.metrics = metrics or ProjectorMetrics()
        self._announced = 0.0
        self._standby_sink: RedisSink | None = None  # while standing by: to announce it
        # The slot's lock, held on from a session into the rebuild it asked for and from a
        # rebuild into its session: no standby or `replay` takes the slot in between.
        self._kept_lock: SlotLock | None = None
        # Boards the stream found it cannot project (board -> problem): the next session
        # drops them whatever the catalog says now (the stream's layout is older).
        self._broken: dict[str, str] = {}

    def run_forever(self) -> None:
        """Stream until stopped; retry lost connections, rebuild Redis when it lost data."""
        try:
            self._run()
        finally:
            lock, self._kept_lock = self._kept_lock, None
            if lock is not None:
                lock.close()

    def _run(self) -> None:
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
            except _StoppedStandingBy:
                log.info("stopped while standing by")
                return
            except RebuildRequired as exc:
                log.warning("rebuilding Redis from PostgreSQL", reason=exc.reason)
                self.metrics.rebuild(exc.reason)
                reason = exc.reason
                delay = 0.5
            except BuildRestart as exc:
                log.warning("building boards again", reason=str(exc))
            except BoardsChanged as exc:
                for board, problem in exc.broken.items():
                    log.error(
                        "board cannot be projected; dropping it, the others stream on",
                        board=board,
                        problem=problem,
                    )
                if not exc.broken:
                    log.warning("boards change", reason=exc.reason)
                self._broken.update(exc.broken)
                delay = 0.5
            except ReplayRequested as exc:
                log.info("replay requested by operator", request=exc.request_id)
                self.metrics.rebuild("replay")
                reason, replay_id = "replay requested by operator", exc.request_id
                delay = 0.5
            except ConnectionLost as exc:
                self.metrics.reconnect(exc.service)
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
        metrics = self.metrics
        with (
            self._driving_slot(keep_after=True) as (_lock, sink),
            _beating(sink, self.settings, metrics),
        ):
            metrics.state("rebuilding")
            rebuild(
                self.settings,
                sink,
                reason=reason,
                replay_id=replay_id,
                progress=lambda _state: metrics.progress(),
                stop=self.stop,
            )

    # -- streaming ---------------------------------------------------------------------

    def _session(self) -> None:
        settings = self.settings
        with self._driving_slot() as (lock, sink):
            pg = lock.pg
            sink.require_no_eviction()
            stream = ReplicationStream(settings.pg_dsn, settings.slot, settings.publication)
            try:
                stream.open()
                start = self._check_state(pg, sink, stream.identify_system())
                _Streaming(self, sink, stream, lock, start).run()
            finally:
                stream.close()
                sink.close()

    @contextmanager
    def _driving_slot(self, *, keep_after: bool = False) -> Iterator[tuple[SlotLock, RedisSink]]:
        """Drive the slot: stand by until this process holds its lock, and take it over from
        a former driver. The sink has a fresh fencing token, for the caller to claim Redis
        with before it reads state it trusts (a rebuild claims just before its swap).

        The lock is kept for the next phase when this one ends asking for a rebuild, or
        ends normally with ``keep_after`` (a rebuild, which its session follows)."""
        settings = self.settings
        lock = self._kept_lock or SlotLock(settings, self.stop)
        self._kept_lock = None
        keep = False
        try:
            if lock.conn is None:
                try:
                    lock.acquire(on_standby=self._standing_by)
                finally:
                    self._stop_announcing()
                if lock.conn is None:
                    raise _StoppedStandingBy
            else:  # kept from the phase before
                lock.check()  # the keeper thread found PostgreSQL ended the lock's session
            sink = open_sink(settings, new_owner())
            try:
                lock.take_slot_over()
                self.metrics.role("active")
                log.info("active", slot=settings.slot, owner=sink.owner)
                yield lock, sink
                keep = keep_after
            except (RebuildRequired, ReplayRequested, BuildRestart, BoardsChanged):
                keep = True
                raise
            finally:
                sink.close()
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
        finally:
            if keep and not self.stop.is_set():
                self._kept_lock = lock
            else:
                lock.close()

    def _standing_by(self, first: bool) -> None:
        """Called at each poll while another process drives the slot: say so, now and then
        (in the log once, in Redis for ``status`` every heartbeat)."""
        self.metrics.role("standby")
        self.metrics.progress()
        if first:
            log.info("standby", slot=self.settings.slot, reason="another process drives the slot")
        now = time.monotonic()
        if not first and now - self._announced < self.settings.heartbeat_interval:
            return
        self._announced = now
        try:
            if self._standby_sink is None:
                self._standby_sink = open_sink(self.settings)
            Presence(self._standby_sink).announce_standby(self.settings.heartbeat_ttl)
        except ConnectionLost as exc:
            log.debug("cannot announce the standby in Redis", error=str(exc))
            self._stop_announcing()  # a fresh client next time (a failover may have moved it)

    def _stop_announcing(self) -> None:
        sink, self._standby_sink = self._standby_sink, None
        if sink is not None:
            sink.close()

    def _check_state(
        self,
        pg: psycopg.Connection[tuple[object, ...]],
        sink: RedisSink,
        server: ServerPosition,
    ) -> _Start:
        """The watermark to resume from; ``RebuildRequired`` unless Redis provably matches.

        Redis must hold a watermark of this cluster, slot and timeline, not behind what the
        slot confirmed nor ahead of the server's WAL, built under this configuration.
        """
        slot_name = self.settings.slot
        slot = slot_info(pg, slot_name)
        problem = slot_problem(
            slot_name,
            exists=slot is not None,
            wal_status=slot.wal_status if slot else None,
            confirmed=slot.confirmed_flush_lsn if slot else None,
        )
        if problem is not None or slot is None:
            raise RebuildRequired(problem or "no slot", slot=slot_name)
        if slot.active:
            raise ConnectionLost(
                f"replication slot {slot_name!r} is in use by PID {slot.active_pid}",
                service="postgres",
            )
        wm = _claimed_watermark(sink)
        problem = watermark_problem(
            wm,
            slot=slot_name,
            system_id=server.system_id,
            confirmed=slot.confirmed_flush_lsn,
            server_lsn=server.flush_lsn,
            timeline=server.timeline,
        )
        if problem is not None:
            raise RebuildRequired(problem, slot=slot_name, lsn=wm.lsn)
        return self._boards_to_stream(pg, sink, wm)

    def _boards_to_stream(
        self, pg: psycopg.Connection[tuple[object, ...]], sink: RedisSink, wm: Watermark
    ) -> _Start:
        """Which boards stream, which are built beside them, and which are dropped now.

        A declared board that the live schema (or the stream, before) does not fit is
        unavailable: Redis drops it, in one atomic step that records the boards it still
        holds, and the others stream on. ``RebuildRequired`` when only a full rebuild
        makes Redis match this configuration; ``ConfigError`` when no board fits at all.
        """
        settings = self.settings
        declared = settings.boards
        problems = schema_problems(pg, declared, settings.publication)
        effective = tuple(b for b in declared if b.name not in problems)
        if not effective:
            raise ConfigError("; ".join(problems.values()))
        partitions = partition_states(pg, {b.table for b in declared})
        config = settings.projection_config(effective, partitions)
        unavailable = encode_unavailable(problems)
        change = None
        # Boards the stream broke but the schema fits now: their changes since the break
        # were not applied; built again from a snapshot.
        stale = set(self._broken) - set(problems)
        if wm.fingerprint != config.fingerprint or stale:
            recorded = recorded_boards(wm.config) or {}
            broken = {n for n in recorded if n in problems or n in self._broken}
            differing = [b for n, b in recorded.items() if n not in broken and b not in declared]
            broken |= set(schema_problems(pg, differing))  # as recorded, still projectable?
            change = board_change(wm.config, config, effective, broken)
            if change is None:
                raise RebuildRequired(
                    "the configuration changed since Redis was built: "
                    + "; ".join(config.changes_since(wm.config)),
                    slot=settings.slot,
                )
            log.warning("boards changed; building them", changes=change.describe())
        if change is not None and (change.drop or not change.build):
            # Whatever is dropped goes now; with nothing to build, this is the target.
            recorded_config = ProjectionConfig(wm.config, wm.fingerprint)
            target = (
                config if not change.build else recorded_config.without(b.name for b in change.drop)
            )
            wm = self._reconfigure(sink, wm, change.drop, target, unavailable)
        elif wm.unavailable != unavailable:
            wm = self._reconfigure(
                sink, wm, (), ProjectionConfig(wm.config, wm.fingerprint), unavailable
            )
        self._broken.clear()  # recorded now: Redis holds none of those boards
        for board, problem in problems.items():
            log.error("board unavailable; the others stream on", board=board, problem=problem)
        self.metrics.unavailable(problems)
        if change is not None and not change.build:
            change = None
        live = change.live if change is not None else effective
        return _Start(wm, live, change, effective, problems, partitions)

    def _reconfigure(
        self,
        sink: RedisSink,
        wm: Watermark,
        drop: tuple[Board, ...],
        config: ProjectionConfig,
        unavailable: str,
    ) -> Watermark:
        """Drop ``drop`` and record ``config`` and ``unavailable``, atomically, at the same
        position: the first change not applied to a dropped board comes after it."""
        keys = self.settings.keys
        new = replace(
            wm, fingerprint=config.fingerprint, config=config.text, unavailable=unavailable
        )
        sink.apply(BatchDelta(clear_boards={keys.board_prefix(b.name) for b in drop}), new, wm)
        if drop:
            log.warning("boards dropped from Redis", boards=[b.name for b in drop])
        return new


def _claimed_watermark(sink: RedisSink) -> Watermark:
    """Claim Redis (a former driver that wakes up writes nothing from now on), then read the
    watermark it cannot move any more; ``RebuildRequired`` without one (then the rebuild
    claims before its swap: nothing is written before it must be)."""
    if sink.read_watermark() is not None:
        Presence(sink).claim()
        wm = sink.read_watermark()
        if wm is not None:
            return wm
    raise RebuildRequired("Redis holds no watermark (empty, flushed or lost data)")


class _Streaming:
    """The I/O of one connected session: frames in, the ``Session``'s actions carried out."""

    def __init__(
        self,
        worker: Worker,
        sink: RedisSink,
        stream: ReplicationStream,
        lock: SlotLock,
        start: _Start,
    ) -> None:
        settings = worker.settings
        self.settings = settings
        self.stop = worker.stop
        self.sink = sink
        self.presence = Presence(sink)
        self.stream = stream
        self.lock = lock
        self.pg = lock.pg
        self.start = start
        applied, change = start.watermark, start.change
        self.backfill = Backfill(settings, change, sink) if change is not None else None
        self.session = Session(
            applied,
            Projection(
                start.live,
                settings.keys,
                settings.zone,
                settings.retention,
                worker.clock,
                building=change.build if change is not None else (),
                building_keys=self.backfill.delta_keys if self.backfill is not None else None,
                partitioned=start.partitions,
            ),
            max_tx_changes=settings.max_tx_changes,
            batch_changes=settings.batch_changes,
            status_interval=settings.status_interval,
            clock=time.monotonic,
            now_us=pg_now_us,
        )
        self.decoder = Decoder(1)
        self.metrics = worker.metrics
        self.server_end = 0
        self.last_beat = 0.0
        self.last_wal_check = 0.0
        self.last_wal_heartbeat = time.monotonic()

    def run(self) -> None:
        session = self.session
        log.info(
            "streaming",
            slot=self.settings.slot,
            publication=self.settings.publication,
            watermark=format_lsn(session.applied.lsn),
        )
        if self.backfill is not None:
            self.metrics.rebuild("config_changed")
            session.building(self.backfill.start())
            # A message after the build's snapshot: once it arrives, every transaction the
            # snapshot holds has arrived too, even on an idle database.
            self._emit_wal_heartbeat(time.monotonic())
        try:
            self._stream()
        finally:
            if self.backfill is not None:
                self.backfill.close()

    def _stream(self) -> None:
        session = self.session
        self.stream.start(session.applied.lsn)
        metrics = self.metrics
        metrics.state("streaming")
        stream = self.stream
        sink = self.sink
        decode = self.decoder.decode
        message = session.message
        keepalive = session.keepalive
        perform = self._perform
        while True:
            quiet = True
            for frame in stream.frames(_POLL_TIMEOUT, sink.reply_fd()):
                quiet = False
                if frame.wal_end > self.server_end:
                    self.server_end = frame.wal_end
                if isinstance(frame, PrimaryKeepalive):
                    actions = keepalive(frame.wal_end, frame.reply_requested)
                else:
                    actions = message(decode(frame.data))
                if actions:
                    perform(actions)
            # The stream ran dry, or Redis answered: apply what is complete, for freshness.
            # While Redis still works on the previous batch this one keeps growing (and the
            # wait above wakes on Redis' answer): big batches when Redis is the bottleneck.
            self._collect()
            perform(session.tick(quiet=quiet))
            metrics.progress()
            if self.backfill is not None:
                self._check_backfill(self.backfill)
            now = time.monotonic()
            self.lock.check()
            if now - self.last_beat >= self.settings.heartbeat_interval:
                self._beat(now)
            if now - self.last_wal_check >= self.settings.status_interval:
                self._check_retained_wal(now)
            interval = self.settings.wal_heartbeat_interval
            if interval and now - self.last_wal_heartbeat >= interval:
                self._emit_wal_heartbeat(now)
            if self.stop.is_set():
                metrics.state("stopping")
                perform(session.stop())
                stream.end_copy()
                self.presence.forget_heartbeat()
                log.info("stopped", watermark=format_lsn(session.acked.lsn))
                return

    def _perform(self, actions: Actions) -> None:
        """Carry out the session's actions in order; any failure ends the session."""
        for action in actions:
            if isinstance(action, Send):
                self.sink.send(action.batch, action.new, action.expected)
                self.metrics.in_flight(self.sink.in_flight)
                if action.new.tx_lsn:
                    log.info(
                        "applied a chunk of a large transaction",
                        commit_lsn=format_lsn(action.new.tx_lsn),
                        rows_applied=action.new.tx_rows,
                    )
            elif isinstance(action, Receive):
                result = self.sink.receive()
                self._applied(action.batch)
                if result.durable is not None:
                    self.session.durable(result.durable)
                if result.replay_request:
                    raise ReplayRequested(result.replay_request)
            elif isinstance(action, Confirm):
                self.stream.send_status(action.lsn)
            elif isinstance(action, Seal):
                self.sink.seal()
            else:
                log.info(
                    "resuming a large transaction",
                    commit_lsn=format_lsn(action.tx_lsn),
                    rows_already_applied=action.rows_applied,
                )

    def _applied(self, batch: InFlight) -> None:
        """Redis answered ``batch``: count it, and how far Redis is behind."""
        metrics = self.metrics
        metrics.batch_applied(batch.kinds, batch.transactions, time.monotonic() - batch.sent_at)
        metrics.in_flight(self.sink.in_flight)
        acked = batch.watermark
        behind = max(0, self.server_end - acked.lsn)
        seconds = 0.0
        if behind and acked.commit_time is not None:
            seconds = max(0.0, (datetime.now(UTC) - acked.commit_time).total_seconds())
        metrics.lag(behind, seconds)

    def _check_backfill(self, backfill: Backfill) -> None:
        """Once the boards being built are loaded, make them live between transactions."""
        session = self.session
        if session.projection.building_truncated:
            raise BuildRestart("a TRUNCATE emptied a table of the boards being built")
        if not session.can_swap() or not backfill.ready():
            return
        config = backfill.change.target
        assert config is not None
        spec = backfill.swap(session.projection.built_keys)
        self._perform(session.swap(spec, config.fingerprint, config.text))
        session.built(self.start.effective)
        self.backfill = None
        log.info("boards built and live", boards=[b.name for b in backfill.change.build])

    def _collect(self) -> None:
        """Take every answer Redis has sent already (never waits)."""
        session, sink = self.session, self.sink
        while session.in_flight and not sink.busy():
            self._perform(session.receive())

    def _check_retained_wal(self, now: float) -> None:
        self.last_wal_check = now
        info = slot_info(self.pg, self.settings.slot)
        if info is not None:
            self.metrics.retained_wal(info.retained_bytes or 0)
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
        sink, session = self.sink, self.session
        ttl = self.settings.heartbeat_ttl
        lsn = format_lsn(session.acked.lsn)
        presence = self.presence
        presence.require_ownership()  # a zombie must not pass itself off as the live projector
        presence.beat(ttl, {"slot": self.settings.slot, "lsn": lsn, "state": "streaming"})
        # Someone may have switched Redis to an evicting policy while we run.
        sink.require_no_eviction()
        if not session.in_flight:
            # Otherwise a flush of Redis goes unnoticed until the publication's next write.
            stored = sink.read_watermark()
            if stored is None or stored.position != session.acked.position:
                presence.require_ownership()  # moved by a process that took over: stand by
                raise RebuildRequired(
                    "Redis holds no watermark: it lost its data or was flushed"
                    if stored is None
                    else f"Redis watermark moved under us (expected {session.acked.position}, "
                    f"found {stored.position})",
                    slot=self.settings.slot,
                )
        request = presence.replay_request()
        if request:
            raise ReplayRequested(request)
        self._check_boards()

    def _check_boards(self) -> None:
        """``BoardsChanged`` when partition maintenance changed what a board's table holds
        (no row change reports it), or an unavailable board fits its table again."""
        start = self.start
        if start.partitions:
            now = partition_states(self.pg, start.partitions)
            changed = sorted(str(t) for t in start.partitions if now.get(t) != start.partitions[t])
            if changed:
                raise BoardsChanged(
                    f"partitions of {', '.join(changed)} were attached, detached, dropped, "
                    "truncated or rewritten: building their boards again"
                )
        if start.unavailable:
            settings = self.settings
            waiting = [b for b in settings.boards if b.name in start.unavailable]
            problems = schema_problems(self.pg, waiting, settings.publication)
            fixed = set(start.unavailable) - set(problems)
            if fixed:
                raise BoardsChanged(f"boards {sorted(fixed)} fit their tables again: building them")
            if problems != start.unavailable:  # another problem now: say that one
                raise BoardsChanged("the problems of unavailable boards changed")
