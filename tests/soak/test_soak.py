"""The short soak of `make test`: seventeen seeded rounds of workload and faults.

`make soak ROUNDS=N` runs the long version; this one proves, on every test run, that each
kind of fault is injected and that Redis ends every round equal to PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import servers
from tests.soak.nemesis import FAULT_KINDS
from tests.soak.runner import run_soak

# Seventeen consecutive seeds: the first fault of round i is FAULT_KINDS[(seed + i) % 16], so
# every kind comes first at least once whatever the base seed. This one also pairs a short
# wal_sender_timeout with a kill between chunks on a quiet database twice (seeds +0 and +16:
# the double count after a crash inside a large transaction, caught 3 times in 4 before its
# fix), and restores Redis snapshots taken mid-chunk and mid-rebuild.
BASE_SEED = 20_261_900
ROUNDS = 17


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    servers.find_postgres_bindir() is None or servers.find_redis_server() is None,
    reason="the soak restarts its own local PostgreSQL and Redis",
)
def test_short_soak_ends_every_round_exact_and_exercises_every_fault(tmp_path: Path) -> None:
    """Seventeen rounds under every kind of fault: no drift, no stuck or failed round."""
    summary = run_soak(ROUNDS, BASE_SEED, tmp_path / "soak", echo=print)
    failed = "\n".join(summary.progress_line(r) for r in summary.failed)
    assert summary.drifts == 0, f"{summary.text()}\n{failed}"
    assert not summary.failed, f"{summary.text()}\n{failed}"
    missing = sorted(set(FAULT_KINDS) - set(summary.faults))
    assert not missing, f"fault kinds never injected: {missing}\n{summary.text()}"
