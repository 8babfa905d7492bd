"""What the recovery tests share: a deployment (database, Redis, slot, prefix), the projector
as a real subprocess with JSON logs (the harness's `ProjectorProcess`), a concurrent writer, and
an independent recomputation.

The recomputation deliberately uses none of the projector's code: it aggregates rows by local
date in SQL and derives bucket ids and retention with the standard library, so a bug shared
by the projection and the rebuild cannot hide itself.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import redis

from harness.projector_process import ProjectorProcess
from projector.core.boards import DEFAULT_BOARDS
from projector.core.keys import Keys
from projector.core.lsn import parse_lsn

DEFAULT_BOARD = DEFAULT_BOARDS[0].name

Boards = dict[str, dict[str, int]]

# The projector's defaults, restated: retention in whole buckets after a bucket ends.
RETENTION = {"day": 35, "week": 13, "month": 13, "year": 5}


# --------------------------------------------------------------------------- recomputation


def _add_months(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def bucket_ids(day: date) -> dict[str, tuple[str, date]]:
    """Per period: the bucket id of a local date and the first date of that bucket."""
    iso = day.isocalendar()
    monday = day - timedelta(days=day.weekday())
    return {
        "day": (day.isoformat(), day),
        "week": (f"{iso.year}-W{iso.week:02d}", monday),
        "month": (f"{day.year}-{day.month:02d}", day.replace(day=1)),
        "year": (f"{day.year}", date(day.year, 1, 1)),
    }


def expiry_date(period: str, first: date, retention: dict[str, int] = RETENTION) -> date:
    """The local date from whose first instant a bucket's board may be deleted."""
    keep = retention[period] + 1
    if period == "day":
        return first + timedelta(days=keep)
    if period == "week":
        return first + timedelta(weeks=keep)
    if period == "month":
        return _add_months(first, keep)
    return date(first.year + keep, 1, 1)


def local_midnight_epoch(day: date, tz: ZoneInfo) -> int:
    """Unix time of the first instant of local date ``day`` (handles DST gaps at midnight)."""
    naive = datetime(day.year, day.month, day.day)
    for minutes in range(0, 24 * 60, 15):
        candidate = (naive + timedelta(minutes=minutes)).replace(tzinfo=tz)
        # Skip wall times that do not exist (a DST gap): they do not round-trip.
        if candidate.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == candidate.replace(
            tzinfo=None
        ):
            return calendar.timegm(candidate.astimezone(UTC).timetuple())
    raise AssertionError(f"no first instant found for {day} in {tz}")


def recompute(dsn: str, prefix: str, timezone: str) -> tuple[Boards, dict[str, str]]:
    """Every board that should exist now (inside retention, plus all-time), and the names."""
    tz = ZoneInfo(timezone)
    today = datetime.now(tz).date()
    boards: Boards = {}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows = conn.execute(
            "SELECT user_id, CASE WHEN isfinite(completed_at)"
            " THEN (completed_at AT TIME ZONE %s)::date END, count(*)"
            " FROM pomodoros GROUP BY 1, 2",
            (timezone,),
        ).fetchall()
        names = dict(conn.execute("SELECT id, display_name FROM users").fetchall())
    for user, day, count in rows:
        keys = [Keys(prefix).board(DEFAULT_BOARD, "all", "all")]
        if day is not None:
            for period, (bucket, first) in bucket_ids(day).items():
                if expiry_date(period, first) > today:
                    keys.append(Keys(prefix).board(DEFAULT_BOARD, period, bucket))
        for key in keys:
            board = boards.setdefault(key, {})
            board[user] = board.get(user, 0) + count
    return boards, names


def redis_boards(client: redis.Redis, prefix: str) -> Boards:
    """Every leaderboard under ``prefix`` in Redis."""
    boards: Boards = {}
    for raw_key in client.scan_iter(match=f"{prefix}lb:*", count=1000):
        key = raw_key.decode()
        members = client.zrange(key, 0, -1, withscores=True)
        board = {}
        for member, score in members:
            assert score == int(score) and score > 0, f"{key} {member!r} has score {score}"
            board[member.decode()] = int(score)
        if board:
            boards[key] = board
    return boards


def describe_diff(expected: Boards, actual: Boards, limit: int = 12) -> str:
    """A short human account of how two sets of boards differ."""
    lines: list[str] = []
    for key in sorted(expected.keys() - actual.keys()):
        lines.append(f"missing board {key} ({len(expected[key])} members)")
    for key in sorted(actual.keys() - expected.keys()):
        lines.append(f"extra board {key} ({len(actual[key])} members)")
    for key in sorted(expected.keys() & actual.keys()):
        want, have = expected[key], actual[key]
        for member in sorted(want.keys() | have.keys()):
            if want.get(member) != have.get(member):
                lines.append(
                    f"{key} {member}: redis {have.get(member)}, postgres {want.get(member)}"
                )
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


# --------------------------------------------------------------------------- deployment


@dataclass
class Deployment:
    """One projector's world: its database, Redis, slot and key prefix, and its processes."""

    pg_dsn: str
    redis_url: str
    slot: str
    prefix: str
    timezone: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[ProjectorProcess] = field(default_factory=list)
    # The client of the node holding the keys now (Sentinel, Cluster: it moves on failover).
    redis_factory: Callable[[], redis.Redis] | None = None

    @property
    def watermark_key(self) -> str:
        return f"{self.prefix}watermark"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PROJECTOR_") and not k.startswith("PG")
        }
        env.update(
            PROJECTOR_PG_DSN=self.pg_dsn,
            PROJECTOR_REDIS_URL=self.redis_url,
            PROJECTOR_SLOT=self.slot,
            PROJECTOR_PUBLICATION="projector",
            PROJECTOR_TIMEZONE=self.timezone,
            PROJECTOR_KEY_PREFIX=self.prefix,
            PROJECTOR_LOG_FORMAT="json",
            PROJECTOR_HEARTBEAT_INTERVAL="0.5",
            PROJECTOR_STATUS_INTERVAL="1",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start(self, log_name: str = "projector.log", **env: str) -> ProjectorProcess:
        """Start ``projector run`` (logging to ``log_name`` under the work directory)."""
        process = ProjectorProcess(self.env(**env), self.workdir / log_name).start()
        self.processes.append(process)
        return process

    def cli(
        self, *args: str, timeout: float = 120.0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``projector`` command to completion."""
        return subprocess.run(
            [sys.executable, "-m", "projector", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=timeout,
            check=False,
        )

    def redis(self) -> redis.Redis:
        if self.redis_factory is not None:
            return self.redis_factory()
        return redis.Redis.from_url(self.redis_url)

    def pg(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg_dsn, autocommit=True)

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.pg() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def watermark(self) -> dict[str, str]:
        with self.redis() as client:
            raw = client.hgetall(self.watermark_key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def slot_row(self) -> dict[str, Any] | None:
        with self.pg() as conn:
            cur = conn.execute(
                "SELECT * FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            )
            row = cur.fetchone()
            if row is None:
                return None
            assert cur.description is not None
            return {col.name: value for col, value in zip(cur.description, row, strict=True)}

    def drop_slot(self) -> None:
        self.sql("SELECT pg_drop_replication_slot(%s)", (self.slot,))

    def wait_caught_up(self, timeout: float = 60.0) -> int:
        """Wait until the Redis watermark has reached PostgreSQL's current WAL position."""
        target = parse_lsn(self.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        deadline = time.monotonic() + timeout
        while True:
            wm = self.watermark()
            if wm.get("lsn") and parse_lsn(wm["lsn"]) >= target:
                return target
            if time.monotonic() > deadline:
                logs = "\n".join(p.log_text()[-3000:] for p in self.processes)
                raise AssertionError(
                    f"Redis watermark {wm.get('lsn')} did not reach {target:X} in {timeout}s\n"
                    + logs
                )
            time.sleep(0.05)

    def assert_matches_postgres(self) -> Boards:
        """Redis holds exactly the recomputed boards and names, and no leftover build keys."""
        expected, names = recompute(self.pg_dsn, self.prefix, self.timezone)
        with self.redis() as client:
            actual = redis_boards(client, self.prefix)
            stored_names = {
                k.decode(): v.decode() for k, v in client.hgetall(f"{self.prefix}users").items()
            }
            leftovers = list(client.scan_iter(match=f"{self.prefix}rebuild:*"))
        assert actual == expected, describe_diff(expected, actual)
        assert stored_names == names
        assert leftovers == []
        return expected

    def stop_all(self) -> None:
        for process in self.processes:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()


# --------------------------------------------------------------------------- data


def seed(
    dsn: str,
    *,
    rows: int,
    users: int,
    days: int,
    named_fraction: float = 0.8,
    user_prefix: str = "u",
    seed_value: float = 0.42,
) -> None:
    """Insert ``rows`` pomodoros spread over the last ``days`` days, and display names."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT setseed(%s)", (seed_value,))
        conn.execute(
            "INSERT INTO users (id, display_name)"
            " SELECT %s || g, 'Name ' || g FROM generate_series(0, %s) g"
            " ON CONFLICT (id) DO NOTHING",
            (user_prefix, int(users * named_fraction)),
        )
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT %s || floor(random() * %s)::int,"
            "        now() - random() * make_interval(days => %s)"
            " FROM generate_series(1, %s)",
            (user_prefix, users, days, rows),
        )


def seed_edges(dsn: str) -> None:
    """Rows at the edges: long past retention, in the future, at infinity, a user without rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES"
            " ('edge-old', now() - interval '7 years'),"
            " ('edge-old', now() - interval '3 years'),"
            " ('edge-future', now() + interval '3 days'),"
            " ('edge-future', now() + interval '400 days'),"
            " ('edge-inf', 'infinity'), ('edge-inf', '-infinity'),"
            " ('edge-ütf8 ✓', now())"
        )
        conn.execute(
            "INSERT INTO users (id, display_name) VALUES"
            " ('edge-nobody', 'Has no pomodoro'), ('edge-ütf8 ✓', 'Ünïcode ✓')"
        )


class Writer:
    """A thread committing a mix of inserts, updates, deletes and renames until stopped."""

    def __init__(self, dsn: str, *, users: int = 50, days: int = 40, seed_value: int = 7) -> None:
        self.dsn = dsn
        self.users = users
        self.days = days
        self.rng = random.Random(seed_value)
        self.commits: list[float] = []  # wall-clock time of every commit
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Writer:
        return self.__enter__()

    def stop(self) -> None:
        """Stop writing; re-raise whatever made the writer fail."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the writer thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error

    def wait_commits(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` more transactions were committed from now on."""
        target = len(self.commits) + n
        deadline = time.monotonic() + timeout
        while len(self.commits) < target:
            assert self.error is None, f"the writer failed: {self.error!r}"
            assert time.monotonic() < deadline, "the writer is not committing"
            time.sleep(0.01)

    def _user(self) -> str:
        return f"w{self.rng.randrange(self.users)}"

    def _when(self) -> str:
        if self.rng.random() < 0.3:
            return "0 seconds"
        return f"{self.rng.uniform(0, self.days * 86400):.0f} seconds"

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    self._one(conn)
                    self.commits.append(time.time())
                    time.sleep(0.002)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _one(self, conn: psycopg.Connection[Any]) -> None:
        rng = self.rng
        roll = rng.random()
        pick = "(SELECT id FROM pomodoros ORDER BY user_id, completed_at LIMIT 1 OFFSET %s)"
        if roll < 0.45:
            conn.execute(
                "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, now() - %s::interval)",
                (self._user(), self._when()),
            )
        elif roll < 0.55:
            with conn.transaction():
                for _ in range(rng.randint(2, 20)):
                    conn.execute(
                        "INSERT INTO pomodoros (user_id, completed_at)"
                        " VALUES (%s, now() - %s::interval)",
                        (self._user(), self._when()),
                    )
        elif roll < 0.70:
            conn.execute(
                f"UPDATE pomodoros SET user_id = %s WHERE id = {pick}",
                (self._user(), rng.randrange(200)),
            )
        elif roll < 0.80:
            conn.execute(
                f"UPDATE pomodoros SET completed_at = now() - %s::interval WHERE id = {pick}",
                (self._when(), rng.randrange(200)),
            )
        elif roll < 0.92:
            conn.execute(f"DELETE FROM pomodoros WHERE id = {pick}", (rng.randrange(200),))
        elif roll < 0.97:
            conn.execute(
                "INSERT INTO users (id, display_name) VALUES (%s, %s)"
                " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                (self._user(), f"renamed {rng.randrange(1000)}"),
            )
        else:
            conn.execute("DELETE FROM users WHERE id = %s", (self._user(),))


@contextlib.contextmanager
def redis_writes_paused(url: str) -> Iterator[None]:
    """Hold every Redis write (CLIENT PAUSE WRITE) for the block: a rebuild then stops after
    creating its slot, at its first load into Redis, well before its swap."""
    with redis.Redis.from_url(url) as client:
        client.client_pause(120_000, all=False)
        try:
            yield
        finally:
            client.client_unpause()


@contextlib.contextmanager
def writing(dsn: str, **kwargs: Any) -> Iterator[Writer]:
    """A running ``Writer`` for the duration of a ``with`` block."""
    writer = Writer(dsn, **kwargs).start()
    try:
        yield writer
    finally:
        writer.stop()


def event_time(event: dict[str, Any]) -> float:
    """Unix time of a structlog JSON event (its ISO ``timestamp``)."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
