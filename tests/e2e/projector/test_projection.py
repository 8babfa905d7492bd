"""End to end: application writes to PostgreSQL become exactly the right Redis boards.

Each test runs the projector in a thread against the harness's PostgreSQL and Redis,
checks a few boards by hand (so a shared mistake in the recomputation cannot hide) and
then compares everything with the recomputation from the rows.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from .conftest import Projected


def insert(db: psycopg.Connection[Any], user: str, at: str) -> int:
    row = db.execute(
        "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, %s) RETURNING id", (user, at)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_insert_counts_in_all_five_boards(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """An INSERT adds one to the member in its day, ISO week, month, year and all-time boards."""
    insert(db, "alice", "2026-11-26 10:00+00")
    insert(db, "alice", "2026-11-26 11:00+00")
    insert(db, "bob", "2026-11-27 09:00+00")
    got = projected.assert_exact()
    assert got.boards == {
        ("day", "2026-11-26"): {"alice": 2},
        ("day", "2026-11-27"): {"bob": 1},
        ("week", "2026-W48"): {"alice": 2, "bob": 1},
        ("month", "2026-11"): {"alice": 2, "bob": 1},
        ("year", "2026"): {"alice": 2, "bob": 1},
        ("all", "all"): {"alice": 2, "bob": 1},
    }


def test_rows_present_before_start_are_rebuilt(
    db: psycopg.Connection[Any], start_thread: Callable[..., Projected]
) -> None:
    """Rows committed before the first start come from the snapshot rebuild, then streaming."""
    for day in range(1, 20):
        insert(db, f"user{day % 3}", f"2026-10-{day:02d} 12:00+00")
    db.execute("INSERT INTO users (id, display_name) VALUES ('user1', 'One')")
    projected = start_thread()
    projected.assert_exact()
    insert(db, "user1", "2026-10-05 08:00+00")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"user0": 6, "user1": 8, "user2": 6}
    assert got.names == {"user1": "One"}


def test_update_moving_user(db: psycopg.Connection[Any], projected: Projected) -> None:
    """An UPDATE of user_id moves the pomodoro from the old member to the new in every board."""
    pid = insert(db, "alice", "2026-11-26 10:00+00")
    insert(db, "alice", "2026-11-26 10:30+00")
    projected.assert_exact()
    db.execute("UPDATE pomodoros SET user_id = 'bob' WHERE id = %s", (pid,))
    got = projected.assert_exact()
    for key in [("day", "2026-11-26"), ("week", "2026-W48"), ("month", "2026-11"), ("all", "all")]:
        assert got.boards[key] == {"alice": 1, "bob": 1}


def test_update_moving_time_across_every_boundary(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """Moving completed_at across day, ISO week, month and year edges moves every board."""
    pid = insert(db, "alice", "2026-12-31 23:59:59.999999+00")  # Thursday of 2026-W53
    got = projected.assert_exact()
    assert set(got.boards) == {
        ("day", "2026-12-31"),
        ("week", "2026-W53"),
        ("month", "2026-12"),
        ("year", "2026"),
        ("all", "all"),
    }
    # One microsecond later: new day, month and year, but the same ISO week (2026 has 53).
    db.execute("UPDATE pomodoros SET completed_at = '2027-01-01 00:00+00' WHERE id = %s", (pid,))
    got = projected.assert_exact()
    assert set(got.boards) == {
        ("day", "2027-01-01"),
        ("week", "2026-W53"),
        ("month", "2027-01"),
        ("year", "2027"),
        ("all", "all"),
    }
    # Sunday to Monday: new ISO week.
    db.execute("UPDATE pomodoros SET completed_at = '2027-01-04 00:00+00' WHERE id = %s", (pid,))
    got = projected.assert_exact()
    assert ("week", "2027-W01") in got.boards and ("week", "2026-W53") not in got.boards
    # User and time at once.
    db.execute(
        "UPDATE pomodoros SET completed_at = '2025-06-15 12:00+00', user_id = 'bob' WHERE id = %s",
        (pid,),
    )
    got = projected.assert_exact()
    assert got.boards == {
        ("day", "2025-06-15"): {"bob": 1},
        ("week", "2025-W24"): {"bob": 1},
        ("month", "2025-06"): {"bob": 1},
        ("year", "2025"): {"bob": 1},
        ("all", "all"): {"bob": 1},
    }


def test_update_within_the_same_bucket_changes_no_score(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """An UPDATE keeping user and every bucket (same day, or only other columns) is a no-op."""
    db.execute("ALTER TABLE pomodoros ADD COLUMN note text")
    pid = insert(db, "alice", "2026-11-26 10:00+00")
    insert(db, "bob", "2026-11-26 11:00+00")
    before = projected.assert_exact()
    db.execute("UPDATE pomodoros SET completed_at = '2026-11-26 23:59+00' WHERE id = %s", (pid,))
    db.execute("UPDATE pomodoros SET note = 'focus' WHERE id = %s", (pid,))
    db.execute("UPDATE pomodoros SET user_id = user_id, completed_at = completed_at")
    after = projected.assert_exact()
    assert after == before


def test_delete_retracts_and_members_at_zero_are_removed(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """A DELETE subtracts one; a member at 0 leaves the board, an emptied board disappears."""
    a1 = insert(db, "alice", "2026-11-26 10:00+00")
    insert(db, "alice", "2026-11-26 11:00+00")
    b1 = insert(db, "bob", "2026-11-20 11:00+00")
    projected.assert_exact()
    db.execute("DELETE FROM pomodoros WHERE id IN (%s, %s)", (a1, b1))
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"alice": 1}
    assert ("day", "2026-11-20") not in got.boards
    assert projected.client.exists("pomo:lb:pomodoros:day:2026-11-20") == 0
    assert projected.client.zscore("pomo:lb:pomodoros:week:2026-W47", "bob") is None
    db.execute("DELETE FROM pomodoros")
    got = projected.assert_exact()
    assert got.boards == {}


def test_truncate_clears_boards_and_later_inserts_count_from_zero(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """TRUNCATE empties every board; rows inserted after it (even in its transaction) count."""
    for hour in range(5):
        insert(db, "alice", f"2026-11-2{hour} 10:00+00")
    projected.assert_exact()
    db.execute("TRUNCATE pomodoros")
    assert projected.assert_exact().boards == {}
    insert(db, "bob", "2026-11-26 10:00+00")
    assert projected.assert_exact().boards[("all", "all")] == {"bob": 1}
    with db.transaction():
        insert(db, "carol", "2026-11-26 10:00+00")
        db.execute("TRUNCATE pomodoros")
        insert(db, "dave", "2026-11-26 10:00+00")
        insert(db, "dave", "2026-01-01 10:00+00")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"dave": 2}
    assert got.boards[("day", "2026-11-26")] == {"dave": 1}


def test_truncate_of_both_tables_and_restart_identity(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """TRUNCATE pomodoros, users RESTART IDENTITY clears boards and names together."""
    db.execute("INSERT INTO users (id, display_name) VALUES ('alice', 'Alice')")
    insert(db, "alice", "2026-11-26 10:00+00")
    projected.assert_exact()
    db.execute("TRUNCATE pomodoros, users RESTART IDENTITY")
    got = projected.assert_exact()
    assert got.boards == {} and got.names == {}
    insert(db, "alice", "2026-11-26 10:00+00")
    assert projected.assert_exact().boards[("all", "all")] == {"alice": 1}


def test_users_keep_the_name_hash_in_step(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """users INSERT, rename, id change, DELETE and TRUNCATE keep the display-name hash exact."""
    db.execute("INSERT INTO users (id, display_name) VALUES ('alice', 'Alice'), ('bob', 'Bob')")
    assert projected.assert_exact().names == {"alice": "Alice", "bob": "Bob"}
    db.execute("UPDATE users SET display_name = 'Alice L.' WHERE id = 'alice'")
    assert projected.assert_exact().names == {"alice": "Alice L.", "bob": "Bob"}
    db.execute("UPDATE users SET id = 'robert' WHERE id = 'bob'")
    assert projected.assert_exact().names == {"alice": "Alice L.", "robert": "Bob"}
    db.execute("DELETE FROM users WHERE id = 'alice'")
    assert projected.assert_exact().names == {"robert": "Bob"}
    db.execute("INSERT INTO users (id, display_name) VALUES ('zoë', 'Zoë 🍅')")
    assert projected.assert_exact().names == {"robert": "Bob", "zoë": "Zoë 🍅"}
    db.execute("TRUNCATE users")
    assert projected.assert_exact().names == {}
    db.execute("INSERT INTO users (id, display_name) VALUES ('carol', 'Carol')")
    assert projected.assert_exact().names == {"carol": "Carol"}


def test_pomodoro_without_users_row_has_no_name(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """A pomodoro whose user_id has no users row is counted; its display name is absent."""
    insert(db, "ghost", "2026-11-26 10:00+00")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"ghost": 1}
    assert got.names == {}


def test_unchanged_toast_display_name_survives_update_of_other_column(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """An UPDATE touching only an added column keeps a large (TOASTed, unsent) display_name."""
    db.execute("ALTER TABLE users ADD COLUMN bio text")
    big = os.urandom(12_000).hex()  # incompressible: stored out of line
    db.execute("INSERT INTO users (id, display_name) VALUES ('alice', %s)", (big,))
    db.execute("INSERT INTO users (id, display_name) VALUES ('bob', 'Bob')")
    assert projected.assert_exact().names == {"alice": big[:64], "bob": "Bob"}
    toast = db.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'users'")
    toast_table = toast.fetchone()
    assert toast_table is not None
    chunks = db.execute(f"SELECT count(*) FROM {toast_table[0]}").fetchone()
    assert chunks and chunks[0] > 0, "the display name should be stored out of line"
    db.execute("UPDATE users SET bio = 'writes a lot' WHERE id = 'alice'")
    db.execute("UPDATE users SET bio = 'short', display_name = 'Bobby' WHERE id = 'bob'")
    insert(db, "alice", "2026-11-26 10:00+00")
    got = projected.assert_exact()
    assert got.names == {"alice": big[:64], "bob": "Bobby"}
    db.execute("UPDATE users SET display_name = 'Alice' WHERE id = 'alice'")
    assert projected.assert_exact().names == {"alice": "Alice", "bob": "Bobby"}


def test_user_id_change_with_toasted_name_under_replica_identity_full(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """Under REPLICA IDENTITY FULL, changing the id of a user with a TOASTed name moves the name."""
    db.execute("ALTER TABLE users REPLICA IDENTITY FULL")
    big = os.urandom(12_000).hex()
    db.execute("INSERT INTO users (id, display_name) VALUES ('alice', %s), ('bob', 'Bob')", (big,))
    projected.assert_exact()
    db.execute("UPDATE users SET id = 'alicia' WHERE id = 'alice'")
    db.execute("UPDATE users SET id = 'robert' WHERE id = 'bob'")
    db.execute("UPDATE users SET display_name = 'Rob' WHERE id = 'robert'")
    assert projected.assert_exact().names == {"alicia": big[:64], "robert": "Rob"}


def test_pomodoros_with_added_and_dropped_columns_keep_working(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """Columns added to (and dropped from) pomodoros while streaming change nothing."""
    insert(db, "alice", "2026-11-26 10:00+00")
    projected.assert_exact()
    db.execute("ALTER TABLE pomodoros ADD COLUMN note text, ADD COLUMN minutes int DEFAULT 25")
    db.execute(
        "INSERT INTO pomodoros (note, user_id, minutes, completed_at)"
        " VALUES (%s, 'bob', 50, '2026-11-25 10:00+00')",
        (os.urandom(8_000).hex(),),
    )
    db.execute("UPDATE pomodoros SET note = 'x' WHERE user_id = 'alice'")
    db.execute("UPDATE pomodoros SET user_id = 'carol' WHERE user_id = 'bob'")
    db.execute("ALTER TABLE pomodoros DROP COLUMN minutes")
    insert(db, "alice", "2026-11-24 10:00+00")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"alice": 2, "carol": 1}


def test_dst_zone_boards_match_recomputation(
    db: psycopg.Connection[Any], start_thread: Callable[..., Projected]
) -> None:
    """In Europe/Berlin, instants around DST changes and local midnights land in local buckets."""
    projected = start_thread(timezone="Europe/Berlin")
    instants = [
        "2026-03-28 22:59:59+00",  # 23:59:59 CET, Saturday 28 March
        "2026-03-28 23:00:00+00",  # 00:00 CET, Sunday 29 March
        "2026-03-29 00:59:59+00",  # 01:59:59 CET, just before the spring change
        "2026-03-29 01:00:00+00",  # 03:00 CEST
        "2026-03-29 21:59:59+00",  # 23:59:59 CEST, still Sunday (2026-W13)
        "2026-03-29 22:00:00+00",  # 00:00 CEST, Monday 30 March (2026-W14)
        "2026-10-25 00:30:00+00",  # 02:30 CEST, first pass of the repeated hour
        "2026-10-25 01:30:00+00",  # 02:30 CET, second pass
        "2026-10-25 22:59:59+00",  # 23:59:59 CET, Sunday 25 October
        "2026-10-25 23:00:00+00",  # 00:00 CET, Monday 26 October
        "2025-12-31 22:59:59+00",  # 23:59:59 CET, 2025
        "2025-12-31 23:00:00+00",  # 00:00 CET, 2026-01-01 (ISO 2026-W01)
        "2026-10-31 23:00:00+00",  # 00:00 CET, 1 November
    ]
    for at in instants:
        insert(db, "alice", at)
    got = projected.assert_exact()
    boards = got.boards
    assert boards[("day", "2026-03-28")] == {"alice": 1}
    assert boards[("day", "2026-03-29")] == {"alice": 4}
    assert boards[("day", "2026-03-30")] == {"alice": 1}
    assert boards[("week", "2026-W13")] == {"alice": 5}
    assert boards[("week", "2026-W14")] == {"alice": 1}
    assert boards[("day", "2026-10-25")] == {"alice": 3}
    assert boards[("day", "2026-10-26")] == {"alice": 1}
    assert boards[("year", "2025")] == {"alice": 1}
    assert boards[("day", "2026-01-01")] == {"alice": 1}
    assert boards[("week", "2026-W01")] == {"alice": 2}  # Wednesday 2025-12-31 is in 2026-W01
    assert boards[("month", "2026-11")] == {"alice": 1}
    assert boards[("month", "2026-10")] == {"alice": 4}
    # Moving rows across the spring-forward gap and back.
    db.execute(
        "UPDATE pomodoros SET completed_at = completed_at + interval '1 hour'"
        " WHERE completed_at BETWEEN '2026-03-29 00:00+00' AND '2026-03-29 22:00+00'"
    )
    projected.assert_exact()


def test_infinite_and_far_future_instants_count_in_all_time_only(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """completed_at 'infinity', '-infinity' or after year 9999 counts in the all-time board only."""
    inf = insert(db, "alice", "infinity")
    insert(db, "alice", "-infinity")
    far = insert(db, "alice", "12026-06-01 00:00+00")
    insert(db, "alice", "2026-11-26 10:00+00")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"alice": 4}
    assert got.boards[("year", "2026")] == {"alice": 1}
    assert len(got.boards) == 5
    db.execute("UPDATE pomodoros SET completed_at = '2026-11-26 11:00+00' WHERE id = %s", (inf,))
    db.execute("UPDATE pomodoros SET completed_at = 'infinity' WHERE completed_at = '-infinity'")
    db.execute("UPDATE pomodoros SET user_id = 'bob' WHERE id = %s", (far,))
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"alice": 3, "bob": 1}
    assert got.boards[("day", "2026-11-26")] == {"alice": 2}
    db.execute("DELETE FROM pomodoros WHERE id = %s", (far,))
    assert projected.assert_exact().boards[("all", "all")] == {"alice": 3}


def test_transaction_becomes_visible_all_at_once(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """A transaction below the atomic limit is seen in Redis with all its rows or none."""
    projected.caught_up()
    seen: set[float] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            score = projected.client.zscore("pomo:lb:pomodoros:all:all", "alice")
            seen.add(score or 0.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_ in range(1, 4):
            with db.transaction(), db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pomodoros (user_id, completed_at) VALUES ('alice', %s)",
                    [(f"2026-11-{1 + i % 28:02d} 10:00+00",) for i in range(2000)],
                )
            projected.caught_up()
            assert projected.client.zscore("pomo:lb:pomodoros:all:all", "alice") == 2000 * round_
    finally:
        done.set()
        watcher.join()
    assert seen <= {0.0, 2000.0, 4000.0, 6000.0}, sorted(seen)
    projected.assert_exact()


def test_default_retention_writes_no_expired_board_and_expires_finished_ones(
    db: psycopg.Connection[Any], start_thread: Callable[..., Projected]
) -> None:
    """With default retention, expired buckets get no board (rebuilt or streamed); others expire."""
    today = datetime.now(UTC).date()
    ages = [0, 20, 34, 40, 120, 500, 3000]  # days ago: inside and beyond each period's retention

    def write_rows(user: str) -> None:
        for age in ages:
            insert(db, user, f"{today - timedelta(days=age)} 12:00+00")

    write_rows("rebuilt")
    projected = start_thread(
        retention_day_days=35,
        retention_week_weeks=13,
        retention_month_months=13,
        retention_year_years=5,
    )
    projected.caught_up()
    write_rows("streamed")
    got = projected.assert_exact()
    assert got.boards[("all", "all")] == {"rebuilt": len(ages), "streamed": len(ages)}
    assert (("day", str(today - timedelta(days=40)))) not in got.boards
    recent = today - timedelta(days=20)
    assert got.boards[("day", str(recent))] == {"rebuilt": 1, "streamed": 1}
    # A day board lives until the first instant of the 35th day after its day ends.
    expires = datetime.combine(recent + timedelta(days=36), datetime.min.time(), UTC)
    assert projected.client.expiretime(f"pomo:lb:pomodoros:day:{recent}") == int(
        expires.timestamp()
    )
    assert projected.client.ttl("pomo:lb:pomodoros:all:all") == -1
