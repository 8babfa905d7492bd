"""Test helpers for the projector core, kept independent of the code under test.

`recompute` derives every board and the name hash from PostgreSQL rows with SQL alone
(AT TIME ZONE, to_char), never through projector code; `read_redis` reads what the
projector wrote; `wait_until_caught_up` waits for the watermark to pass the server's WAL
position. `ProjectorThread` runs the worker in-process, `projector_process` runs
`projector run` as a process that tests may kill (the harness's `ProjectorProcess`).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from harness.projector_process import ProjectorProcess
from projector.core.boards import DEFAULT_BOARDS, Board
from projector.core.keys import Keys
from projector.core.limits import MAX_MEMBER, clean_label
from projector.core.lsn import parse_lsn

Boards = dict[tuple[str, str], dict[str, int]]

# Retention wide enough that no board from 1930 on expires during a test; tests that
# check period boards use timestamps inside it.
WIDE_RETENTION = {
    "retention_day_days": 36_500,
    "retention_week_weeks": 5_200,
    "retention_month_months": 1_200,
    "retention_year_years": 100,
}

# Every bucket of one board as PostgreSQL alone sees it: bucket ids from to_char in the zone,
# boards whose retention ran out dropped (a board lives until the first local date
# `retention` buckets after its bucket ends), instants outside local years 0001..9999 in the
# all-time board only, members whose score is not positive left out. Written from the board's
# columns here, independently of projector.core.queries. A board's condition (``where``) is a
# subset of SQL: it is pasted as the test's TOML wrote it, never through projector code.
_RECOMPUTE_SQL = """
WITH dated AS (
    SELECT {member}::text AS member, {time} AT TIME ZONE %(tz)s AS local, {value} AS value
    FROM {table}
    WHERE isfinite({time}) AND {member} IS NOT NULL AND ({condition}) IS TRUE
), kept AS (
    SELECT member, local, value FROM dated
    WHERE local >= '0001-01-01 00:00' AND local < '10000-01-01 00:00'
), today AS (
    SELECT (now() AT TIME ZONE %(tz)s)::date AS today
)
SELECT 'day', to_char(local, 'YYYY-MM-DD'), member, sum(value) FROM kept, today
 WHERE local::date + (1 + %(day)s) > today GROUP BY 2, 3
UNION ALL
SELECT 'week', to_char(local, 'IYYY-"W"IW'), member, sum(value) FROM kept, today
 WHERE date_trunc('week', local)::date + 7 * (1 + %(week)s) > today GROUP BY 2, 3
UNION ALL
SELECT 'month', to_char(local, 'YYYY-MM'), member, sum(value) FROM kept, today
 WHERE date_trunc('month', local) + make_interval(months => 1 + %(month)s) > today
 GROUP BY 2, 3
UNION ALL
SELECT 'year', to_char(local, 'YYYY'), member, sum(value) FROM kept, today
 WHERE date_trunc('year', local) + make_interval(years => 1 + %(year)s) > today
 GROUP BY 2, 3
UNION ALL
SELECT 'all', 'all', {member}::text, sum({value}) FROM {table}
 WHERE {member} IS NOT NULL AND ({condition}) IS TRUE GROUP BY 3
"""


@dataclass(frozen=True)
class Expected:
    """What Redis must hold: boards keyed by (period, bucket) and the display names."""

    boards: Boards
    names: dict[str, str]


def recompute(
    dsn: str,
    tz: str = "UTC",
    retention: Mapping[str, int] | None = None,
    board: Board = DEFAULT_BOARDS[0],
) -> Expected:
    """Recompute every bucket of ``board`` and its labels from PostgreSQL in one snapshot."""
    kept = dict(WIDE_RETENTION if retention is None else retention)
    params = {
        "tz": tz,
        "day": kept["retention_day_days"],
        "week": kept["retention_week_weeks"],
        "month": kept["retention_month_months"],
        "year": kept["retention_year_years"],
    }
    boards: Boards = {}
    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        query = sql.SQL(_RECOMPUTE_SQL).format(
            member=sql.Identifier(board.member),
            time=sql.Identifier(board.time),
            value=sql.SQL("coalesce({}, 0)").format(sql.Identifier(board.sum))
            if board.sum
            else sql.SQL("1"),
            table=sql.Identifier(board.table.schema, board.table.name),
            condition=sql.SQL(board.where.text) if board.where else sql.SQL("true"),  # type: ignore[arg-type]
        )
        for period, bucket, member, score in conn.execute(query, params):
            if period in board.periods and score > 0 and len(member) <= MAX_MEMBER:
                boards.setdefault((period, bucket), {})[member] = int(score)
        names: dict[str, str] = {}
        if board.labels is not None:
            labels = board.labels
            names = {
                str(key): clean_label(str(label))
                for key, label in conn.execute(
                    sql.SQL("SELECT {}, {} FROM {} WHERE {} IS NOT NULL").format(
                        sql.Identifier(labels.key),
                        sql.Identifier(labels.column),
                        sql.Identifier(labels.table.schema, labels.table.name),
                        sql.Identifier(labels.column),
                    )
                )
            }
        conn.rollback()
    return Expected(boards, names)


def read_redis(
    client: redis.Redis, prefix: str = "pomo:", board: Board = DEFAULT_BOARDS[0]
) -> Expected:
    """Every bucket of one board and its labels as the projector wrote them under ``prefix``."""
    boards: Boards = {}
    keys = Keys(prefix)
    board_prefix = keys.board_prefix(board.name)
    for raw_key in client.scan_iter(match=f"{board_prefix}*", count=1000):
        key = _text(raw_key)
        period, _, bucket = key.removeprefix(board_prefix).partition(":")
        members: dict[str, int] = {}
        for member, score in client.zrange(raw_key, 0, -1, withscores=True):
            assert score == int(score) and score > 0, f"{key} {member!r} has score {score}"
            members[_text(member)] = int(score)
        if members:
            boards[(period, bucket)] = members
    names: dict[str, str] = {}
    if board.labels is not None:
        names = {_text(k): _text(v) for k, v in client.hgetall(keys.labels(board.labels)).items()}
    return Expected(boards, names)


def assert_same(actual: Expected, expected: Expected) -> None:
    """Fail with a readable diff when Redis and the recomputation disagree."""
    if actual.boards != expected.boards:
        lines = []
        for key in sorted(actual.boards.keys() | expected.boards.keys()):
            have, want = actual.boards.get(key, {}), expected.boards.get(key, {})
            if have != want:
                diff = {
                    m: (have.get(m), want.get(m))
                    for m in sorted(have.keys() | want.keys())
                    if have.get(m) != want.get(m)
                }
                lines.append(f"  {key}: (redis, postgres) {diff}")
        raise AssertionError("boards differ from the recomputation:\n" + "\n".join(lines[:40]))
    assert actual.names == expected.names, "display names differ from PostgreSQL"


def current_wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def watermark(client: redis.Redis, prefix: str = "pomo:") -> dict[str, str]:
    return {_text(k): _text(v) for k, v in client.hgetall(f"{prefix}watermark").items()}


def wait_until_caught_up(
    dsn: str,
    client: redis.Redis,
    prefix: str = "pomo:",
    *,
    timeout: float = 30.0,
    alive: Callable[[], None] | None = None,
) -> int:
    """Wait until the Redis watermark is at or past ``pg_current_wal_lsn()`` read now."""
    target = current_wal_lsn(dsn)
    deadline = time.monotonic() + timeout
    seen = "none"
    while True:
        wm = watermark(client, prefix)
        if wm.get("lsn"):
            seen = wm["lsn"]
            if parse_lsn(seen) >= target and wm.get("tx_rows", "0") == "0":
                return target
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Redis watermark {seen} did not reach {target >> 32:X}/{target & 0xFFFFFFFF:X} "
                f"within {timeout:.0f} s"
            )
        time.sleep(0.01)


def slot_confirmed_lsn(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return parse_lsn(row[0]) if row and row[0] else None


def settings_env(config: Mapping[str, Any]) -> dict[str, str]:
    """The process environment for ``config`` (Settings field names), nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROJECTOR_", "PG"))}
    env.update({f"PROJECTOR_{name.upper()}": str(value) for name, value in config.items()})
    return env


def projector_executable() -> str:
    """The `projector` console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "projector"
    if beside.exists():
        return str(beside)
    found = shutil.which("projector")
    assert found, "the projector console script is not installed (pip install -e .)"
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- runners


class ProjectorThread:
    """``Worker.run_forever`` in a thread of the test process."""

    def __init__(self, settings: Any) -> None:
        from projector.worker import Worker

        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._worker = Worker(settings, self.stop_event)
        self._thread = threading.Thread(target=self._run, name="projector", daemon=True)

    def _run(self) -> None:
        try:
            self._worker.run_forever()
        except BaseException as exc:
            self.error = exc

    def start(self) -> ProjectorThread:
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise when the worker died."""
        if self.error is not None:
            raise AssertionError(f"the projector thread died: {self.error!r}") from self.error
        if not self._thread.is_alive() and not self.stop_event.is_set():
            raise AssertionError("the projector thread returned without being stopped")

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the projector thread ignored its stop event"
        if self.error is not None:
            raise AssertionError(f"the projector thread died: {self.error!r}") from self.error


def projector_process(config: Mapping[str, Any], log_path: Path) -> ProjectorProcess:
    """`projector run` of this configuration (the console script), not started yet."""
    return ProjectorProcess(settings_env(config), log_path, command=[projector_executable(), "run"])


# --------------------------------------------------------------------------- writers


@dataclass
class WriterStats:
    transactions: int = 0
    failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


class Writer:
    """Commits a random mix of pomodoro changes in a thread until stopped.

    Single- and multi-row transactions of inserts, moves (user, time, both) and deletes.
    Connection failures (a restarting server) are retried: the tests compare with the
    rows PostgreSQL has in the end, so a commit of unknown outcome does not matter.
    """

    def __init__(
        self,
        dsn: str,
        *,
        seed: int,
        users: int = 30,
        now: datetime | None = None,
        pause: float = 0.002,
    ) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.users = [f"user{i:02d}" for i in range(users)]
        self.now = now or datetime.now(UTC)
        self.pause = pause
        self.stats = WriterStats()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ids: list[int] = []  # rows it inserted: it moves and deletes only its own
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> WriterStats:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the writer died: {self.error!r}") from self.error
        return self.stats

    def when(self) -> datetime:
        """Mostly the current and previous buckets (what `verify` checks), sometimes years."""
        if self.rng.random() < 0.85:
            return self.now - timedelta(seconds=self.rng.uniform(0, 40 * 86_400))
        return self.now - timedelta(days=self.rng.uniform(0, 3 * 365))

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=5)
                    self._one_transaction(conn)
                    self.stats.transactions += 1
                except psycopg.OperationalError:
                    self.stats.failures += 1
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
                    self._stop.wait(0.1)
                    continue
                if self.pause:
                    self._stop.wait(self.rng.uniform(0, 2 * self.pause))
        except BaseException as exc:
            self.error = exc
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _one_transaction(self, conn: psycopg.Connection[Any]) -> None:
        rng = self.rng
        ops = 1 if rng.random() < 0.6 else rng.randint(2, 12)
        with conn.transaction():
            for _ in range(ops):
                kind = rng.choices(
                    ("insert", "insert_many", "move_user", "move_time", "move_both", "delete"),
                    weights=(40, 8, 15, 15, 7, 15),
                )[0]
                self.stats.kinds[kind] = self.stats.kinds.get(kind, 0) + 1
                if kind == "insert":
                    self._insert(conn, [(rng.choice(self.users), self.when())])
                elif kind == "insert_many":
                    rows = [
                        (rng.choice(self.users), self.when()) for _ in range(rng.randint(2, 30))
                    ]
                    self._insert(conn, rows)
                elif kind == "delete":
                    conn.execute("DELETE FROM pomodoros WHERE id = %s", (self._some_id(),))
                else:
                    sets: list[str] = []
                    params: list[object] = []
                    if kind in ("move_user", "move_both"):
                        sets.append("user_id = %s")
                        params.append(rng.choice(self.users))
                    if kind in ("move_time", "move_both"):
                        sets.append("completed_at = %s")
                        params.append(self.when())
                    conn.execute(
                        f"UPDATE pomodoros SET {', '.join(sets)} WHERE id = %s",
                        (*params, self._some_id()),
                    )

    def _insert(self, conn: psycopg.Connection[Any], rows: list[tuple[str, datetime]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s) RETURNING id",
                rows,
                returning=True,
            )
            while True:
                row = cur.fetchone()
                if row is not None:
                    self._ids.append(int(row[0]))
                if not cur.nextset():
                    break

    def _some_id(self) -> int:
        return self.rng.choice(self._ids) if self._ids else 0
