"""The soak's workload: seeded, reproducible writes to `pomodoros`, `users` and `focus`.

`plan_steps` picks a round's steps from its random generator; `Workload` runs them on a
direct connection of its own, reconnecting across server restarts (a commit of unknown
outcome does not matter: the oracle compares Redis with what PostgreSQL holds in the end).
`load_base_data` puts the tables back to a seeded starting point at the start of a round.
`focus` is partitioned (``schema.py``): its rows move between partitions, and to and from a
NULL member. While a breaking migration has renamed ``users.created_at`` the workload writes
the column by its new name (``use_signup_column``). Timestamps stay within the last two
years and crowd around local midnights of the soak's time zones and their daylight-saving
changes, where bucket arithmetic goes wrong.
"""

from __future__ import annotations

import contextlib
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from tests.soak.schema import SIGNUP_COLUMN

USER_IDS = tuple(f"u{i:02d}" for i in range(48))
_NAMED = 36  # users with a `users` row at the start of a round; the others have none
BASE_ROWS = 3_000
BASE_FOCUS_ROWS = 1_200
_SPAN_DAYS = 725
_NAME_ALPHABET = string.ascii_letters + string.digits + "äöüßéñçøå€ΩЖ漢字かな"

# (kind, weight): a round draws its steps from these.
STEP_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("insert", 16),
    ("insert_many", 8),
    ("move_user", 8),
    ("move_time", 8),
    ("move_both", 5),
    ("delete", 7),
    ("mixed", 12),
    ("rollback", 5),
    ("savepoint", 5),
    ("rename", 7),
    ("toast_touch", 3),
    ("user_reid", 3),
    ("user_delete", 2),
    ("truncate", 2),
    ("focus_insert", 7),
    ("focus_move", 8),
    ("focus_delete", 3),
    ("large", 6),
    ("burst", 6),
)
STEP_KINDS = tuple(kind for kind, _ in STEP_WEIGHTS)


@dataclass(frozen=True, slots=True)
class Step:
    """One unit of the workload: a transaction, or a burst of them."""

    kind: str
    seed: int


def plan_steps(rng: random.Random, count: int) -> list[Step]:
    """``count`` steps drawn by weight; each carries a seed of its own."""
    kinds = rng.choices(STEP_KINDS, weights=[w for _, w in STEP_WEIGHTS], k=count)
    return [Step(kind, rng.randrange(1 << 30)) for kind in kinds]


# --------------------------------------------------------------------------- values


class Instants:
    """Timestamps for generated rows: recent, anywhere in two years, or near a boundary."""

    def __init__(self, now: datetime, zones: Sequence[str]) -> None:
        self.now = now
        self.oldest = now - timedelta(days=_SPAN_DAYS)
        self.zones = [ZoneInfo(zone) for zone in zones]
        self.transitions = [t for zone in self.zones for t in self._dst_changes(zone)]

    def _dst_changes(self, zone: ZoneInfo) -> list[datetime]:
        """The instants in the span where ``zone`` changes its UTC offset."""
        found = []
        start = self.oldest.date()
        previous = datetime(start.year, start.month, start.day, 12, tzinfo=zone).utcoffset()
        for offset in range(1, _SPAN_DAYS + 1):
            day = start + timedelta(days=offset)
            current = datetime(day.year, day.month, day.day, 12, tzinfo=zone).utcoffset()
            if current != previous:
                # The change happens overnight: midnight local of `day` is a close enough mark.
                found.append(datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC))
            previous = current
        return found

    def pick(self, rng: random.Random) -> datetime:
        roll = rng.random()
        if roll < 0.45:
            when = self.now - timedelta(seconds=rng.uniform(60, 40 * 86_400))
        elif roll < 0.70:
            when = self.now - timedelta(seconds=rng.uniform(60, _SPAN_DAYS * 86_400))
        elif roll < 0.90 or not self.transitions:
            zone = rng.choice(self.zones)
            day = (self.now - timedelta(days=rng.randrange(_SPAN_DAYS))).astimezone(zone).date()
            midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
            when = midnight + timedelta(seconds=rng.uniform(-5_400, 5_400))
        else:
            when = rng.choice(self.transitions) + timedelta(seconds=rng.uniform(-14_400, 14_400))
        return min(max(when, self.oldest), self.now - timedelta(seconds=1)).astimezone(UTC)


def display_name(rng: random.Random) -> str:
    """A short name, or one of 2.6-4 kB of incompressible text (stored out of line: TOAST)."""
    if rng.random() < 0.35:
        return "".join(rng.choices(_NAME_ALPHABET, k=rng.randint(2_600, 4_000)))
    first = rng.choice(("Ada", "Alan", "Grace", "Edsger", "Barbara", "Ken"))
    return f"{first} {rng.randrange(1000)}"


# --------------------------------------------------------------------------- base data


def load_base_data(conn: psycopg.Connection[Any], seed: int, instants: Instants) -> None:
    """Empty the tables (and the ballast) and load a seeded starting point, in one commit."""
    rng = random.Random(seed)
    with conn.transaction():
        conn.execute("TRUNCATE pomodoros, users, focus, soak_ballast")
        users = [(user, display_name(rng), instants.pick(rng)) for user in USER_IDS[:_NAMED]]
        _copy_users(conn, users, SIGNUP_COLUMN)
        _copy_pomodoros(conn, [_row(rng, instants) for _ in range(BASE_ROWS)])
        _copy_focus(conn, [focus_row(rng, instants) for _ in range(BASE_FOCUS_ROWS)])


def _row(rng: random.Random, instants: Instants) -> tuple[str, datetime]:
    return rng.choice(USER_IDS), instants.pick(rng)


def focus_row(rng: random.Random, instants: Instants) -> tuple[str | None, datetime, int]:
    """A `focus` row: a member (or, one time in ten, none), when, and minutes (0 to 50)."""
    return focus_member(rng), instants.pick(rng), rng.randint(0, 50)


def focus_member(rng: random.Random) -> str | None:
    return None if rng.random() < 0.1 else rng.choice(USER_IDS)


def _copy_users(
    conn: psycopg.Connection[Any], rows: list[tuple[str, str, datetime]], signup_column: str
) -> None:
    statement = sql.SQL("COPY users (id, display_name, {}) FROM STDIN").format(
        sql.Identifier(signup_column)
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _copy_focus(
    conn: psycopg.Connection[Any], rows: list[tuple[str | None, datetime, int]]
) -> None:
    with (
        conn.cursor() as cur,
        cur.copy("COPY focus (member, started_at, minutes) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def _copy_pomodoros(conn: psycopg.Connection[Any], rows: list[tuple[str, datetime]]) -> None:
    with (
        conn.cursor() as cur,
        cur.copy("COPY pomodoros (user_id, completed_at) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


# --------------------------------------------------------------------------- the runner


class Workload:
    """Runs planned steps on a direct connection, in a thread, until done or stopped."""

    def __init__(self, dsn: str, instants: Instants, *, pause: float = 0.12) -> None:
        self.dsn = dsn
        self.instants = instants
        self.pause = pause
        self.committed: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        # The name of users.created_at now (a breaking migration may have renamed it).
        self.signup_column = SIGNUP_COLUMN
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._go = threading.Event()  # cleared by hold(): no step starts until release()
        self._go.set()
        self._between_steps = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None

    # -- thread ----------------------------------------------------------------------

    def start(self, steps: Sequence[Step], seed: int) -> Workload:
        self._thread = threading.Thread(
            target=self._run, args=(list(steps), seed), name="workload", daemon=True
        )
        self._thread.start()
        return self

    def join(self, timeout: float = 60.0) -> None:
        """Wait for the last step; re-raise what broke the workload itself."""
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(30)
        assert not self._thread.is_alive(), "the workload did not finish"
        if self.error is not None:
            raise AssertionError(f"the workload failed: {self.error!r}") from self.error

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def hold(self, timeout: float = 5.0) -> bool:
        """Start no further step until ``release``; wait (up to ``timeout``) for the current
        one to end, and say whether it did. The nemesis uses it to act on a quiet database."""
        self._go.clear()
        return self._between_steps.wait(timeout)

    def release(self) -> None:
        self._go.set()

    def use_signup_column(self, name: str) -> None:
        """Write ``users.created_at`` by this name from the next step on (call it held)."""
        self.signup_column = name

    def _run(self, steps: list[Step], seed: int) -> None:
        pacing = random.Random(seed)
        try:
            for step in steps:
                self._between_steps.set()
                while not self._go.wait(0.05):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    break
                self._between_steps.clear()
                self.run_step(step)
                self._between_steps.set()
                self._stop.wait(pacing.uniform(0, self.pause))
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self._between_steps.set()
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- one step --------------------------------------------------------------------

    def run_step(self, step: Step) -> None:
        """Run one step; a lost connection or a conflict counts as a failed step."""
        action = _ACTIONS[step.kind]
        try:
            action(self, self._connection(), random.Random(step.seed))
        except psycopg.OperationalError:
            self.failed[step.kind] += 1
            self.close()
            return
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
            self.failed[step.kind] += 1
            return
        except psycopg.errors.UndefinedColumn:
            # A step that raced a breaking migration (the nemesis renames with the workload
            # held, but a hold may time out).
            self.failed[step.kind] += 1
            return
        self.committed[step.kind] += 1

    def _connection(self, timeout: float = 30.0) -> psycopg.Connection[Any]:
        """The open connection, reconnecting while a server restarts."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                self._conn.execute("SET lock_timeout = '5s'")
                return self._conn
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                time.sleep(0.1)

    # -- operations inside a transaction ----------------------------------------------

    def _count(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT count(*) FROM pomodoros").fetchone()
        return int(row[0]) if row else 0

    def _insert(self, conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)",
                [_row(rng, self.instants) for _ in range(rows)],
            )

    def _pick(self, rng: random.Random, total: int) -> int:
        return rng.randrange(max(total, 1))

    def _move(
        self, conn: psycopg.Connection[Any], rng: random.Random, total: int, what: str
    ) -> None:
        sets: list[str] = []
        params: list[object] = []
        if what in ("user", "both"):
            sets.append("user_id = %s")
            params.append(rng.choice(USER_IDS))
        if what in ("time", "both"):
            sets.append("completed_at = %s")
            params.append(self.instants.pick(rng))
        width = 1 if rng.random() < 0.7 else rng.randint(2, 40)
        conn.execute(
            f"UPDATE pomodoros SET {', '.join(sets)} WHERE id IN"
            " (SELECT id FROM pomodoros ORDER BY id LIMIT %s OFFSET %s)",
            (*params, width, self._pick(rng, total)),
        )

    def _delete(self, conn: psycopg.Connection[Any], rng: random.Random, total: int) -> None:
        width = 1 if rng.random() < 0.7 else rng.randint(2, 30)
        conn.execute(
            "DELETE FROM pomodoros WHERE id IN"
            " (SELECT id FROM pomodoros ORDER BY id LIMIT %s OFFSET %s)",
            (width, self._pick(rng, total)),
        )

    def _rename(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """A new user (signed up at some instant), or a new name of one."""
        conn.execute(
            sql.SQL(
                "INSERT INTO users (id, display_name, {}) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name"
            ).format(sql.Identifier(self.signup_column)),
            (rng.choice(USER_IDS), display_name(rng), self.instants.pick(rng)),
        )

    def _focus_count(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT count(*) FROM focus").fetchone()
        return int(row[0]) if row else 0

    def _focus_insert(self, conn: psycopg.Connection[Any], rng: random.Random, rows: int) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO focus (member, started_at, minutes) VALUES (%s, %s, %s)",
                [focus_row(rng, self.instants) for _ in range(rows)],
            )

    def _focus_move(self, conn: psycopg.Connection[Any], rng: random.Random, total: int) -> None:
        """Change some rows' member (to or from NULL too), time (often into another
        partition) or minutes, or several of them."""
        sets: list[str] = []
        params: list[object] = []
        what = rng.choice(("member", "time", "minutes", "member+time", "all"))
        if what in ("member", "member+time", "all"):
            sets.append("member = %s")
            params.append(focus_member(rng))
        if what in ("time", "member+time", "all"):
            sets.append("started_at = %s")
            params.append(self.instants.pick(rng))
        if what in ("minutes", "all"):
            sets.append("minutes = %s")
            params.append(rng.randint(0, 50))
        width = 1 if rng.random() < 0.6 else rng.randint(2, 40)
        conn.execute(
            f"UPDATE focus SET {', '.join(sets)} WHERE id IN"
            " (SELECT id FROM focus ORDER BY id LIMIT %s OFFSET %s)",
            (*params, width, self._pick(rng, total)),
        )

    def _focus_delete(self, conn: psycopg.Connection[Any], rng: random.Random, total: int) -> None:
        width = 1 if rng.random() < 0.7 else rng.randint(2, 30)
        conn.execute(
            "DELETE FROM focus WHERE id IN (SELECT id FROM focus ORDER BY id LIMIT %s OFFSET %s)",
            (width, self._pick(rng, total)),
        )

    def _random_ops(self, conn: psycopg.Connection[Any], rng: random.Random, ops: int) -> None:
        total = self._count(conn)
        focus = self._focus_count(conn)
        for _ in range(ops):
            roll = rng.random()
            if roll < 0.3:
                self._insert(conn, rng, rng.randint(1, 4))
            elif roll < 0.45:
                self._move(conn, rng, total, rng.choice(("user", "time", "both")))
            elif roll < 0.6:
                self._delete(conn, rng, total)
            elif roll < 0.7:
                self._focus_insert(conn, rng, rng.randint(1, 3))
            elif roll < 0.8:
                self._focus_move(conn, rng, focus)
            elif roll < 0.85:
                self._focus_delete(conn, rng, focus)
            elif roll < 0.95:
                self._rename(conn, rng)
            else:
                conn.execute("DELETE FROM users WHERE id = %s", (rng.choice(USER_IDS),))

    # -- the steps -------------------------------------------------------------------

    def step_insert(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._insert(conn, rng, rng.randint(1, 5))

    def step_insert_many(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            _copy_pomodoros(conn, [_row(rng, self.instants) for _ in range(rng.randint(20, 250))])

    def step_move_user(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._move(conn, rng, self._count(conn), "user")

    def step_move_time(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._move(conn, rng, self._count(conn), "time")

    def step_move_both(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._move(conn, rng, self._count(conn), "both")

    def step_delete(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._delete(conn, rng, self._count(conn))

    def step_mixed(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._random_ops(conn, rng, rng.randint(2, 12))

    def step_rollback(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """Changes that never commit (sometimes more of them than the atomic limit)."""
        with conn.transaction():
            self._random_ops(conn, rng, rng.randint(1, 8))
            if rng.random() < 0.3:
                _copy_pomodoros(conn, [_row(rng, self.instants) for _ in range(1_200)])
            raise psycopg.Rollback()

    def step_savepoint(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """A commit with a rolled-back savepoint (an aborted subtransaction) inside."""
        with conn.transaction():
            self._random_ops(conn, rng, rng.randint(1, 4))
            with conn.transaction():
                self._random_ops(conn, rng, rng.randint(1, 6))
                raise psycopg.Rollback()
            with conn.transaction():  # a savepoint released: its changes commit
                self._random_ops(conn, rng, rng.randint(1, 4))
            self._random_ops(conn, rng, rng.randint(0, 3))

    def step_rename(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            for _ in range(rng.randint(1, 3)):
                self._rename(conn, rng)

    def step_toast_touch(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """Update users without touching their (possibly out-of-line) names: they move to
        another signup bucket."""
        with conn.transaction():
            conn.execute(
                sql.SQL("UPDATE users SET {} = %s WHERE id = ANY(%s)").format(
                    sql.Identifier(self.signup_column)
                ),
                (self.instants.pick(rng), rng.sample(USER_IDS, rng.randint(1, 6))),
            )

    def step_user_reid(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """Give a user a new id, its name (often TOASTed) left unchanged."""
        old, new = rng.sample(USER_IDS, 2)
        with conn.transaction():
            conn.execute(
                "UPDATE users SET id = %s WHERE id = %s"
                " AND NOT EXISTS (SELECT 1 FROM users WHERE id = %s)",
                (new, old, new),
            )

    def step_user_delete(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            conn.execute(
                "DELETE FROM users WHERE id = ANY(%s)", (rng.sample(USER_IDS, rng.randint(1, 3)),)
            )

    def step_truncate(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """TRUNCATE (pomodoros, sometimes users or the partitioned focus too), refilled in
        the same transaction."""
        with conn.transaction():
            both = rng.random() < 0.4
            focus = rng.random() < 0.4
            tables = ["pomodoros"] + (["users"] if both else []) + (["focus"] if focus else [])
            conn.execute(f"TRUNCATE {', '.join(tables)}")
            if both:
                names = [
                    (user, display_name(rng), self.instants.pick(rng))
                    for user in rng.sample(USER_IDS, 20)
                ]
                _copy_users(conn, names, self.signup_column)
            rows = [_row(rng, self.instants) for _ in range(rng.randint(200, 900))]
            _copy_pomodoros(conn, rows)
            if focus:
                _copy_focus(conn, [focus_row(rng, self.instants) for _ in range(400)])

    def step_focus_insert(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._focus_insert(conn, rng, rng.randint(1, 6))

    def step_focus_move(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """Moves of focus rows, across partitions among them."""
        with conn.transaction():
            total = self._focus_count(conn)
            for _ in range(rng.randint(1, 3)):
                self._focus_move(conn, rng, total)

    def step_focus_delete(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        with conn.transaction():
            self._focus_delete(conn, rng, self._focus_count(conn))

    def step_large(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """Thousands of row changes in one transaction: applied in chunks.

        Half of them first write many rows of a table outside the publication: the
        walsender then decodes for a while before the transaction's first published
        change (and its Begin) reaches the projector.
        """
        with conn.transaction():
            if rng.random() < 0.5:
                ballast(conn, rng.randint(20_000, 80_000))
            big_transaction_body(conn, rng, self.instants, rows=rng.randint(1_500, 3_000))

    def step_burst(self, conn: psycopg.Connection[Any], rng: random.Random) -> None:
        """Many single-row commits in a row, pipelined: a storm of tiny transactions."""
        total = self._count(conn)
        with conn.pipeline():
            for _ in range(rng.randint(60, 300)):
                if rng.random() < 0.75:
                    user, when = _row(rng, self.instants)
                    conn.execute(
                        "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)",
                        (user, when),
                    )
                else:
                    conn.execute(
                        "UPDATE pomodoros SET user_id = %s WHERE id ="
                        " (SELECT id FROM pomodoros ORDER BY id LIMIT 1 OFFSET %s)",
                        (rng.choice(USER_IDS), self._pick(rng, total)),
                    )


def ballast(conn: psycopg.Connection[Any], rows: int) -> None:
    """Rows of a table outside the publication (decoded by the walsender, never sent)."""
    conn.execute(
        "INSERT INTO soak_ballast (note) SELECT repeat('b', 60) FROM generate_series(1, %s)",
        (rows,),
    )


def big_transaction_body(
    conn: psycopg.Connection[Any], rng: random.Random, instants: Instants, *, rows: int
) -> None:
    """Inside an open transaction: ``rows`` inserts, then moves and deletes of some of them."""
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM pomodoros")
        row = cur.fetchone()
    first_id = int(row[0]) if row else 0
    _copy_pomodoros(conn, [_row(rng, instants) for _ in range(rows)])
    conn.execute(
        "UPDATE pomodoros SET user_id = %s, completed_at = completed_at - interval '1 day'"
        " WHERE id > %s AND id %% 4 = 0",
        (rng.choice(USER_IDS), first_id),
    )
    conn.execute("DELETE FROM pomodoros WHERE id > %s AND id %% 7 = 0", (first_id,))


_ACTIONS: dict[str, Callable[[Workload, psycopg.Connection[Any], random.Random], None]] = {
    kind: getattr(Workload, f"step_{kind}") for kind in STEP_KINDS
}
