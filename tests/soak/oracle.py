"""The soak's oracle: once quiet, Redis must equal a recomputation from PostgreSQL.

Quiet means the workload stopped, every fault healed and one projector caught up: the
watermark at or past ``pg_current_wal_lsn()`` read after the last write, no chunk in
progress. The boards and names are recomputed with SQL alone (``recompute`` of the core
suite, never projector code) and read back through the one reader of the Redis layout
(``read_redis``); then the slot's confirmed position must reach the watermark quickly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.e2e.projector.support import (
    assert_same,
    parse_lsn,
    read_redis,
    recompute,
    slot_confirmed_lsn,
    wait_until_caught_up,
    watermark,
)
from tests.soak.cluster import PREFIX, SLOT, Cluster

SLOT_LAG_DEADLINE = 5.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The check's outcome: ``failure`` is None, "stuck", "drift" or "slot_lag"."""

    failure: str | None
    message: str = ""
    catch_up_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


def check(cluster: Cluster, *, deadline: float, alive: Callable[[], None]) -> Verdict:
    """Wait for quiescence (``alive`` runs on every poll), then compare and check the slot."""
    began = time.monotonic()
    with cluster.client() as client:
        try:
            wait_until_caught_up(cluster.dsn, client, PREFIX, timeout=deadline, alive=alive)
        except AssertionError as exc:
            return Verdict("stuck", str(exc), time.monotonic() - began)
        caught_up = time.monotonic() - began
        expected = recompute(cluster.dsn, cluster.timezone)
        try:
            actual = read_redis(client, PREFIX)  # asserts that every score is a count > 0
            assert_same(actual, expected)
        except AssertionError as exc:
            message = str(exc)
            if message.startswith("display names differ"):
                message = _name_diff(message, actual.names, expected.names)
            return Verdict("drift", message, caught_up)
        applied = parse_lsn(watermark(client, PREFIX)["lsn"])
    lag_deadline = time.monotonic() + SLOT_LAG_DEADLINE
    while True:
        confirmed = slot_confirmed_lsn(cluster.dsn, SLOT)
        if confirmed is not None and confirmed >= applied:
            return Verdict(None, "", caught_up)
        if time.monotonic() > lag_deadline:
            shown = "none" if confirmed is None else f"{confirmed:X}"
            return Verdict(
                "slot_lag",
                f"slot confirmed {shown} did not reach the watermark {applied:X} "
                f"within {SLOT_LAG_DEADLINE:.0f} s",
                caught_up,
            )
        time.sleep(0.05)


def _name_diff(message: str, have: dict[str, str], want: dict[str, str]) -> str:
    """assert_same says that names differ; say which (names may be kilobytes long)."""
    lines = [message]
    for user in sorted(have.keys() | want.keys()):
        if have.get(user) != want.get(user):
            lines.append(
                f"  {user}: redis {_short(have.get(user))}, postgres {_short(want.get(user))}"
            )
    return "\n".join(lines[:30])


def _short(name: str | None) -> str:
    if name is None:
        return "absent"
    return repr(name) if len(name) <= 40 else f"{name[:20]!r}... ({len(name)} chars)"
