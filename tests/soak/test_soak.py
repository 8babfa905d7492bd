"""The short soak of `make test`: nineteen seeded rounds of workload and faults.

`make soak ROUNDS=N` runs the long version; this one proves, on every test run, that each
kind of fault is injected and that Redis ends every round equal to PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import servers
from tests.soak.nemesis import FAULT_KINDS
from tests.soak.runner import run_soak

# Nineteen consecutive seeds: the first fault of round i is FAULT_KINDS[(seed + i) % 18], so
# every kind comes first at least once whatever the base seed. This one also pairs a short
# wal_sender_timeout with a kill between chunks on a quiet database twice (seeds +0 and +18:
# the double count after a crash inside a large transaction, caught 3 times in 4 before its
# fix), restores Redis snapshots taken mid-chunk and mid-rebuild, runs in all three zones,
# attaches a table with rows, detaches and drops partitions, and both renames and retypes
# the column of the signups board (found by planning seeds, not by running them).
BASE_SEED = 20_355_852
ROUNDS = 19


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    servers.find_postgres_bindir() is None or servers.find_redis_server() is None,
    reason="the soak restarts its own local PostgreSQL and Redis",
)
def test_short_soak_ends_every_round_exact_and_exercises_every_fault(tmp_path: Path) -> None:
    """Nineteen rounds under every kind of fault: no drift, no stuck or failed round."""
    summary = run_soak(ROUNDS, BASE_SEED, tmp_path / "soak", echo=print)
    failed = "\n".join(summary.progress_line(r) for r in summary.failed)
    assert summary.drifts == 0, f"{summary.text()}\n{failed}"
    assert not summary.failed, f"{summary.text()}\n{failed}"
    missing = sorted(set(FAULT_KINDS) - set(summary.faults))
    assert not missing, f"fault kinds never injected: {missing}\n{summary.text()}"
