"""The configuration fingerprint and board conditions: a changed ``where`` builds that board
again, the others stream on; boards without one are described as before conditions."""

from __future__ import annotations

import dataclasses

from projector.core.boards import DEFAULT_BOARDS, board_from_description
from projector.core.buckets import Retention
from projector.core.condition import parse_condition
from projector.core.fingerprint import ProjectionConfig, board_change

POMODOROS = DEFAULT_BOARDS[0]
LONG = dataclasses.replace(
    POMODOROS, name="long", where=parse_condition("minutes >= 20 and user_id <> 'bot'")
)


def _config(*boards: object) -> ProjectionConfig:
    return ProjectionConfig.of("UTC", Retention(), boards)  # type: ignore[arg-type]


def test_a_board_without_a_condition_is_described_as_before() -> None:
    """No 'where' key: fingerprints recorded before conditions existed still match."""
    assert "where" not in POMODOROS.description()
    assert LONG.description()["where"] == "minutes >= 20 and user_id <> 'bot'"


def test_the_recorded_condition_is_canonical_and_reads_back() -> None:
    """Spelling (keyword case, spaces, parentheses, !=) does not change the definition; the
    recorded text parses back to the same board."""
    respelled = dataclasses.replace(
        LONG, where=parse_condition("(minutes>=20)   AND user_id != 'bot'")
    )
    assert respelled.fingerprint == LONG.fingerprint
    assert board_from_description(LONG.description()) == LONG


def test_changing_the_condition_builds_only_that_board() -> None:
    """A new 'where' differs in the fingerprint; board_change builds that board alone, and
    adding or removing a condition does too."""
    before = _config(POMODOROS, LONG)
    stricter = dataclasses.replace(LONG, where=parse_condition("minutes >= 25"))
    after = _config(POMODOROS, stricter)
    assert after.fingerprint != before.fingerprint
    change = board_change(before.text, after, (POMODOROS, stricter))
    assert change is not None
    assert [b.name for b in change.build] == ["long"] and change.keep == ("pomodoros",)
    assert change.describe() == "board 'long' changed"
    unfiltered = dataclasses.replace(LONG, where=None)
    change = board_change(before.text, _config(POMODOROS, unfiltered), (POMODOROS, unfiltered))
    assert change is not None and [b.name for b in change.build] == ["long"]
