"""``projector demo``: an app's worth of writes, through PostgreSQL only, a few per second.

The writer registers about fifty people (names drawn from lists of first and last names of
many origins) and then, at ``rate`` writes per second, records their pomodoros (mostly now,
some earlier in the last weeks), now and then moves one to another person or time, or deletes
one. Some people are busier than others, so the boards have a shape. ``DemoPlan`` decides what
comes next (pure: a seeded random generator and a clock); ``DemoWriter`` runs it against
PostgreSQL, reconnecting with backoff, until its stop event is set.
"""

from __future__ import annotations

import random
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog

from projector.core.errors import ProjectorError

log = structlog.get_logger("demo")

FIRST_NAMES = (
    "Amara", "Aiko", "Alejandro", "Amina", "Anders", "Ananya", "Beatriz", "Bilal", "Camille",
    "Chen", "Chiara", "Dmitri", "Efua", "Elif", "Emeka", "Emma", "Farah", "Felipe", "Freya",
    "Giulia", "Hana", "Hiroshi", "Ines", "Ingrid", "Ivan", "Jamal", "Javier", "Ji-woo",
    "Kai", "Kavya", "Kwame", "Lars", "Layla", "Leilani", "Liam", "Lucía", "Malik", "Maya",
    "Mei", "Mateo", "Nadia", "Niamh", "Nikolai", "Noah", "Olga", "Omar", "Oskar", "Priya",
    "Rafael", "Rania", "Rohan", "Saanvi", "Sakura", "Santiago", "Sofia", "Tariq", "Thandiwe",
    "Tomás", "Valentina", "Wei", "Yara", "Yusuf", "Zanele", "Zoë",
)  # fmt: skip
LAST_NAMES = (
    "Abebe", "Adeyemi", "Alvarez", "Andersson", "Bianchi", "Bose", "Chatterjee", "Cohen",
    "Costa", "Da Silva", "Dubois", "Eriksen", "Fernández", "Fischer", "García", "Haddad",
    "Hansen", "Hoang", "Ivanova", "Jensen", "Kapoor", "Kim", "Kowalski", "Kuznetsov",
    "Lehmann", "Li", "Lindqvist", "Mensah", "Moreau", "Murphy", "Nakamura", "Navarro",
    "Nguyen", "Novak", "Nowak", "O'Brien", "Okafor", "Okonkwo", "Olsen", "Park", "Patel",
    "Pereira", "Petrov", "Popescu", "Rahman", "Reyes", "Rossi", "Sato", "Schmidt", "Singh",
    "Suzuki", "Tanaka", "Thompson", "Van Dijk", "Vargas", "Wang", "Weber", "Yamamoto",
    "Yilmaz", "Zhang", "Zulu",
)  # fmt: skip

# Where a new pomodoro lands in time: now, earlier this week, or earlier in the last weeks.
_NOW, _THIS_WEEK = 0.75, 0.92
# What a write is: mostly a new pomodoro, now and then a move or a retraction.
_MOVE, _DELETE = 0.06, 0.04
_BACKOFF_FIRST = 0.5
_RECENT = 2000  # ids the writer may move or delete


@dataclass(frozen=True, slots=True)
class Person:
    """A demo user: ``user_id`` is an ASCII slug of ``display_name``."""

    user_id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new pomodoro; ``completed_at`` None means now (the column's default)."""

    user_id: str
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Move:
    """Move one of the writer's recent pomodoros to another person and/or time."""

    user_id: str | None
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Delete:
    """Retract one of the writer's recent pomodoros."""


Write = Insert | Move | Delete


def people(count: int) -> list[Person]:
    """``count`` distinct people, the same ones for the same count (restarts reuse them)."""
    if not 1 <= count <= len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"the demo has names for 1 to {len(FIRST_NAMES) * len(LAST_NAMES)}")
    rng = random.Random(count)
    chosen: dict[str, Person] = {}
    firsts = list(FIRST_NAMES)
    rng.shuffle(firsts)
    while len(chosen) < count:
        first = firsts[len(chosen) % len(firsts)]
        last = rng.choice(LAST_NAMES)
        person = Person(f"{_slug(first)}.{_slug(last)}", f"{first} {last}")
        chosen.setdefault(person.user_id, person)
    return list(chosen.values())


def _slug(name: str) -> str:
    ascii_only = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_only.lower() if ch.isalnum() or ch == "-")


class DemoPlan:
    """Which write comes next, drawn from ``rng`` around the time ``clock`` gives."""

    def __init__(
        self,
        crowd: list[Person],
        rng: random.Random,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.people = crowd
        self._rng = rng
        self._clock = clock
        # Zipf-like activity: a few keen people, a long tail of occasional ones.
        self._weights = [1 / (rank + 1) ** 0.8 for rank in range(len(crowd))]
        rng.shuffle(self._weights)

    def next(self) -> Write:
        """The next write."""
        roll = self._rng.random()
        if roll < _MOVE:
            kind = self._rng.randrange(3)
            return Move(
                user_id=self.someone() if kind != 1 else None,
                completed_at=self.when(now_allowed=False) if kind != 0 else None,
            )
        if roll < _MOVE + _DELETE:
            return Delete()
        return Insert(self.someone(), self.when())

    def history(self, count: int) -> list[Insert]:
        """``count`` pomodoros of the past five weeks, some today, to start from."""
        now = self._clock()
        rows = []
        for _ in range(count):
            back = timedelta(days=min(35.0, self._rng.expovariate(1 / 6)))
            if self._rng.random() < 0.15:  # today, so the day board is not empty
                back = timedelta(seconds=self._rng.uniform(0, _seconds_since_midnight(now)))
            rows.append(Insert(self.someone(), now - back))
        return rows

    def someone(self) -> str:
        return self._rng.choices(self.people, self._weights)[0].user_id

    def when(self, *, now_allowed: bool = True) -> datetime | None:
        """Mostly now (None); else earlier this week or in the last five weeks."""
        roll = self._rng.random()
        if now_allowed and roll < _NOW:
            return None
        now = self._clock()
        if roll < _THIS_WEEK:
            return now - timedelta(seconds=self._rng.uniform(60, 7 * 86_400))
        return now - timedelta(seconds=self._rng.uniform(7 * 86_400, 35 * 86_400))

    def pick(self, count: int) -> int:
        """An index below ``count``: which recent pomodoro a move or a delete takes."""
        return self._rng.randrange(count)

    def pause(self, rate: float) -> float:
        """Seconds until the next write: a Poisson process of ``rate`` writes per second."""
        return self._rng.expovariate(rate)


def _seconds_since_midnight(now: datetime) -> float:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (now - midnight).total_seconds())


@dataclass
class DemoStats:
    """What the writer did."""

    inserts: int = 0
    moves: int = 0
    deletes: int = 0
    history: int = 0
    connection_failures: int = 0
    users: int = 0
    started: float = field(default_factory=time.monotonic)


class DemoWriter:
    """Runs a ``DemoPlan`` against PostgreSQL until ``stop`` is set."""

    def __init__(
        self,
        dsn: str,
        plan: DemoPlan,
        stop: threading.Event,
        *,
        rate: float,
        history: int,
        max_delay: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._plan = plan
        self._stop = stop
        self._rate = rate
        self._history = history
        self._max_delay = max_delay
        self._recent: deque[int] = deque(maxlen=_RECENT)
        self.stats = DemoStats()

    def run(self) -> DemoStats:
        """Write until stopped; on connection loss wait (doubling, capped) and reconnect."""
        delay = _BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=5, application_name="pomodoro-demo"
                ) as conn:
                    self._prepare(conn)
                    delay = _BACKOFF_FIRST
                    self._write(conn)
            except psycopg.errors.UndefinedTable as exc:
                raise ProjectorError(
                    f"the demo needs the schema: run `projector migrate` first ({exc})"
                ) from exc
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ProjectorError(
                    "the demo writes like an app: its role needs INSERT and UPDATE on users "
                    f"and INSERT, UPDATE and DELETE on pomodoros ({exc})"
                ) from exc
            except psycopg.OperationalError as exc:
                self.stats.connection_failures += 1
                log.warning(
                    "PostgreSQL unreachable; retrying",
                    error=str(exc).strip().splitlines()[0] if str(exc).strip() else "lost",
                    retry_in=round(delay, 2),
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self._max_delay)
        seconds = time.monotonic() - self.stats.started
        log.info(
            "demo stopped",
            inserts=self.stats.inserts,
            moves=self.stats.moves,
            deletes=self.stats.deletes,
            seconds=round(seconds, 1),
        )
        return self.stats

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Register the people; the first time, add some history; remember recent ids."""
        crowd = self._plan.people
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (id, display_name) VALUES (%s, %s)"
                " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name"
                " WHERE users.display_name IS DISTINCT FROM excluded.display_name",
                [(p.user_id, p.display_name) for p in crowd],
            )
            self.stats.users = len(crowd)
            ids = [p.user_id for p in crowd]
            started = cur.execute(
                "SELECT EXISTS (SELECT 1 FROM pomodoros WHERE user_id = ANY(%s))", (ids,)
            ).fetchone()
            if self._history and started is not None and not started[0]:
                rows = self._plan.history(self._history)
                cur.executemany(
                    "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)",
                    [(row.user_id, row.completed_at) for row in rows],
                )
                self.stats.history += len(rows)
                log.info("demo history written", pomodoros=len(rows), users=len(crowd))
        recent = conn.execute(
            "SELECT id FROM pomodoros WHERE user_id = ANY(%s) ORDER BY id DESC LIMIT %s",
            (ids, _RECENT),
        ).fetchall()
        self._recent.clear()
        self._recent.extend(row[0] for row in reversed(recent))
        log.info("demo writing", rate=self._rate, users=len(crowd))

    def _write(self, conn: psycopg.Connection[Any]) -> None:
        due = time.monotonic()
        while True:
            due += self._plan.pause(self._rate)
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            due = max(due, time.monotonic() - 1.0)  # after a stall, do not burst to catch up
            self._apply(conn, self._plan.next())

    def _apply(self, conn: psycopg.Connection[Any], write: Write) -> None:
        if isinstance(write, Insert) or not self._recent:
            insert = write if isinstance(write, Insert) else Insert(self._plan.someone(), None)
            row = conn.execute(
                "INSERT INTO pomodoros (user_id, completed_at)"
                " VALUES (%s, coalesce(%s, now())) RETURNING id",
                (insert.user_id, insert.completed_at),
            ).fetchone()
            if row is not None:
                self._recent.append(int(row[0]))
            self.stats.inserts += 1
        elif isinstance(write, Move):
            target = self._recent[self._plan.pick(len(self._recent))]
            conn.execute(
                "UPDATE pomodoros SET user_id = coalesce(%s, user_id),"
                " completed_at = coalesce(%s, completed_at) WHERE id = %s",
                (write.user_id, write.completed_at, target),
            )
            self.stats.moves += 1
        else:
            index = self._plan.pick(len(self._recent))
            target = self._recent[index]
            del self._recent[index]
            conn.execute("DELETE FROM pomodoros WHERE id = %s", (target,))
            self.stats.deletes += 1
