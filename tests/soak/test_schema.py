"""The soak's own schema: what its DDL faults rely on, checked without any server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from projector.core.boards import Table
from tests.soak.schema import (
    BOARDS,
    SIGNUP_BOARD,
    SIGNUP_COLUMN,
    Quarter,
    canonical_quarters,
    quarters,
)


def test_exactly_one_board_reads_the_column_the_breaking_migration_changes() -> None:
    """users.created_at is read by the signups board alone (as member, time, sum or label)."""
    users = Table("public", "users")
    readers = {
        board.name
        for board in BOARDS
        if (board.table == users and SIGNUP_COLUMN in board.columns)
        or (
            board.labels is not None
            and board.labels.table == users
            and SIGNUP_COLUMN in (board.labels.key, board.labels.column)
        )
    }
    assert readers == {SIGNUP_BOARD}


def test_quarters_tile_the_span_across_a_new_year() -> None:
    """Consecutive quarters, the first holding the start and the last the end; names round-trip."""
    since = datetime(2024, 11, 30, 23, 59, tzinfo=UTC)
    until = datetime(2026, 1, 1, tzinfo=UTC)
    found = quarters(since, until)
    assert found[0] == Quarter(2024, 4) and found[-1] == Quarter(2026, 1)
    assert all(a.end == b.start for a, b in pairwise(found))
    assert found[0].start <= since < found[0].end
    assert found[-1].start <= until < found[-1].end
    assert all(Quarter.named(q.table) == q for q in found)


def test_canonical_quarters_cover_the_last_year_up_to_now() -> None:
    """The partitions a round starts with hold every instant of the last 365 days."""
    now = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
    found = canonical_quarters(now)
    assert found[0].start <= now - timedelta(days=365) and now < found[-1].end
    assert len(found) == 5
