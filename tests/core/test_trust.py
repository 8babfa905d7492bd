"""One diagnosis of when Redis cannot be trusted, shared by the projector and ``status``."""

from __future__ import annotations

from datetime import UTC, datetime

from projector.core.trust import slot_problem, watermark_problem
from projector.core.watermark import Watermark

WM = Watermark(
    lsn=0x2000, system_id="42", slot="s", commit_time=datetime(2026, 1, 1, tzinfo=UTC), timeline=1
)


def _problem(wm: Watermark = WM, **overrides: object) -> str | None:
    known: dict[str, object] = {
        "slot": "s",
        "system_id": "42",
        "confirmed": 0x1000,
        "server_lsn": 0x3000,
        "timeline": 1,
    }
    known.update(overrides)
    return watermark_problem(wm, **known)  # type: ignore[arg-type]


def test_a_watermark_of_this_cluster_slot_and_timeline_within_the_wal_is_trusted() -> None:
    """Between the slot's confirmed position and the server's WAL, nothing is wrong."""
    assert _problem() is None
    assert _problem(confirmed=None, server_lsn=None, timeline=None) is None


def test_each_way_redis_can_differ_is_named() -> None:
    """Another cluster, another slot, behind the slot, ahead of the WAL, another timeline."""
    assert "different cluster" in (_problem(system_id="7") or "")
    assert "built from slot 's'" in (_problem(slot="t") or "")
    assert "behind the slot's confirmed" in (_problem(confirmed=0x2001) or "")
    assert "ahead of PostgreSQL's WAL" in (_problem(server_lsn=0x1FFF) or "")
    assert "timeline 1, PostgreSQL is on timeline 2" in (_problem(timeline=2) or "")


def test_a_missing_or_invalidated_slot_is_named() -> None:
    """A slot that does not exist, or whose WAL is lost, cannot be streamed from."""
    assert slot_problem("s", exists=True, wal_status="reserved", confirmed=1) is None
    assert "does not exist" in (
        slot_problem("s", exists=False, wal_status=None, confirmed=None) or ""
    )
    assert "invalidated" in (slot_problem("s", exists=True, wal_status="lost", confirmed=1) or "")
