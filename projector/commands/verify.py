"""``projector verify``: compare Redis with a recomputation from PostgreSQL, exactly.

Writes may continue meanwhile, so both sides are compared at one position: a temporary
slot gives a snapshot at its consistent point C; once Redis has passed C, its boards are
read atomically with their watermark W, and the changes between C and W are streamed
from the temporary slot and projected onto the recomputed boards before comparing.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from psycopg import sql

from projector import redis_nodes
from projector.core import queries
from projector.core.boards import Board
from projector.core.buckets import (
    TIMED_PERIODS,
    WINDOW_LENGTHS,
    Period,
    bucket_bounds,
    bucket_for,
    current_bucket,
    expires_at,
    oldest_retained_bucket_start,
    previous_bucket,
)
from projector.core.errors import BoardsChanged, ConnectionLost, ProjectorError
from projector.core.fingerprint import board_states, same_layout
from projector.core.lsn import format_lsn
from projector.core.pgoutput import (
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)
from projector.core.projection import Projection
from projector.core.replication import PrimaryKeepalive
from projector.core.watermark import Watermark
from projector.core.windows import parse_day, window_periods
from projector.schema import partition_states, schema_problems
from projector.settings import Settings
from projector.sink import RedisSink, as_text
from projector.stream import ReplicationStream

_READ_BOARDS_LUA = """
local out = {redis.call('HGETALL', KEYS[1])}
for i = 2, #KEYS do
  out[#out + 1] = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
end
return out
"""


@dataclass(slots=True)
class BoardDiff:
    key: str
    missing: dict[str, int] = field(default_factory=dict)  # in PostgreSQL, not in Redis
    extra: dict[str, int] = field(default_factory=dict)  # in Redis, not in PostgreSQL
    wrong: dict[str, tuple[int, int]] = field(default_factory=dict)  # member: (redis, pg)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.wrong)


@dataclass(slots=True)
class VerifyReport:
    position: str
    boards: int
    members: int
    matching: int
    diffs: list[BoardDiff]
    seconds: float
    # Declared boards Redis does not hold now (unavailable, or being built): board -> why.
    not_checked: dict[str, str] = field(default_factory=dict)
    # Boards whose partitions changed since they were built: drift there is expected until
    # the projector has built them again.
    rebuilding: dict[str, str] = field(default_factory=dict)

    @property
    def in_sync(self) -> bool:
        return all(d.clean for d in self.diffs)

    @property
    def sync_percent(self) -> float:
        return 100.0 if self.members == 0 else 100.0 * self.matching / self.members

    def as_json(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "position": self.position,
            "boards_checked": self.boards,
            "members_checked": self.members,
            "sync_percent": round(self.sync_percent, 4),
            "seconds": round(self.seconds, 3),
            "not_checked": self.not_checked,
            "rebuilding": self.rebuilding,
            "drift": [
                {
                    "key": d.key,
                    "missing_in_redis": d.missing,
                    "extra_in_redis": d.extra,
                    "wrong_score": {
                        m: {"redis": r, "postgres": p} for m, (r, p) in d.wrong.items()
                    },
                }
                for d in self.diffs
                if not d.clean
            ],
        }


def boards_to_check(
    settings: Settings, boards: Iterable[Board], everything: bool
) -> list[tuple[Board, Period, str]]:
    """Per board, the current and previous bucket of each timed period it keeps, plus
    all-time (or every bucket still in retention)."""
    return [
        (board, period, bucket)
        for board in boards
        for period, bucket in _buckets_to_check(settings, everything)
        if period in board.periods
    ]


def windows_to_check(boards: Iterable[Board], window_day: str) -> list[tuple[Board, Period, str]]:
    """The rolling windows Redis holds (those ending on the watermark's ``window_day``;
    none before the projector built them)."""
    if not window_day:
        return []
    return [(board, period, window_day) for board in boards for period in window_periods(board)]


def _board_states(settings: Settings, wm: Watermark) -> dict[str, dict[str, str]]:
    """Each declared board's state (``fingerprint.board_states``) as the catalog says now."""
    try:
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            problems = schema_problems(conn, settings.boards, settings.publication)
            partitions = partition_states(conn, {b.table for b in settings.boards})
    except psycopg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to PostgreSQL: {exc}", service="postgres") from exc
    effective = [b for b in settings.boards if b.name not in problems]
    config = settings.projection_config(effective, partitions)
    if not same_layout(wm.config, config):
        raise ProjectorError(
            "Redis was built under another configuration ("
            + "; ".join(config.changes_since(wm.config))
            + "): the projector rebuilds it on start"
        )
    return board_states(wm.config, wm.unavailable_boards(), config, problems)


def _buckets_to_check(settings: Settings, everything: bool) -> list[tuple[Period, str]]:
    tz = settings.zone
    now = time.time()
    chosen: list[tuple[Period, str]] = []
    for period in TIMED_PERIODS:
        bucket: str | None = current_bucket(period, tz, datetime.now(UTC))
        if everything:
            since = oldest_retained_bucket_start(period, tz, settings.retention, datetime.now(UTC))
            oldest = bucket_for(since, period, tz) if since else bucket
            while bucket is not None:
                chosen.append((period, bucket))
                if bucket == oldest:
                    break
                bucket = previous_bucket(period, bucket)
        else:
            for _ in range(2):
                if bucket is None:
                    break
                expires = expires_at(period, bucket, tz, settings.retention)
                if expires is None or expires > now:
                    chosen.append((period, bucket))
                bucket = previous_bucket(period, bucket)
    chosen.append((Period.ALL, "all"))
    return chosen


def verify(settings: Settings, *, everything: bool = False, wait: float = 30.0) -> VerifyReport:
    """Compare the chosen boards in Redis with PostgreSQL at the same position."""
    started = time.monotonic()
    client = redis_nodes.client(settings, socket_timeout=None)
    sink = RedisSink(client, settings.keys)
    slot = f"verify_{uuid.uuid4().hex[:16]}"
    stream = ReplicationStream(settings.pg_dsn, slot, settings.publication)
    try:
        held = sink.read_watermark()
        if held is None:
            raise ProjectorError("Redis holds no watermark: nothing to verify (is it built?)")
        states = _board_states(settings, held)
        checked = [b for b in settings.boards if states[b.name]["state"] in ("live", "rebuilding")]
        boards = boards_to_check(settings, checked, everything)
        boards += windows_to_check(checked, held.window_day)
        keys = [settings.keys.board(board.name, p, b) for board, p, b in boards]
        stream.open()
        consistent_point, snapshot = stream.create_slot(temporary=True)
        expected = _recompute(settings, snapshot, boards, keys)
        _wait_for(sink, consistent_point, wait)
        redis_wm, actual = _read_boards(client, sink, keys)
        if redis_wm.window_day != held.window_day and any(
            p in WINDOW_LENGTHS for _, p, _ in boards
        ):
            raise ProjectorError(
                f"the projector moved the rolling windows from {held.window_day or 'none'} to "
                f"{redis_wm.window_day} during verify (midnight); run verify again"
            )
        # Project onto the recomputation the changes Redis already holds beyond C.
        _roll_forward(settings, checked, stream, consistent_point, redis_wm, expected, set(keys))
        position = redis_wm.position
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
    finally:
        stream.close()
        client.close()
    diffs, members, matching = _compare(keys, expected, actual)
    return VerifyReport(
        position,
        len(keys),
        members,
        matching,
        diffs,
        time.monotonic() - started,
        not_checked={
            name: f"{state['state']}: {state['detail']}"
            for name, state in states.items()
            if state["state"] in ("unavailable", "building")
        },
        rebuilding={n: s["detail"] for n, s in states.items() if s["state"] == "rebuilding"},
    )


def _recompute(
    settings: Settings, snapshot: str, boards: list[tuple[Board, Period, str]], keys: list[str]
) -> dict[str, dict[str, int]]:
    tz = settings.zone
    expected: dict[str, dict[str, int]] = {}
    try:
        conn = psycopg.connect(settings.pg_dsn, autocommit=False)
    except psycopg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to PostgreSQL: {exc}", service="postgres") from exc
    with conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        for (board, period, bucket), key in zip(boards, keys, strict=True):
            start, end = bucket_bounds(period, bucket, tz)
            rows = conn.execute(
                queries.bucket_scores(board, period, open_end=end is None),
                {"start": start, "end": end, "tz": settings.timezone},
            )
            expected[key] = {str(u): int(str(c)) for u, c in rows}
        conn.rollback()
    return expected


def _wait_for(sink: RedisSink, lsn: int, wait: float) -> Watermark:
    deadline = time.monotonic() + wait
    while True:
        wm = sink.read_watermark()
        if wm is None:
            raise ProjectorError("Redis lost its watermark during verify; run verify again")
        if wm.lsn >= lsn:
            return wm
        if time.monotonic() >= deadline:
            raise ProjectorError(
                f"Redis did not reach {format_lsn(lsn)} within {wait:.0f}s (it is at "
                f"{format_lsn(wm.lsn)}): is the projector running?"
            )
        time.sleep(0.05)


def _read_boards(
    client: redis.Redis, sink: RedisSink, keys: list[str]
) -> tuple[Watermark, dict[str, dict[str, int]]]:
    """The boards and the watermark they stand for, read in one atomic step."""
    reply = client.eval(_READ_BOARDS_LUA, len(keys) + 1, sink.keys.watermark, *keys)
    flat_wm = reply[0]
    wm = Watermark.from_fields(
        {as_text(flat_wm[i]): as_text(flat_wm[i + 1]) for i in range(0, len(flat_wm), 2)}
    )
    if wm is None:
        raise ProjectorError("Redis lost its watermark during verify; run verify again")
    actual: dict[str, dict[str, int]] = {}
    for key, flat in zip(keys, reply[1:], strict=True):
        actual[key] = {
            as_text(flat[i]): int(float(as_text(flat[i + 1]))) for i in range(0, len(flat), 2)
        }
    return wm, actual


def _roll_forward(
    settings: Settings,
    boards: list[Board],
    stream: ReplicationStream,
    start: int,
    target: Watermark,
    expected: dict[str, dict[str, int]],
    keys: set[str],
) -> None:
    """Apply to ``expected`` every change Redis holds beyond ``start``, up to ``target``."""
    if target.lsn <= start and not target.tx_lsn:
        return
    projection = Projection(boards, settings.keys, settings.zone, settings.retention, time.time)
    projection.resume_windows(parse_day(target.window_day))
    decoder = Decoder(1)
    stream.start(start)
    deadline = time.monotonic() + 60.0
    in_tx: Begin | None = None
    rows = 0
    done = False
    while not done:
        if time.monotonic() > deadline:
            raise ProjectorError("verify could not read the changes up to the Redis watermark")
        for frame in stream.frames(0.5):
            if isinstance(frame, PrimaryKeepalive):
                if in_tx is None and frame.wal_end >= target.lsn and not target.tx_lsn:
                    done = True
                    break
                stream.send_status(start)
                continue
            msg = decoder.decode(frame.data)
            if isinstance(msg, Begin):
                if msg.final_lsn >= target.lsn and msg.final_lsn != target.tx_lsn:
                    done = True
                    break
                in_tx, rows = msg, 0
            elif isinstance(msg, Relation):
                try:
                    projection.on_relation(msg)
                except BoardsChanged as exc:
                    raise ProjectorError(f"cannot follow the changes: {exc}") from exc
            elif isinstance(msg, Insert | Update | Delete | Truncate):
                assert in_tx is not None
                rows += 1
                projection.on_change(msg)
                if in_tx.final_lsn == target.tx_lsn and rows >= target.tx_rows:
                    done = True  # the rest of this large transaction is not in Redis yet
                    break
            elif isinstance(msg, Commit):
                in_tx = None
                if msg.end_lsn >= target.lsn and not target.tx_lsn:
                    done = True
                    break
    batch = projection.take_batch()
    for key in keys:
        if any(key.startswith(prefix) for prefix in batch.clear_boards):
            expected[key] = {}
    for key, members in batch.deltas.items():
        if key not in keys:
            continue
        board = expected.setdefault(key, {})
        for member, delta in members.items():
            score = board.get(member, 0) + delta
            if score > 0:
                board[member] = score
            else:
                board.pop(member, None)


def _compare(
    keys: list[str], expected: dict[str, dict[str, int]], actual: dict[str, dict[str, int]]
) -> tuple[list[BoardDiff], int, int]:
    diffs: list[BoardDiff] = []
    members = matching = 0
    for key in keys:
        want, have = expected.get(key, {}), actual.get(key, {})
        diff = BoardDiff(key)
        for member in want.keys() | have.keys():
            members += 1
            w, h = want.get(member), have.get(member)
            if w == h:
                matching += 1
            elif h is None:
                diff.missing[member] = w or 0
            elif w is None:
                diff.extra[member] = h
            else:
                diff.wrong[member] = (h, w)
        diffs.append(diff)
    return diffs, members, matching


def print_verify(settings: Settings, *, as_json: bool, everything: bool) -> int:
    """Run verify and print its report; return 0 in sync, 1 on drift, 2 if it cannot compare."""
    try:
        report = verify(settings, everything=everything)
    except ConnectionLost:
        raise
    except ProjectorError as exc:
        print(f"projector: cannot verify: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report.as_json(), indent=2, sort_keys=True))
    else:
        status = "IN SYNC" if report.in_sync else "DRIFT"
        print(
            f"{status}: {report.boards} boards, {report.members} members checked, "
            f"{report.sync_percent:.4f}% in sync, at position {report.position} "
            f"({report.seconds:.2f}s)"
        )
        for name, why in sorted(report.not_checked.items()):
            print(f"  board {name} not checked: {why}")
        for name, why in sorted(report.rebuilding.items()):
            print(f"  board {name}: {why}")
        for diff in report.diffs:
            if diff.clean:
                continue
            print(f"  {diff.key}:")
            for member, (have, want) in sorted(diff.wrong.items()):
                print(f"    {member}: redis {have}, postgres {want}")
            for member, want in sorted(diff.missing.items()):
                print(f"    {member}: missing in redis (postgres {want})")
            for member, have in sorted(diff.extra.items()):
                print(f"    {member}: extra in redis ({have}; postgres has none)")
    return 0 if report.in_sync else 1
