"""Bodies written as bytes (``board_body``, ``standing_body``) are exactly the JSON encoder's
text of the dicts (``board_json``, ``standing_json``), whatever the members and labels hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.boards import (
    AsOf,
    BoardPage,
    Entry,
    Standing,
    board_body,
    board_json,
    standing_body,
    standing_json,
)
from api.routes import BoardQuery, StandingQuery
from projector.core.boards import DEFAULT_BOARDS
from projector.core.buckets import Period

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
TZ = ZoneInfo("Europe/Berlin")
BOARD = DEFAULT_BOARDS[0]
TEXT = st.text(max_size=12)  # every code point: quotes, backslashes, controls, surrogates
ENTRIES = st.lists(
    st.builds(Entry, st.integers(1, 10**6), TEXT, st.none() | TEXT, st.integers(0, 10**9)),
    max_size=6,
)
AS_OFS = [
    AsOf(0x16B3748, datetime(2026, 11, 26, 14, 38, 36, 433104, tzinfo=UTC)),
    AsOf(1, None),
]


@given(entries=ENTRIES, total=st.integers(0, 10**6), source=st.sampled_from(["redis", "postgres"]))
@pytest.mark.parametrize("alias", [True, False])
@pytest.mark.parametrize("as_of", AS_OFS)
@pytest.mark.parametrize(("period", "bucket"), [(Period.DAY, "2026-03-29"), (Period.ALL, "all")])
def test_board_body_is_the_encoded_board_json(
    alias: bool,
    as_of: AsOf,
    period: Period,
    bucket: str,
    entries: list[Entry],
    total: int,
    source: str,
) -> None:
    """A page's bytes are the encoder's text of its dict, on both kinds of routes."""
    query = BoardQuery(period, bucket, 10, 20, None, BOARD, alias)
    page = BoardPage(total, entries, as_of)
    assert (
        board_body(query, page, source, TZ) == _ENCODE(board_json(query, page, source, TZ)).encode()
    )


@given(
    above=ENTRIES,
    below=ENTRIES,
    member=st.text(min_size=1, max_size=12),
    label=st.none() | TEXT,
    rank=st.none() | st.integers(1, 10**6),
)
@pytest.mark.parametrize("alias", [True, False])
@pytest.mark.parametrize("as_of", AS_OFS)
def test_standing_body_is_the_encoded_standing_json(
    alias: bool,
    as_of: AsOf,
    above: list[Entry],
    below: list[Entry],
    member: str,
    label: str | None,
    rank: int | None,
) -> None:
    """A standing's bytes are the encoder's text of its dict, ranked or not, either route."""
    query = StandingQuery(Period.WEEK, "2026-W13", member, 3, None, BOARD, alias)
    standing = Standing(7, label, rank, 0 if rank is None else 5, above, below, as_of)
    assert (
        standing_body(query, standing, "redis", TZ)
        == _ENCODE(standing_json(query, standing, "redis", TZ)).encode()
    )
