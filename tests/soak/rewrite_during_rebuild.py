"""Reproduces a projector bug the soak found (seed 6000053): a table rewrite committed after a
rebuild took its snapshot, before it read that table, leaves Redis wrong for good.

PostgreSQL documents that table-rewriting ALTER TABLE is not MVCC-safe: a snapshot taken
before the rewrite sees the table empty. The rebuild reads every table in its exported
snapshot, so it loads that table as empty; the rewrite carries no row change, so the stream
never repairs it, and the watermark says Redis is caught up. Deterministic here: an open
transaction holds the rebuild's slot creation, the Redis proxy stalls the rebuild at its first
write after the snapshot, and the rewrite commits meanwhile.

``python -m tests.soak.rewrite_during_rebuild [retype|add_column]``: ``retype`` makes
``users.created_at`` a timestamp (the pomodoro board's display names vanish), ``add_column``
adds a column with a volatile default to ``pomodoros`` (the pomodoro board vanishes). Prints
the oracle's diff and exits 1 while the bug is there; not collected by pytest.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from tests.soak import schema
from tests.soak.cluster import ZONES, Cluster, Projector
from tests.soak.oracle import compare, settle
from tests.soak.schema import BOARDS
from tests.soak.workload import Instants, load_base_data

_REWRITES = {
    "retype": schema.break_signups_sql("retype"),
    "add_column": "ALTER TABLE pomodoros ADD COLUMN note text DEFAULT md5(random()::text)",
}


def _count(projector: Projector, event: str) -> int:
    return projector.log_path.read_bytes().count(f'"event": "{event}"'.encode())


def _wait_more(projector: Projector, event: str, before: int, timeout: float = 10.0) -> None:
    """Wait until ``event`` has been logged more than ``before`` times."""
    deadline = time.monotonic() + timeout
    while _count(projector, event) <= before:
        if time.monotonic() > deadline:
            raise AssertionError(f"no new {event!r} within {timeout:.0f} s")
        time.sleep(0.001)


def reproduce(rewrite: str, workdir: Path) -> str | None:
    """The oracle's diff after a rewrite between a rebuild's snapshot and its reads."""
    cluster = Cluster(workdir, max_tx_changes=300)
    cluster.start()
    try:
        projector = cluster.spawn_projector()
        with cluster.connect() as conn:
            load_base_data(conn, 1, Instants(datetime.now(UTC), ZONES))
        with cluster.client() as client:
            settle(cluster, client, timeout=60, alive=lambda: None)
            assert compare(cluster, client, BOARDS) is None
        rebuilds, slots = _count(projector, "rebuild started"), _count(projector, "slot created")
        # An open transaction with an xid: the rebuild's slot creation waits for it.
        blocker = psycopg.connect(cluster.dsn)
        blocker.execute("INSERT INTO soak_ballast (note) VALUES ('hold')")
        with cluster.client() as client:
            client.flushall()  # the projector rebuilds
        _wait_more(projector, "rebuild started", rebuilds)
        time.sleep(0.3)  # creating its slot, waiting for the blocker
        cluster.redis_proxy.stall()  # its first Redis write after the snapshot waits
        blocker.commit()
        blocker.close()
        _wait_more(projector, "slot created", slots)
        time.sleep(0.3)
        try:
            with cluster.connect() as conn:
                # If the rebuild read the table already, it holds a lock: give up, not hang.
                conn.execute("SET lock_timeout = '3s'")
                conn.execute(_REWRITES[rewrite])  # commits after the snapshot, before reads
        finally:
            cluster.redis_proxy.resume()
        if rewrite == "retype":
            with cluster.connect() as conn:
                schema.fix_signups(conn, "retype")  # the signups board comes back
        with cluster.client() as client:
            settle(cluster, client, timeout=60, alive=lambda: None)
            return compare(cluster, client, BOARDS)
    finally:
        cluster.close()


def main() -> int:
    rewrite = sys.argv[1] if len(sys.argv) > 1 else "retype"
    workdir = Path(tempfile.mkdtemp(prefix="rewrite-during-rebuild-"))
    try:
        diff = reproduce(rewrite, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(diff or "Redis equals PostgreSQL: not reproduced")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
