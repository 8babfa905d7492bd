"""The projection's deltas per board key and member, without servers: rows grouped by local
date and spread over their keys when a batch is taken must add up to what each row alone
contributes to each of its buckets."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.core.boards import DEFAULT_BOARDS
from projector.core.buckets import Retention, bucket_ids_for_date
from projector.core.keys import Keys
from projector.core.pgoutput import Column, Delete, Insert, Relation, Truncate, Update
from projector.core.projection import Projection

REL = 16_384
RELATION = Relation(
    xid=None,
    relation_id=REL,
    namespace="public",
    name="pomodoros",
    replica_identity="i",
    columns=(
        Column(0, "id", 20, -1),
        Column(1, "user_id", 25, -1),
        Column(1, "completed_at", 1184, -1),
    ),
)
PREFIX = "pomo:lb:pomodoros:"
# Instants over five weeks (across a month end), so day groups meet in week, month and
# year keys; a recent "now" keeps every bucket live.
FIRST = datetime(2026, 10, 20, tzinfo=UTC)
NOW = datetime(2026, 11, 27, tzinfo=UTC).timestamp()

rows = st.tuples(st.sampled_from(["ann", "bob", "cy", "dee"]), st.integers(0, 35 * 24 - 1))
changes = st.lists(
    st.tuples(st.sampled_from(["insert", "delete", "update", "take", "truncate"]), rows, rows),
    max_size=60,
)


def _text(hours: int) -> bytes:
    return (FIRST + timedelta(hours=hours, minutes=7)).strftime("%Y-%m-%d %H:%M:%S+00").encode()


def _keys(hours: int) -> list[str]:
    day, week, month, year = bucket_ids_for_date((FIRST + timedelta(hours=hours)).date())
    return [
        f"{PREFIX}all:all",
        f"{PREFIX}day:{day}",
        f"{PREFIX}week:{week}",
        f"{PREFIX}month:{month}",
        f"{PREFIX}year:{year}",
    ]


@settings(max_examples=60, deadline=None)
@given(changes)
def test_grouped_deltas_equal_each_row_counted_in_each_bucket(
    script: list[tuple[str, tuple[str, int], tuple[str, int]]],
) -> None:
    """Summed over the batches taken, each key and member gets exactly the rows' deltas,
    a TRUNCATE dropping what came before it in its batch."""
    projection = Projection(
        DEFAULT_BOARDS, Keys("pomo:"), ZoneInfo("UTC"), Retention(day_days=400), lambda: NOW
    )
    projection.on_relation(RELATION)
    got: Counter[tuple[str, str]] = Counter()
    expected: Counter[tuple[str, str]] = Counter()
    pending: Counter[tuple[str, str]] = Counter()

    def take() -> None:
        batch = projection.take_batch()
        if batch.clear_boards:
            for key, member in list(got):
                if key.startswith(tuple(batch.clear_boards)):
                    del got[key, member]
        assert len({id(m) for m in batch.deltas.values()}) == len(batch.deltas)  # none shared
        for key, members in batch.deltas.items():
            for member, delta in members.items():
                got[key, member] += delta
        expected.update(pending)
        pending.clear()

    for kind, (member, hours), (other, other_hours) in script:
        row = (b"1", member.encode(), _text(hours))
        if kind == "insert":
            projection.on_change(Insert(None, REL, row))
            pending.update({(key, member): 1 for key in _keys(hours)})
        elif kind == "delete":
            projection.on_change(Delete(None, REL, "K", row))
            pending.update({(key, member): -1 for key in _keys(hours)})
        elif kind == "update":
            moved = (b"1", other.encode(), _text(other_hours))
            projection.on_change(Update(None, REL, "K", row, moved))
            if (member, hours) != (other, other_hours):
                pending.subtract({(key, member): 1 for key in _keys(hours)})
                pending.update({(key, other): 1 for key in _keys(other_hours)})
        elif kind == "truncate":
            projection.on_change(Truncate(None, 0, (REL,)))
            pending.clear()
            expected.clear()
        else:
            take()
    take()
    assert +got == +expected and -got == -expected
