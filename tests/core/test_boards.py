"""Board definitions: the TOML format, its defaults, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from projector.core.boards import DEFAULT_BOARDS, Labels, Table, load_boards, parse_boards
from projector.core.buckets import CALENDAR_PERIODS, Period
from projector.core.errors import ConfigError
from projector.core.keys import Keys
from projector.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "focus_minutes.toml"


def board(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "focus",
        "table": "public.pomodoros",
        "member": "user_id",
        "time": "completed_at",
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def test_without_a_file_the_default_is_the_pomodoro_board() -> None:
    """No PROJECTOR_BOARDS_FILE: one board counting pomodoros per user in every period."""
    (default,) = load_boards(None)
    assert default == DEFAULT_BOARDS[0]
    assert default.name == "pomodoros" and default.sum is None
    assert default.table == Table("public", "pomodoros")
    assert (default.member, default.time) == ("user_id", "completed_at")
    assert default.periods == CALENDAR_PERIODS
    assert default.labels == Labels(Table("public", "users"), "id", "display_name")


def test_the_example_file_declares_four_boards() -> None:
    """examples/focus_minutes.toml: pomodoros per user, minutes per team-week, per user-month,
    and long pomodoros in a team per user (a board with a condition)."""
    boards = load_boards(str(EXAMPLE))
    assert [b.name for b in boards] == ["pomodoros", "team-focus", "focus-minutes", "team-long"]
    where = boards[3].where
    assert where is not None and where.canonical == "minutes >= 25 and team_id is not null"
    assert boards[3].columns == ("user_id", "completed_at", "minutes", "team_id")
    assert boards[0] == DEFAULT_BOARDS[0]
    assert (boards[1].member, boards[1].sum, boards[1].periods) == (
        "team_id",
        "minutes",
        (Period.WEEK,),
    )
    assert (boards[2].member, boards[2].sum, boards[2].periods) == (
        "user_id",
        "minutes",
        (Period.MONTH,),
    )


def test_defaults_of_optional_fields() -> None:
    """periods defaults to all five, score to count, a bare table name to schema public."""
    (parsed,) = parse_boards({"boards": [board(table="pomodoros")]})
    assert parsed.periods == CALENDAR_PERIODS
    assert parsed.sum is None and parsed.labels is None
    assert parsed.table == Table("public", "pomodoros")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "declare at least one [[boards]] table"),
        ({"boards": [], "x": 1}, "unknown top-level key(s) x"),
        ({"boards": [board(name="Focus!")]}, "board #1: field 'name' must match"),
        ({"boards": [board(name="week")]}, "board 'week': field 'name' may not be a period name"),
        ({"boards": [board(member=None)]}, "board 'focus': field 'member' is missing"),
        ({"boards": [board(table="a.b.c")]}, "board 'focus': field 'table' must be a table name"),
        ({"boards": [board(time="1st")]}, "board 'focus': field 'time' must be a column name"),
        ({"boards": [board(periods=["day", "fortnight"])]}, "field 'periods' has 'fortnight'"),
        ({"boards": [board(periods=["day", "day"])]}, "field 'periods' lists 'day' twice"),
        ({"boards": [board(periods=[])]}, "field 'periods' must be a non-empty list"),
        ({"boards": [board(score="avg")]}, "field 'score' must be \"count\" or { sum"),
        ({"boards": [board(score={"sum": "x y"})]}, "field 'score.sum' must be a column name"),
        ({"boards": [board(score={"sum": "user_id"})]}, "must be different columns"),
        ({"boards": [board(colour="red")]}, "board 'focus': unknown field(s) colour"),
        (
            {"boards": [board(where="minutes >= 20 or")]},
            "board 'focus': field 'where': unexpected end of the condition: expected a column",
        ),
        ({"boards": [board(where=20)]}, "field 'where': the condition must be a string, not 20"),
        (
            {"boards": [board(labels={"table": "users", "key": "id"})]},
            "field 'labels' must have exactly the fields table, key and column",
        ),
        (
            {"boards": [board(labels={"table": "watermark", "key": "id", "column": "n"})]},
            "may not be named 'watermark'",
        ),
        ({"boards": [board(), board()]}, "board 'focus' is declared twice"),
        (
            {
                "boards": [
                    board(labels={"table": "users", "key": "id", "column": "display_name"}),
                    board(name="b", labels={"table": "users", "key": "id", "column": "nick"}),
                ]
            },
            "labels from public.users must use the same key and column",
        ),
    ],
)
def test_a_bad_definition_is_one_error_naming_board_field_and_problem(
    document: dict[str, Any], message: str
) -> None:
    """Each mistake stops start-up with one sentence naming the board and the field."""
    with pytest.raises(ConfigError) as info:
        parse_boards(document, "PROJECTOR_BOARDS_FILE f.toml")
    text = str(info.value)
    assert text.startswith("PROJECTOR_BOARDS_FILE f.toml: ")
    assert message in text
    assert "\n" not in text


def test_an_unreadable_or_invalid_file_names_the_variable(tmp_path: Path) -> None:
    """A missing file or broken TOML is refused by load_settings with the variable's name."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"^PROJECTOR_BOARDS_FILE: cannot read it"):
        load_settings(boards_file=str(missing))
    broken = tmp_path / "broken.toml"
    broken.write_text("[[boards]\nname = 1")
    with pytest.raises(ConfigError, match=r"^PROJECTOR_BOARDS_FILE: not valid TOML"):
        load_settings(boards_file=str(broken))


def test_the_fingerprint_covers_every_board_definition() -> None:
    """Adding or changing a board changes the configuration fingerprint, and says which."""
    default = load_settings().projection_config()
    example = load_settings(boards_file=str(EXAMPLE)).projection_config()
    assert default.fingerprint != example.fingerprint
    assert example.changes_since(default.text) == [
        "board 'focus-minutes' added",
        "board 'team-focus' added",
        "board 'team-long' added",
    ]
    assert default.changes_since(example.text) == [
        "board 'focus-minutes' removed",
        "board 'team-focus' removed",
        "board 'team-long' removed",
    ]


def test_keys_follow_the_declared_layout() -> None:
    """Board keys are {prefix}lb:{board}:{period}:{bucket}; labels hash per table."""
    keys = Keys("pomo:")
    assert keys.board("team-focus", Period.WEEK, "2026-W48") == "pomo:lb:team-focus:week:2026-W48"
    assert keys.labels(Labels(Table("public", "users"), "id", "display_name")) == "pomo:users"
    assert keys.labels(Labels(Table("crm", "teams"), "id", "name")) == "pomo:crm.teams"
