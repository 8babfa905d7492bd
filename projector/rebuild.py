"""Rebuild Redis from a consistent PostgreSQL snapshot.

The slot is (re)created with an exported snapshot; every board still inside retention,
the all-time board and the name hash are computed from that snapshot into build keys,
then swapped in with the watermark set to the slot's consistent point, atomically.
Changes committed meanwhile wait in the new slot, so none is lost or counted twice.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import redis
import structlog
from psycopg import sql

from projector.core import queries
from projector.core.boards import Board, Labels, Table, label_sources
from projector.core.buckets import (
    Period,
    bucket_ids_for_date,
    expires_at,
    oldest_retained_bucket_start,
)
from projector.core.errors import ConfigError, ConnectionLost, ProjectorError, RebuildRequired
from projector.core.fingerprint import ProjectionConfig
from projector.core.lsn import format_lsn
from projector.core.watermark import Watermark, encode_unavailable
from projector.presence import Presence
from projector.schema import partition_states, schema_problems, storage_states
from projector.settings import Settings
from projector.sink import Fenced, RedisSink, out_of_memory
from projector.standby import LOCK_CLASS
from projector.stream import ReplicationStream, ServerPosition, connect, drop_slot, slot_info

log = structlog.get_logger(__name__)

_BUILD_TTL = 24 * 3600  # build keys of a crashed rebuild disappear on their own
_CHUNK = 5_000
_PERIOD_INDEX = {Period.DAY: 0, Period.WEEK: 1, Period.MONTH: 2, Period.YEAR: 3}

ProgressFn = Callable[["RebuildProgress"], None]


class RebuildInterrupted(ProjectorError):
    """The process was asked to stop during a rebuild (the next start rebuilds again)."""


@dataclass(slots=True)
class RebuildProgress:
    """How far a rebuild has come; reported to logs and to ``projector replay``."""

    phase: str = "starting"
    rows: int = 0
    boards: int = 0
    started: float = field(default_factory=time.monotonic)
    lsn: int | None = None
    last_report: float = 0.0

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0


@contextmanager
def advisory_lock(
    conn: psycopg.Connection[tuple[object, ...]], slot: str, *, wait: bool
) -> Iterator[bool]:
    """Hold the session advisory lock that says "one process drives this slot"."""
    if wait:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, slot))
        locked = True
    else:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, slot)
        ).fetchone()
        locked = bool(row and row[0])
    try:
        yield locked
    finally:
        if locked and not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, slot))


def rebuild(
    settings: Settings,
    sink: RedisSink,
    *,
    reason: str,
    replay_id: str | None = None,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> Watermark:
    """Recreate the slot and rebuild every board from its snapshot; return the new watermark.

    The caller must hold ``advisory_lock`` for the slot: nobody else may stream from it.
    """
    state = RebuildProgress()
    report = reporter(sink, replay_id, state, progress, stop)
    log.info("rebuild started", reason=reason, slot=settings.slot)
    sink.require_no_eviction()
    pg = connect(settings.pg_dsn)
    try:
        boards, config, unavailable = _boards_to_build(pg, settings)
        # A walsender we just left may need a moment to let go of the slot.
        deadline = time.monotonic() + 10.0
        while (existing := slot_info(pg, settings.slot)) is not None and existing.active:
            if time.monotonic() > deadline:
                raise ConnectionLost(
                    f"replication slot {settings.slot!r} is in use by PID {existing.active_pid}",
                    service="postgres",
                )
            time.sleep(0.1)
        drop_slot(pg, settings.slot)
    finally:
        pg.close()
    discard_stale_builds(sink)
    build = settings.keys.build(uuid.uuid4().hex[:12])
    state.phase = "creating slot"
    report()
    conns, server = snapshot_connections(settings, state, settings.rebuild_parallelism)
    try:
        assert state.lsn is not None
        snapshot_time = conns[0].execute("SELECT now()").fetchone()
        mark_started(sink, build)
        built = build_boards(settings, boards, sink, conns, build, state, report, with_labels=True)
    finally:
        for conn in conns:
            conn.close()
    watermark = Watermark(
        lsn=state.lsn,
        system_id=server.system_id,
        slot=settings.slot,
        commit_time=snapshot_time[0] if snapshot_time else datetime.now(UTC),  # type: ignore[arg-type]
        timeline=server.timeline,
        fingerprint=config.fingerprint,
        config=config.text,
        unavailable=encode_unavailable(unavailable),
    )
    state.phase = "swapping"
    report()
    if sink.owner:
        # The caller drives the slot: a former driver that wakes up is fenced.
        Presence(sink).claim()
    _swap(sink, build, built, watermark, replay_id)
    state.phase = "done"
    report()
    log.info(
        "rebuild finished",
        rows=state.rows,
        boards=len(built.boards),
        seconds=round(time.monotonic() - state.started, 2),
        watermark=format_lsn(state.lsn),
    )
    return watermark


def _boards_to_build(
    pg: psycopg.Connection[tuple[object, ...]], settings: Settings
) -> tuple[tuple[Board, ...], ProjectionConfig, dict[str, str]]:
    """The declared boards the live schema fits, their configuration, and the problem of
    each other one (left unavailable; ``ConfigError`` when none fits). Read before the
    snapshot: partition maintenance after this read but before the snapshot makes the
    recorded partitions differ from the catalog, so the board is built once more."""
    problems = schema_problems(pg, settings.boards, settings.publication)
    boards = tuple(b for b in settings.boards if b.name not in problems)
    if not boards:
        raise ConfigError("; ".join(problems.values()))
    for board, problem in problems.items():
        log.error("board unavailable; the others are built", board=board, problem=problem)
    partitions = partition_states(pg, {b.table for b in settings.boards})
    return boards, settings.projection_config(boards, partitions), problems


def snapshot_connections(
    settings: Settings, state: RebuildProgress, count: int, *, temporary_slot: str | None = None
) -> tuple[list[psycopg.Connection[tuple[object, ...]]], ServerPosition]:
    """Create the slot (or a temporary one of that name, gone with its connection); return
    ``count`` connections inside transactions on its snapshot, and the server's identity
    and timeline. ``state.lsn`` becomes the slot's consistent point."""
    conns: list[psycopg.Connection[tuple[object, ...]]] = []
    slot = temporary_slot or settings.slot
    with ReplicationStream(settings.pg_dsn, slot, settings.publication) as stream:
        server = stream.identify_system()
        consistent_point, snapshot = stream.create_slot(temporary=temporary_slot is not None)
        try:
            for _ in range(count):
                conn = psycopg.connect(settings.pg_dsn, autocommit=False)
                conns.append(conn)
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        except psycopg.OperationalError as exc:
            for conn in conns:
                conn.close()
            raise ConnectionLost(
                f"cannot connect to PostgreSQL: {exc}", service="postgres"
            ) from exc
    # The replication connection is closed: each imported snapshot stays with its connection.
    state.lsn = consistent_point
    log.info("slot created", slot=slot, consistent_point=format_lsn(consistent_point))
    return conns, server


@dataclass(frozen=True, slots=True)
class Built:
    """What a build loaded: each board's key suffix and expiry, the label hashes' suffixes,
    and how many members or fields it wrote per key suffix (the swap checks them all)."""

    boards: list[tuple[str, int | None]]
    labels: list[str]
    counts: dict[str, int]


def build_boards(
    settings: Settings,
    boards: tuple[Board, ...],
    sink: RedisSink,
    conns: list[psycopg.Connection[tuple[object, ...]]],
    build: str,
    state: RebuildProgress,
    report: Callable[[], None],
    *,
    with_labels: bool,
) -> Built:
    """Load ``boards`` (and, ``with_labels``, their label hashes) into ``build``-prefixed keys;
    return what was loaded.

    Each query runs on its own connection (same snapshot) so PostgreSQL aggregates one
    period while this process loads another into Redis.
    """
    keys = settings.keys
    tz = settings.zone
    now = time.time()
    lock = threading.Lock()
    counts: dict[str, int] = {}
    Found = list[tuple[str, int | None]]

    def labels_task(labels: Labels, conn: psycopg.Connection[tuple[object, ...]]) -> Found:
        with conn.cursor(name="rebuild_labels") as cur:
            cur.itersize = _CHUNK
            cur.execute(queries.all_labels(labels))
            loader = _Loader(sink, state, report, lock, counts)
            loader.load_hash(build + keys.without_prefix(keys.labels(labels)), cur)
            loader.finish()
        return []

    def period_task(
        board: Board, period: Period, conn: psycopg.Connection[tuple[object, ...]]
    ) -> Found:
        since = oldest_retained_bucket_start(period, tz, settings.retention, datetime.now(UTC))
        assert since is not None
        index = _PERIOD_INDEX[period]
        cache: dict[date, tuple[str, int | None] | None] = {}

        def suffix_for(start: date) -> tuple[str, int | None] | None:
            if start not in cache:
                bucket = bucket_ids_for_date(start)[index]
                expires = expires_at(period, bucket, tz, settings.retention)
                live = expires is None or expires > now
                suffix = keys.without_prefix(keys.board(board.name, period, bucket))
                cache[start] = (suffix, expires) if live else None
            return cache[start]

        loader = _Loader(sink, state, report, lock, counts)
        with conn.cursor(name="rebuild_period") as cur:
            cur.itersize = _CHUNK * 4
            cur.execute(
                queries.period_scores(board, period), {"tz": settings.timezone, "since": since}
            )
            found = list(loader.load_boards(build, cur, suffix_for))
        loader.finish()
        return found

    def all_time_task(board: Board, conn: psycopg.Connection[tuple[object, ...]]) -> Found:
        suffix = keys.without_prefix(keys.board(board.name, Period.ALL, "all"))
        loader = _Loader(sink, state, report, lock, counts)
        with conn.cursor(name="rebuild_all") as cur:
            cur.itersize = _CHUNK * 4
            cur.execute(queries.all_time_scores(board))
            members = loader.load_one(f"{build}{suffix}", cur)
        loader.finish()
        return [(suffix, None)] if members else []

    # Longest first: all-time and year read every row, the day boards only the last weeks.
    tasks: list[Callable[[psycopg.Connection[tuple[object, ...]]], Found]] = []
    for period in (Period.ALL, Period.YEAR, Period.MONTH, Period.WEEK, Period.DAY):
        for board in boards:
            if period not in board.periods:
                continue
            if period is Period.ALL:
                tasks.append(functools.partial(all_time_task, board))
            else:
                tasks.append(functools.partial(period_task, board, period))
    label_suffixes = []
    for labels in label_sources(boards) if with_labels else ():
        tasks.append(functools.partial(labels_task, labels))
        label_suffixes.append(keys.without_prefix(keys.labels(labels)))
    read = {b.table for b in boards} | {
        labels.table for labels in (label_sources(boards) if with_labels else ())
    }
    seen = storage_states(conns[0], read)  # as the snapshot sees them
    state.phase = "loading boards"
    report()
    idle = list(conns)
    found: Found = []
    with ThreadPoolExecutor(max_workers=len(conns), thread_name_prefix="rebuild") as pool:
        pending: dict[Future[Found], Any] = {}
        for task in tasks:
            if not idle:
                done_future = next(as_completed(pending))
                idle.append(pending.pop(done_future))
                found.extend(done_future.result())
            conn = idle.pop()
            pending[pool.submit(task, conn)] = conn
        for future in as_completed(pending):
            found.extend(future.result())
    _require_same_storage(settings, seen)
    return Built(found, label_suffixes, {key.removeprefix(build): n for key, n in counts.items()})


class BuildRaced(RebuildRequired):
    """A table the build read was rewritten or truncated after the build's snapshot: to
    that snapshot it may have looked empty, and no row change in the stream says so."""


def _require_same_storage(settings: Settings, seen: dict[Table, str]) -> None:
    """``BuildRaced`` unless every table read still has the storage the snapshot saw (a
    rewrite between the snapshot and the read would have hidden its rows; one after the
    read is harmless, but the two cannot be told apart: the build starts again)."""
    pg = connect(settings.pg_dsn)
    try:
        now = storage_states(pg, seen)
    finally:
        pg.close()
    changed = sorted(str(table) for table in seen if now[table] != seen[table])
    if changed:
        raise BuildRaced(
            f"{', '.join(changed)} was rewritten or truncated while the build read it "
            "(ALTER TABLE ... TYPE, a volatile default, VACUUM FULL, CLUSTER or TRUNCATE): "
            "building again from a new snapshot"
        )


class _Loader:
    """Pipelines ZADD/HSET chunks into Redis while counting progress (one per thread)."""

    def __init__(
        self,
        sink: RedisSink,
        state: RebuildProgress,
        report: Callable[[], None],
        lock: threading.Lock,
        counts: dict[str, int],
    ) -> None:
        self._writer = sink.build_writer(_BUILD_TTL)
        self._state = state
        self._report = report
        self._lock = lock
        self._counts = counts
        self._rows = 0
        self._boards = 0

    def load_hash(self, key: str, rows: Any) -> None:
        chunk: dict[str, str] = {}
        for member, name in rows:
            chunk[member] = name
            if len(chunk) >= _CHUNK:
                self._queue("hset", key, chunk)
                chunk = {}
        if chunk:
            self._queue("hset", key, chunk)

    def load_boards(
        self,
        build: str,
        rows: Any,
        suffix_for: Callable[[date], tuple[str, int | None] | None],
    ) -> Iterator[tuple[str, int | None]]:
        current_start: date | None = None
        target: tuple[str, int | None] | None = None
        chunk: dict[str, int] = {}
        for start, member, score in rows:
            if start != current_start:
                if chunk and target is not None:
                    self._queue("zadd", build + target[0], chunk)
                chunk = {}
                current_start = start
                target = suffix_for(start)
                if target is not None:
                    self._boards += 1
                    yield target
            if target is None:
                continue
            chunk[member] = score
            if len(chunk) >= _CHUNK:
                self._queue("zadd", build + target[0], chunk)
                chunk = {}
        if chunk and target is not None:
            self._queue("zadd", build + target[0], chunk)

    def load_one(self, key: str, rows: Any) -> int:
        """Load one board; return how many members it has."""
        chunk: dict[str, int] = {}
        members = 0
        for member, score in rows:
            self._rows += score
            members += 1
            chunk[member] = score
            if len(chunk) >= _CHUNK:
                self._queue("zadd", key, chunk)
                chunk = {}
        if chunk:
            self._queue("zadd", key, chunk)
        if members:
            self._boards += 1
        return members

    def finish(self) -> None:
        self._execute()

    def _queue(self, command: str, key: str, mapping: dict[str, Any]) -> None:
        # Members or fields per key (each task loads keys of its own): the swap checks them.
        self._counts[key] = self._counts.get(key, 0) + len(mapping)
        if command == "zadd":
            self._writer.zadd(key, mapping)
        else:
            self._writer.hset(key, mapping)
        if self._writer.queued >= 20:
            self._execute()

    def _execute(self) -> None:
        self._writer.flush()
        with self._lock:
            self._state.rows += self._rows
            self._state.boards += self._boards
            self._rows = self._boards = 0
            now = time.monotonic()
            due = now - self._state.last_report >= 2.0
            if due:
                self._state.last_report = now
        if due:
            self._report()


def _swap(
    sink: RedisSink, build: str, built: Built, watermark: Watermark, replay_id: str | None
) -> None:
    boards = [(suffix, expires, built.counts[suffix]) for suffix, expires in built.boards]
    labels = [(suffix, built.counts.get(suffix, 0)) for suffix in built.labels]
    try:
        sink.swap_build(build, boards, labels, watermark, replay_id)
    except redis.exceptions.OutOfMemoryError as exc:
        raise out_of_memory(exc) from exc
    except redis.ResponseError as exc:
        message = str(exc)
        if message.startswith("BUILD LOST"):
            raise RebuildRequired(
                "Redis lost keys of the rebuild in progress (flushed, cleared or restarted)"
            ) from exc
        if message.startswith("FENCED"):
            raise Fenced(message.removeprefix("FENCED").strip()) from exc
        if message.startswith("REGISTRY CHANGED"):
            raise ConnectionLost(
                "another writer changed the board registry during the swap", service="redis"
            ) from exc
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc


def mark_started(sink: RedisSink, build: str) -> None:
    """Set the build's marker before its first key: the swap refuses a build without it,
    as Redis then lost keys of it (flushed, cleared or restarted) and it is incomplete."""
    sink.mark_build_started(build, _BUILD_TTL)


def discard_stale_builds(sink: RedisSink) -> None:
    """Remove build keys a crashed rebuild left behind (they also expire on their own)."""
    sink.unlink_matching(sink.keys.builds)


def reporter(
    sink: RedisSink,
    replay_id: str | None,
    state: RebuildProgress,
    progress: ProgressFn | None,
    stop: threading.Event | None,
) -> Callable[[], None]:
    presence = Presence(sink)

    def report() -> None:
        if stop is not None and stop.is_set():
            raise RebuildInterrupted("rebuild interrupted by a stop request; it restarts next time")
        log.info(
            "rebuild progress",
            phase=state.phase,
            rows=state.rows,
            boards=state.boards,
            rows_per_s=round(state.rate),
        )
        if progress is not None:
            progress(state)
        if replay_id is not None:
            fields: dict[str, str | int | float] = {
                "id": replay_id,
                "phase": state.phase,
                "rows": state.rows,
                "boards": state.boards,
                "at": time.time(),
            }
            try:
                presence.report_replay(fields, 3600)
            except redis.RedisError as exc:
                raise ProjectorError(f"cannot report replay progress: {exc}") from exc

    return report
