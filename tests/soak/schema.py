"""The soak's schema beside the migrations, its boards, and the DDL its faults run.

Four boards (``boards.toml``): the pomodoro board; ``focus``, over a table partitioned by
RANGE on ``started_at`` (a partition per UTC calendar quarter of the last year, a DEFAULT
partition for the rest, REPLICA IDENTITY FULL on the root and on every partition), which
partition maintenance changes without any row change in the stream; ``focus-long``, over the
same table with a condition (``where``) on minutes and members; and ``signups``, over
``users``, the only board that reads ``users.created_at``, which a breaking migration
renames or retypes. ``restore`` puts the canonical schema back at the start of a round.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from projector.core.boards import Board, load_boards

BOARDS_FILE = Path(__file__).with_name("boards.toml")
BOARDS: tuple[Board, ...] = load_boards(str(BOARDS_FILE))

FOCUS = "focus"
FOCUS_DEFAULT = "focus_default"
# The column only the signups board reads, and what a breaking migration renames it to.
SIGNUP_COLUMN = "created_at"
SIGNUP_RENAMED = "created_on"
SIGNUP_BOARD = "signups"
_CANONICAL_DAYS = 365  # quarters overlapping the last year get a partition of their own
_SPAN_DAYS = 725  # the workload's span (workload._SPAN_DAYS): quarters to attach come from it

_FOCUS_DDL = """
CREATE TABLE IF NOT EXISTS focus (
    id bigint GENERATED ALWAYS AS IDENTITY,
    member text,
    started_at timestamptz NOT NULL,
    minutes integer NOT NULL CHECK (minutes >= 0),
    PRIMARY KEY (id, started_at)
) PARTITION BY RANGE (started_at);
ALTER TABLE focus REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS focus_default PARTITION OF focus DEFAULT;
ALTER TABLE focus_default REPLICA IDENTITY FULL;
"""

_PARTITIONS_SQL = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'public.focus'::regclass
"""

# Tables named like a partition that are none (detached and left behind by a broken round).
_STRAY_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname ~ '^focus_[0-9]{4}q[1-4]$'
  AND NOT c.relispartition
"""


@dataclass(frozen=True, slots=True, order=True)
class Quarter:
    """A UTC calendar quarter: the range of one partition of ``focus``."""

    year: int
    number: int

    @classmethod
    def of(cls, when: datetime) -> Quarter:
        when = when.astimezone(UTC)
        return cls(when.year, (when.month - 1) // 3 + 1)

    @classmethod
    def named(cls, table: str) -> Quarter:
        """The quarter of a partition named ``focus_YYYYqN``."""
        year, number = table.removeprefix("focus_").split("q")
        return cls(int(year), int(number))

    @property
    def table(self) -> str:
        return f"focus_{self.year}q{self.number}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, 3 * self.number - 2, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> Quarter:
        return Quarter(self.year + self.number // 4, self.number % 4 + 1)


def quarters(since: datetime, until: datetime) -> list[Quarter]:
    """The quarters overlapping ``[since, until]``, oldest first."""
    found = [Quarter.of(since)]
    while found[-1].end <= until:
        found.append(found[-1].next())
    return found


def canonical_quarters(now: datetime) -> list[Quarter]:
    """The quarters with a partition of their own at the start of a round."""
    return quarters(now - timedelta(days=_CANONICAL_DAYS), now)


# --------------------------------------------------------------------------- set-up


def create(conn: psycopg.Connection[Any], now: datetime) -> None:
    """Create ``focus`` with its canonical partitions (once per soak run, before migrate)."""
    conn.execute(_FOCUS_DDL)
    restore(conn, now)


def restore(conn: psycopg.Connection[Any], now: datetime) -> list[str]:
    """Undo what the faults left: ``users.created_at`` a timestamptz again, the canonical
    partitions of ``focus`` (its rows are reloaded next) and no stray detached partition.
    Returns what it changed (nothing after a round whose faults healed their own DDL)."""
    changed: list[str] = []
    with conn.transaction():
        changed += _restore_signup_column(conn)
        wanted = {q.table: q for q in canonical_quarters(now)}
        have = {str(name): bool(default) for name, default in conn.execute(_PARTITIONS_SQL)}
        if set(have) != set(wanted) | {FOCUS_DEFAULT}:
            conn.execute("TRUNCATE focus")
            for name, default in have.items():
                if name not in wanted and not default:
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                    changed.append(f"dropped partition {name}")
            if FOCUS_DEFAULT not in have:
                conn.execute(_FOCUS_DDL)
                changed.append(f"created partition {FOCUS_DEFAULT}")
            for name, quarter in wanted.items():
                if name not in have:
                    _create_partition(conn, quarter)
                    changed.append(f"created partition {name}")
        for (name,) in conn.execute(_STRAY_SQL).fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(str(name))))
            changed.append(f"dropped detached table {name}")
    return changed


def _create_partition(conn: psycopg.Connection[Any], quarter: Quarter) -> None:
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF focus FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(quarter.table), sql.Literal(quarter.start), sql.Literal(quarter.end)
        )
    )
    conn.execute(
        sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(quarter.table))
    )


def _restore_signup_column(conn: psycopg.Connection[Any]) -> list[str]:
    columns = dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = 'users'"
        ).fetchall()
    )
    changed = []
    if SIGNUP_RENAMED in columns:
        conn.execute(f"ALTER TABLE users RENAME COLUMN {SIGNUP_RENAMED} TO {SIGNUP_COLUMN}")
        changed.append(f"users.{SIGNUP_RENAMED} renamed back")
    if columns.get(SIGNUP_COLUMN, columns.get(SIGNUP_RENAMED)) != "timestamp with time zone":
        conn.execute(_RETYPE_BACK)
        changed.append(f"users.{SIGNUP_COLUMN} a timestamptz again")
    return changed


# --------------------------------------------------------------------------- partitions


def partitions(conn: psycopg.Connection[Any]) -> list[str]:
    """The partitions of ``focus`` now, the DEFAULT one included, by name."""
    return sorted(str(name) for name, _default in conn.execute(_PARTITIONS_SQL))


def rows_in(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def truncate_partition(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))


def detach_partition(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(sql.SQL("ALTER TABLE focus DETACH PARTITION {}").format(sql.Identifier(table)))


def drop_table(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def uncovered_quarters(conn: psycopg.Connection[Any], now: datetime) -> list[Quarter]:
    """Quarters of the workload's span that no partition of their own holds (the DEFAULT
    one has their rows) and no detached table either: where a table with rows can be
    attached."""
    have = set(partitions(conn)) | {str(name) for (name,) in conn.execute(_STRAY_SQL)}
    span = quarters(now - timedelta(days=_SPAN_DAYS), now)
    return [q for q in span if q.table not in have]


def fill_new_partition(
    conn: psycopg.Connection[Any], quarter: Quarter, rows: list[tuple[str | None, datetime, int]]
) -> None:
    """Create the table for ``quarter`` outside ``focus`` and fill it with ``rows`` (ids from
    the root's identity, as if they had been written through it)."""
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE focus INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                sql.Identifier(quarter.table)
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(quarter.table))
        )
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (id, member, started_at, minutes)"
                    " VALUES (nextval(pg_get_serial_sequence('focus', 'id')), %s, %s, %s)"
                ).format(sql.Identifier(quarter.table)),
                rows,
            )


def attach_partition(conn: psycopg.Connection[Any], quarter: Quarter) -> int:
    """Attach the table of ``quarter`` (detached before, or filled by ``fill_new_partition``),
    moving the DEFAULT partition's rows of its range into it first, in the same transaction
    (else ATTACH fails: the DEFAULT partition may not keep them). Returns the rows moved."""
    table = sql.Identifier(quarter.table)
    with conn.transaction():
        # No row may reach the DEFAULT partition between the move and the attach.
        conn.execute("LOCK TABLE focus IN SHARE UPDATE EXCLUSIVE MODE")
        conn.execute("LOCK TABLE focus_default IN ACCESS EXCLUSIVE MODE")
        moved = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM focus_default"
                " WHERE started_at >= %(start)s AND started_at < %(end)s"
                " RETURNING id, member, started_at, minutes)"
                " INSERT INTO {} (id, member, started_at, minutes) SELECT * FROM moved"
            ).format(table),
            {"start": quarter.start, "end": quarter.end},
        ).rowcount
        conn.execute(
            sql.SQL("ALTER TABLE focus ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                table, sql.Literal(quarter.start), sql.Literal(quarter.end)
            )
        )
    return moved


def with_retries(
    conn: psycopg.Connection[Any], action: Callable[[psycopg.Connection[Any]], Any], tries: int = 5
) -> Any:
    """Run ``action`` again after a deadlock or a lock timeout with the workload's writes."""
    for attempt in range(1, tries + 1):
        try:
            return action(conn)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
            if attempt == tries:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- migrations

# Breaking migrations of users.created_at (only the signups board reads it), and their fixes.
_RENAME = f"ALTER TABLE users RENAME COLUMN {SIGNUP_COLUMN} TO {SIGNUP_RENAMED}"
_RENAME_BACK = f"ALTER TABLE users RENAME COLUMN {SIGNUP_RENAMED} TO {SIGNUP_COLUMN}"
_RETYPE = (
    f"ALTER TABLE users ALTER COLUMN {SIGNUP_COLUMN} TYPE timestamp"
    f" USING {SIGNUP_COLUMN} AT TIME ZONE 'UTC'"
)
_RETYPE_BACK = (
    f"ALTER TABLE users ALTER COLUMN {SIGNUP_COLUMN} TYPE timestamptz"
    f" USING {SIGNUP_COLUMN} AT TIME ZONE 'UTC'"
)
BREAKING_MIGRATIONS = ("rename", "retype")


def break_signups_sql(how: str) -> str:
    """The statement that renames ``users.created_at``, or makes it a timestamp."""
    return _RENAME if how == "rename" else _RETYPE


def break_signups(conn: psycopg.Connection[Any], how: str) -> None:
    """Rename ``users.created_at``, or make it a timestamp without time zone."""
    conn.execute(break_signups_sql(how))


def fix_signups(conn: psycopg.Connection[Any], how: str) -> None:
    """Undo ``break_signups(conn, how)``."""
    conn.execute(_RENAME_BACK if how == "rename" else _RETYPE_BACK)


def new_focus_rows(
    rng: random.Random, quarter: Quarter, count: int, members: tuple[str, ...]
) -> list[tuple[str | None, datetime, int]]:
    """``count`` rows inside ``quarter`` for a table to attach (some without a member)."""
    seconds = (quarter.end - quarter.start).total_seconds()
    return [
        (
            None if rng.random() < 0.1 else rng.choice(members),
            quarter.start + timedelta(seconds=rng.uniform(0, seconds - 1)),
            rng.randint(0, 50),
        )
        for _ in range(count)
    ]
