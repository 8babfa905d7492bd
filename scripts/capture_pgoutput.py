"""Capture real pgoutput replication frames from a PostgreSQL 15+ server into tests/data/.

Run by hand, never by the test suite, against a THROWAWAY server (it drops and creates the
``cap_*`` objects, slots, publication and replication origin it needs). The server needs
``wal_level=logical`` and ``max_prepared_transactions > 0``, and the DSN must be a superuser's::

    initdb -D /tmp/pgcap -U postgres -A trust
    postgres -D /tmp/pgcap -p 55433 -k /tmp -c wal_level=logical -c max_prepared_transactions=10
    .venv/bin/python scripts/capture_pgoutput.py \\
        "host=/tmp port=55433 user=postgres dbname=postgres"

It runs a fixed workload, then replays it through START_REPLICATION several times (the slots are
never acknowledged, so each session starts again from the slot's creation point) and writes every
CopyData frame it received, as hex, to ``tests/data/pgoutput_capture.json``:

* ``v1``: proto_version 1, messages on; phase 1 (row changes, TOAST, enum, messages, origin,
  truncates).
* ``v1_binary``: the same with ``binary 'true'``, so values arrive in binary ('b') form.
* ``v2_stream``: proto_version 2, streaming on, ``logical_decoding_work_mem=64kB``; phases 1 and 2
  (a large committed transaction with a rolled-back savepoint, and a large aborted transaction).
* ``v3_two_phase``: proto_version 3, two_phase and streaming on, from a TWO_PHASE slot created
  after phase 2; phase 3 (COMMIT PREPARED, ROLLBACK PREPARED, a large prepared transaction).
"""

from __future__ import annotations

import hashlib
import json
import select
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

PUBLICATION = "cap_pub"
MAIN_SLOT = "cap_main"
TWO_PHASE_SLOT = "cap_two_phase"
ORIGIN = "cap_origin"
ORIGIN_LSN = "0/ABCDEF0"
ORIGIN_TIME = "2026-01-02 03:04:05+00"
BULK_ROWS = 500
OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pgoutput_capture.json"


def big_value(seed: str, length: int = 5000) -> str:
    """Return a deterministic, incompressible text value (hex of a SHA-256 chain)."""
    out = ""
    digest = seed.encode()
    while len(out) < length:
        digest = hashlib.sha256(digest).digest()
        out += digest.hex()
    return out[:length]


BIG_BOB = big_value("bob")
BIG_FULL = big_value("full")

SETUP = f"""
DROP PUBLICATION IF EXISTS {PUBLICATION};
DROP TABLE IF EXISTS cap_other.cap_child, cap_default, cap_full, cap_bulk;
DROP SCHEMA IF EXISTS cap_other;
DROP TYPE IF EXISTS cap_mood;
CREATE TYPE cap_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE cap_default (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    n integer,
    big text
);
ALTER TABLE cap_default ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE SCHEMA cap_other;
CREATE TABLE cap_other.cap_child (id integer PRIMARY KEY, parent_id bigint REFERENCES cap_default);
CREATE TABLE cap_full (id integer PRIMARY KEY, mood cap_mood, note text, big text);
ALTER TABLE cap_full REPLICA IDENTITY FULL;
ALTER TABLE cap_full ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE cap_bulk (id integer PRIMARY KEY, payload text NOT NULL);
CREATE PUBLICATION {PUBLICATION}
    FOR TABLE cap_default, cap_other.cap_child, cap_full, cap_bulk;
"""


def drop_leftovers(conn: psycopg.Connection[Any]) -> None:
    """Remove slots and the origin left by an earlier run."""
    for slot in (MAIN_SLOT, TWO_PHASE_SLOT):
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s",
            [slot],
        )
    conn.execute(
        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = %s",
        [ORIGIN],
    )


def marker(conn: psycopg.Connection[Any], text: str) -> None:
    """Emit the non-transactional message a capture session stops at."""
    conn.execute("SELECT pg_logical_emit_message(false, 'cap', %s)", [text])


def phase_1(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """Row changes on both identity kinds, TOAST, enum, messages, origin and truncates."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO cap_default (user_id, n, big) VALUES"
            " ('alice', 1, NULL), ('bob', NULL, %s), ('zoë ✓', 3, 'short')",
            [BIG_BOB],
        )
    # Only n changes: the TOASTed big column is sent as 'u' and no old tuple is sent.
    conn.execute("UPDATE cap_default SET n = 2 WHERE user_id = 'bob'")
    # The key changes: the old key is sent ('K').
    conn.execute("UPDATE cap_default SET id = DEFAULT WHERE user_id = 'alice'")
    conn.execute("INSERT INTO cap_other.cap_child VALUES (1, 2)")
    conn.execute(
        "INSERT INTO cap_full VALUES (1, 'happy', 'first', %s), (2, NULL, NULL, NULL)",
        [BIG_FULL],
    )
    conn.execute("UPDATE cap_full SET mood = 'sad', note = 'changed' WHERE id = 1")
    conn.execute("DELETE FROM cap_full WHERE id = 2")
    conn.execute("DELETE FROM cap_default WHERE user_id = 'zoë ✓'")
    with conn.transaction():
        conn.execute("INSERT INTO cap_default (user_id, n) VALUES ('dave', 5)")
        conn.execute("SELECT pg_logical_emit_message(true, 'cap', 'transactional ✓')")
    conn.execute("SELECT pg_logical_emit_message(false, 'cap', 'non-transactional')")
    with psycopg.connect(dsn, autocommit=True) as origin_conn:
        origin_conn.execute("SELECT pg_replication_origin_session_setup(%s)", [ORIGIN])
        with origin_conn.transaction():
            origin_conn.execute(
                "SELECT pg_replication_origin_xact_setup(%s, %s)", [ORIGIN_LSN, ORIGIN_TIME]
            )
            origin_conn.execute("INSERT INTO cap_default (user_id, n) VALUES ('from-origin', 7)")
        origin_conn.execute("SELECT pg_replication_origin_session_reset()")
    conn.execute("TRUNCATE cap_full")
    conn.execute("TRUNCATE cap_default RESTART IDENTITY CASCADE")
    marker(conn, "phase-1-end")


def phase_2(conn: psycopg.Connection[Any]) -> None:
    """Transactions larger than logical_decoding_work_mem=64kB, so they are streamed."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO cap_bulk SELECT g, repeat('x', 100) || g"
            " FROM generate_series(1, %s::int) g",
            [BULK_ROWS],
        )
        conn.execute("SAVEPOINT rolled_back")
        conn.execute(
            "INSERT INTO cap_bulk SELECT g, repeat('y', 100) || g"
            " FROM generate_series(%s::int, %s::int) g",
            [BULK_ROWS + 1, 2 * BULK_ROWS],
        )
        conn.execute("ROLLBACK TO SAVEPOINT rolled_back")
        conn.execute("INSERT INTO cap_bulk VALUES (9999, 'after the savepoint')")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO cap_bulk SELECT g, repeat('z', 100) || g"
        " FROM generate_series(10001, %s::int) g",
        [10000 + BULK_ROWS],
    )
    conn.execute("ROLLBACK")
    marker(conn, "phase-2-end")


def phase_3(conn: psycopg.Connection[Any]) -> None:
    """Prepared transactions: committed, rolled back, and one large enough to be streamed."""
    conn.execute("BEGIN")
    conn.execute("INSERT INTO cap_bulk VALUES (20001, 'prepared then committed')")
    conn.execute("PREPARE TRANSACTION 'cap_gid_commit'")
    conn.execute("COMMIT PREPARED 'cap_gid_commit'")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO cap_bulk VALUES (20002, 'prepared then rolled back')")
    conn.execute("PREPARE TRANSACTION 'cap_gid_rollback'")
    conn.execute("ROLLBACK PREPARED 'cap_gid_rollback'")
    conn.execute("BEGIN")
    conn.execute(
        "INSERT INTO cap_bulk SELECT g, repeat('p', 100) || g"
        " FROM generate_series(30001, %s::int) g",
        [30000 + BULK_ROWS],
    )
    conn.execute("PREPARE TRANSACTION 'cap_gid_streamed'")
    conn.execute("COMMIT PREPARED 'cap_gid_streamed'")
    marker(conn, "phase-3-end")


def create_slot(dsn: str, slot: str, two_phase: bool) -> str:
    """Create a logical pgoutput slot; return its consistent point."""
    options = " (TWO_PHASE true)" if two_phase else ""
    with psycopg.connect(dsn, replication="database", autocommit=True) as repl:
        row = repl.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput{options}").fetchone()
    assert row is not None
    return str(row[1])


def wait_slot_inactive(conn: psycopg.Connection[Any], slot: str) -> None:
    """Wait until the walsender of the previous session let go of the slot."""
    for _ in range(100):
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]
        ).fetchone()
        if row is not None and not row[0]:
            return
        time.sleep(0.1)
    raise RuntimeError(f"slot {slot} stays active")


def capture(dsn: str, slot: str, options: dict[str, str], stop_at: bytes) -> list[str]:
    """Stream the slot from its start; return the hex CopyData frames up to the stop marker."""
    repl = psycopg.connect(
        dsn,
        replication="database",
        autocommit=True,
        options="-c logical_decoding_work_mem=64kB",
    )
    pgconn = repl.pgconn
    option_sql = ", ".join(f"{name} '{value}'" for name, value in options.items())
    pgconn.send_query(f"START_REPLICATION SLOT {slot} LOGICAL 0/0 ({option_sql})".encode())
    result = pgconn.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_BOTH:
        message = result.error_message.decode() if result is not None else "no result"
        raise RuntimeError(f"START_REPLICATION failed: {message}")
    frames: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                select.select([pgconn.socket], [], [], 1.0)
                pgconn.consume_input()
                continue
            if nbytes < 0:
                raise RuntimeError(f"COPY ended: {pgconn.error_message.decode()}")
            frame = bytes(data)
            frames.append(frame.hex())
            payload = frame[25:]
            if frame[:1] == b"w" and payload[:1] == b"M" and payload.endswith(stop_at):
                return frames
        raise RuntimeError(f"no {stop_at!r} marker within 60 s")
    finally:
        repl.close()


def main(dsn: str) -> None:
    """Set up, run the workload, replay it through each capture session, write the JSON."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        server_version = conn.info.server_version
        drop_leftovers(conn)
        conn.execute(SETUP)
        conn.execute("SELECT pg_replication_origin_create(%s)", [ORIGIN])
        main_start = create_slot(dsn, MAIN_SLOT, two_phase=False)
        started = conn.execute("SELECT now()").fetchone()
        phase_1(dsn, conn)
        phase_2(conn)
        two_phase_start = create_slot(dsn, TWO_PHASE_SLOT, two_phase=True)
        phase_3(conn)

        base = {"publication_names": PUBLICATION, "messages": "true"}
        sessions = [
            ("v1", MAIN_SLOT, {"proto_version": "1", **base}, b"phase-1-end"),
            ("v1_binary", MAIN_SLOT, {"proto_version": "1", **base, "binary": "true"},
             b"phase-1-end"),
            ("v2_stream", MAIN_SLOT, {"proto_version": "2", **base, "streaming": "on"},
             b"phase-2-end"),
            ("v3_two_phase", TWO_PHASE_SLOT,
             {"proto_version": "3", **base, "streaming": "on", "two_phase": "true"},
             b"phase-3-end"),
        ]  # fmt: skip
        captures = {}
        for name, slot, options, stop_at in sessions:
            wait_slot_inactive(conn, slot)
            frames = capture(dsn, slot, options, stop_at)
            captures[name] = {"slot": slot, "options": options, "frames": frames}
            print(f"{name}: {len(frames)} frames", file=sys.stderr)
        drop_leftovers(conn)

    document = {
        "about": "CopyData frames of START_REPLICATION, as hex; see scripts/capture_pgoutput.py",
        "server_version": server_version,
        "workload_started": started[0].isoformat() if started else None,
        "slot_start": {MAIN_SLOT: main_start, TWO_PHASE_SLOT: two_phase_start},
        "origin": {"name": ORIGIN, "lsn": ORIGIN_LSN, "time": ORIGIN_TIME},
        "captures": captures,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DSN_OF_A_THROWAWAY_SERVER")
    main(sys.argv[1])
