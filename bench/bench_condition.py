"""What a board's condition costs the stream: the pure projection of the same row changes
for examples/focus_minutes.toml's team-long board with its ``where`` and without it.

Inserts, then updates that move rows between users, weeks, minutes and teams (into, out of
and within the condition), then deletes, all decoded pgoutput rows fed to ``Projection`` in
process (no servers): rows per second with the condition against the same board without it,
in alternating rounds; the ratio's median is the number. Saves bench/results/condition.json.
``.venv/bin/python bench/bench_condition.py [--rows 100000] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, save
from projector.core.boards import Board, load_boards
from projector.core.buckets import Retention
from projector.core.condition import parse_condition
from projector.core.keys import Keys
from projector.core.pgoutput import Column, Delete, Insert, Relation, Update
from projector.core.projection import Projection

COLUMNS = (
    Column(1, "id", 20, -1),
    Column(1, "user_id", 25, -1),
    Column(1, "completed_at", 1184, -1),
    Column(1, "minutes", 23, -1),
    Column(1, "team_id", 25, -1),
)
Row = tuple[bytes | None, ...]


def _rows(n: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    teams = [b"red", b"blue", b"green", None]
    return [
        (
            str(i).encode(),
            f"u{rng.randrange(500)}".encode(),
            f"2026-{rng.randint(9, 11):02d}-{rng.randint(1, 28):02d} {rng.randrange(24):02d}"
            ":30:00+00".encode(),
            str(rng.choice([0, 10, 25, 25, 50])).encode(),
            rng.choice(teams),
        )
        for i in range(n)
    ]


def _changes(n: int) -> list[Insert | Update | Delete]:
    old, new = _rows(n, 1), _rows(n, 2)
    moved = [(o[0], *n_[1:]) for o, n_ in zip(old, new, strict=True)]
    return (
        [Insert(None, 7, r) for r in old]
        + [Update(None, 7, "O", o, m) for o, m in zip(old, moved, strict=True)]
        + [Delete(None, 7, "O", m) for m in moved]
    )


def _rate(board: Board, changes: list[Insert | Update | Delete]) -> float:
    projection = Projection([board], Keys("pomo:"), ZoneInfo("UTC"), Retention(), time.time)
    projection.on_relation(Relation(None, 7, "public", "pomodoros", "f", COLUMNS))
    began = time.perf_counter()
    for change in changes:
        projection.on_change(change)
    projection.take_batch()
    return len(changes) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows inserted (and moved)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    example = load_boards(str(ROOT / "examples" / "focus_minutes.toml"))
    filtered = next(b for b in example if b.where)
    boards = {
        "without": dataclasses.replace(filtered, where=None),
        "with": filtered,
        # The same evaluation work, but every row qualifies: the cost of evaluating alone.
        "always_true": dataclasses.replace(
            filtered, where=parse_condition(f"({filtered.where}) or minutes >= 0")
        ),
    }
    changes = _changes(args.rows)
    rates: dict[str, list[float]] = {name: [] for name in boards}
    ratios: dict[str, list[float]] = {"with": [], "always_true": []}
    for round_ in range(args.rounds):
        order = list(boards) if round_ % 2 == 0 else list(reversed(boards))
        this = {name: _rate(boards[name], changes) for name in order}
        for name, rate in this.items():
            rates[name].append(rate)
        for name in ratios:
            ratios[name].append(this[name] / this["without"])
        print(
            f"round {round_ + 1}: "
            + ", ".join(f"{name} {rate:,.0f} changes/s" for name, rate in this.items())
        )
    result = {
        "command": "python bench/bench_condition.py " + " ".join(sys.argv[1:]),
        "board": filtered.name,
        "where": str(filtered.where),
        "always_true_where": str(boards["always_true"].where),
        "changes_per_round": len(changes),
        "changes_per_s_median": {n: round(statistics.median(r)) for n, r in rates.items()},
        "ratio_to_without_median": {n: round(statistics.median(r), 3) for n, r in ratios.items()},
        "ratio_to_without_range": {
            n: [round(min(r), 3), round(max(r), 3)] for n, r in ratios.items()
        },
    }
    print(result)
    save("condition", result)


if __name__ == "__main__":
    main()
