"""Property: projecting any random change history equals recomputing the boards from the rows.

One projector streams for the whole test; each example starts from empty tables (itself a
TRUNCATE the projector must follow), commits a random history in random transactions and
compares Redis with the recomputation once the watermark has passed the last commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Projected
from .support import assert_same

ZONES = ["Europe/Berlin", "America/St_Johns"]  # DST; St. John's also a half-hour offset
USERS = ["ann", "ben", "cat", "dan", "éva"]


def edge_instants(zone_name: str) -> list[datetime]:
    """Instants where buckets or offsets change in the zone, and a second either side.

    Local midnights of ISO week, month and year edges (2026 has an ISO week 53) and every
    offset change of 2026 in the zone. Only test inputs: expectations come from SQL.
    """
    zone = ZoneInfo(zone_name)
    days = [date(2026, 1, 1), date(2026, 3, 2), date(2026, 11, 1), date(2026, 12, 28)]
    days += [date(2027, 1, 1), date(2027, 1, 4)]
    edges = [datetime.combine(d, time(), zone).astimezone(UTC) for d in days]
    step = timedelta(minutes=15)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    while at.year == 2026:
        if (at + step).astimezone(zone).utcoffset() != at.astimezone(zone).utcoffset():
            change = at + step
            edges.append(change)
            local = change.astimezone(zone)  # the local midnights around the change
            for d in (local.date(), local.date() + timedelta(days=1)):
                edges.append(datetime.combine(d, time(), zone).astimezone(UTC))
        at += step
    return [edge + timedelta(seconds=d) for edge in edges for d in (-1, 0, 1)]


users = st.sampled_from(USERS)
picks = st.integers(min_value=0, max_value=10_000)  # which existing row, modulo the row count


@dataclass(frozen=True)
class Op:
    kind: str
    args: tuple[Any, ...]


def histories(instants: st.SearchStrategy[datetime]) -> st.SearchStrategy[list[list[Op]]]:
    """Transactions of operations; instants drawn from ``instants``."""
    ops = st.one_of(
        st.builds(lambda u, t: Op("insert", (u, t)), users, instants),
        st.builds(lambda u, t: Op("insert", (u, t)), users, instants),
        st.builds(lambda p, u: Op("move_user", (p, u)), picks, users),
        st.builds(lambda p, t: Op("move_time", (p, t)), picks, instants),
        st.builds(lambda p, u, t: Op("move_both", (p, u, t)), picks, users, instants),
        st.builds(
            lambda p, s: Op("nudge", (p, s)), picks, st.integers(min_value=-3600, max_value=3600)
        ),
        st.builds(lambda p: Op("delete", (p,)), picks),
        st.builds(lambda u: Op("delete_user", (u,)), users),
        st.builds(lambda u, h: Op("shift_user", (u, h)), users, st.integers(-48, 48)),
        st.just(Op("truncate", ())),
        st.builds(lambda u, n: Op("name", (u, n)), users, st.text(max_size=20)),
        st.builds(lambda u: Op("unname", (u,)), users),
        st.just(Op("truncate_users", ())),
    )
    return st.lists(st.lists(ops, min_size=1, max_size=8), min_size=1, max_size=12)


_PICK = "(SELECT id FROM pomodoros ORDER BY id OFFSET %s LIMIT 1)"


def _apply(conn: psycopg.Connection[Any], op: Op) -> None:
    kind, args = op.kind, op.args
    if kind in ("move_user", "move_time", "move_both", "nudge", "delete"):
        row = conn.execute("SELECT count(*) FROM pomodoros").fetchone()
        count = int(row[0]) if row else 0
        if count == 0:
            return
        offset = args[0] % count
    if kind == "insert":
        conn.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s)", args)
    elif kind == "move_user":
        conn.execute(f"UPDATE pomodoros SET user_id = %s WHERE id = {_PICK}", (args[1], offset))
    elif kind == "move_time":
        conn.execute(
            f"UPDATE pomodoros SET completed_at = %s WHERE id = {_PICK}", (args[1], offset)
        )
    elif kind == "move_both":
        conn.execute(
            f"UPDATE pomodoros SET user_id = %s, completed_at = %s WHERE id = {_PICK}",
            (args[1], args[2], offset),
        )
    elif kind == "nudge":  # often stays in the same buckets: a no-op for the boards
        conn.execute(
            "UPDATE pomodoros SET completed_at = completed_at + make_interval(secs => %s)"
            f" WHERE id = {_PICK}",
            (args[1], offset),
        )
    elif kind == "delete":
        conn.execute(f"DELETE FROM pomodoros WHERE id = {_PICK}", (offset,))
    elif kind == "delete_user":
        conn.execute("DELETE FROM pomodoros WHERE user_id = %s", args)
    elif kind == "shift_user":
        conn.execute(
            "UPDATE pomodoros SET completed_at = completed_at + make_interval(hours => %s)"
            " WHERE user_id = %s",
            (args[1], args[0]),
        )
    elif kind == "truncate":
        conn.execute("TRUNCATE pomodoros")
    elif kind == "name":
        conn.execute(
            "INSERT INTO users (id, display_name) VALUES (%s, %s)"
            " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
            (args[0], args[1].replace("\x00", "")),
        )
    elif kind == "unname":
        conn.execute("DELETE FROM users WHERE id = %s", args)
    elif kind == "truncate_users":
        conn.execute("TRUNCATE users")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("zone", ZONES)
def test_random_history_projects_to_the_recomputation(
    zone: str, db: psycopg.Connection[Any], start_thread: Any
) -> None:
    """Any history of inserts, moves, deletes and truncates in any transactions projects exactly."""
    projected: Projected = start_thread(timezone=zone)
    projected.caught_up()
    instants = st.one_of(
        st.sampled_from(edge_instants(zone)),
        st.datetimes(
            min_value=datetime(2025, 12, 1), max_value=datetime(2027, 2, 1), timezones=st.just(UTC)
        ),
    )

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(history=histories(instants))
    def check(history: list[list[Op]]) -> None:
        db.execute("TRUNCATE pomodoros, users")
        for transaction in history:
            with db.transaction():
                for op in transaction:
                    _apply(db, op)
        projected.caught_up()
        assert_same(projected.redis(), projected.expected())

    check()
