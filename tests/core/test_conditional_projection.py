"""The projection of a board with a condition (``where``): rows count only while it holds, an
update moves a row into or out of the board, and a relation that no longer fits the
condition stops the board."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from projector.core.boards import Board, Table
from projector.core.buckets import Period, Retention
from projector.core.condition import parse_condition
from projector.core.errors import BoardsChanged, RebuildRequired
from projector.core.keys import Keys
from projector.core.pgoutput import (
    UNCHANGED_TOAST,
    Column,
    ColumnValue,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)
from projector.core.projection import Projection

ALL = "pomo:lb:long:all:all"
BOARD = Board(
    "long",
    Table("public", "pomodoros"),
    "user_id",
    "completed_at",
    (Period.ALL,),
    where=parse_condition("minutes >= 20 and note <> 'skip'"),
)
# id bigint, user_id text, completed_at timestamptz, minutes integer, note text; FULL identity
COLUMNS = (
    Column(1, "id", 20, -1),
    Column(1, "user_id", 25, -1),
    Column(1, "completed_at", 1184, -1),
    Column(1, "minutes", 23, -1),
    Column(1, "note", 25, -1),
)
WHEN = b"2026-11-26 10:00:00+00"

Row = tuple[ColumnValue, ...]


def _projection(columns: tuple[Column, ...] = COLUMNS) -> Projection:
    projection = Projection(
        [BOARD], Keys("pomo:"), ZoneInfo("UTC"), Retention(), lambda: 1_790_000_000.0
    )
    projection.on_relation(Relation(None, 7, "public", "pomodoros", "f", columns))
    return projection


def _row(user: str, minutes: int | None, note: str | None = "ok") -> Row:
    return (
        b"1",
        user.encode(),
        WHEN,
        None if minutes is None else str(minutes).encode(),
        None if note is None else note.encode(),
    )


def _deltas(projection: Projection) -> dict[str, int]:
    return projection.take_batch().deltas.get(ALL, {})


def test_inserts_and_deletes_count_only_rows_that_qualify() -> None:
    """An insert counts when the condition is TRUE (not FALSE, not unknown); a delete
    retracts only a row that qualified."""
    projection = _projection()
    for row in (_row("ann", 25), _row("bob", 5), _row("cy", None), _row("dee", 30, None)):
        projection.on_insert(Insert(None, 7, row))
    assert _deltas(projection) == {"ann": 1}
    for row in (_row("ann", 25), _row("bob", 5), _row("dee", 30, None)):
        projection.on_delete(Delete(None, 7, "O", row))
    assert _deltas(projection) == {"ann": -1}


def test_updates_move_rows_into_and_out_of_the_board() -> None:
    """Into the condition: +1 for the new member; out of it: -1 for the old member; within:
    a move as without a condition; outside: nothing."""
    projection = _projection()
    projection.on_update(Update(None, 7, "O", _row("ann", 5), _row("ann", 25)))
    assert _deltas(projection) == {"ann": 1}
    projection.on_update(Update(None, 7, "O", _row("ann", 25), _row("bob", 25, "skip")))
    assert _deltas(projection) == {"ann": -1}
    projection.on_update(Update(None, 7, "O", _row("ann", 25), _row("bob", 40)))
    assert _deltas(projection) == {"ann": -1, "bob": 1}
    projection.on_update(Update(None, 7, "O", _row("ann", 25), _row("ann", 40)))
    projection.on_update(Update(None, 7, "O", _row("ann", 1), _row("bob", None)))
    assert _deltas(projection) == {}


def test_an_unchanged_toasted_value_is_read_from_the_old_row() -> None:
    """The new row's unchanged TOASTed note is the old row's; without it, a rebuild."""
    projection = _projection()
    new = (*_row("ann", 25)[:4], UNCHANGED_TOAST)
    projection.on_update(Update(None, 7, "O", _row("ann", 5, "x" * 3000), new))
    assert _deltas(projection) == {"ann": 1}
    old = (*_row("ann", 5)[:4], UNCHANGED_TOAST)
    with pytest.raises(RebuildRequired, match="note"):
        projection.on_update(Update(None, 7, "O", old, new))


def test_truncate_clears_the_board_as_before() -> None:
    """TRUNCATE clears a filtered board's keys like any other."""
    projection = _projection()
    projection.on_insert(Insert(None, 7, _row("ann", 25)))
    projection.on_truncate(Truncate(None, 0, (7,)))
    batch = projection.take_batch()
    assert batch.clear_boards == {"pomo:lb:long:"} and not batch.deltas


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        (COLUMNS[:4], "field 'where': public.pomodoros has no column 'note'"),
        (
            (*COLUMNS[:3], Column(1, "minutes", 25, -1), *COLUMNS[4:]),
            "column public.pomodoros.minutes is text, compared with 20",
        ),
        (
            (*COLUMNS[:3], Column(1, "minutes", 2950, -1), *COLUMNS[4:]),
            "is the type with oid 2950, which a condition cannot read",
        ),
        (
            (*COLUMNS[:4], Column(0, "note", 25, -1)),
            "does not log the old note of deleted or changed rows",
        ),
    ],
)
def test_a_relation_the_condition_cannot_read_stops_the_board(
    columns: tuple[Column, ...], problem: str
) -> None:
    """A condition column dropped, retyped or outside the replica identity: the board stops."""
    with pytest.raises(BoardsChanged) as caught:
        _projection(columns)
    assert problem in str(caught.value)
