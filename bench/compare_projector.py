"""Paired rounds of ``bench_projector.py`` on two commits: is HEAD as fast as BASE?

Run: ``.venv/bin/python bench/compare_projector.py BASE HEAD [--rounds 3] [--only catch-up]``.
Each commit is checked out (``git worktree``) under ``bench/.trees/``; every round runs the
benchmark on both, in alternating order (BASE first in odd rounds), on the same machine
state, so slow and fast moments of a shared machine fall on both. Prints each round's
numbers and the HEAD/BASE ratio of each, with the median; saves
``bench/results/compare-projector-<only>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREES = ROOT / "bench" / ".trees"
RESULTS = ROOT / "bench" / "results"
# What each kind reports, and whether more is better.
MEASURES = {
    "catch-up": [("catch_up", "rows_per_second", True)],
    "freshness": [("freshness", "p50_ms", False), ("freshness", "p99_ms", False)],
    "memory": [("memory", "peak_rss_mb", False)],
}


def checkout(commit: str) -> tuple[str, Path]:
    """A worktree of ``commit`` (made once, reused); its short hash and path."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", commit],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = TREES / sha
    if not tree.exists():
        TREES.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha],
            check=True,
            capture_output=True,
        )
    return sha, tree


def run(tree: Path, only: str, name: str, extra: list[str]) -> dict[str, Any]:
    """One benchmark run of ``tree``'s projector (this tree's harness); its results."""
    env = {**os.environ, "BENCH_TREE": str(tree)}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_projector.py"),
            "--only",
            only,
            "--output",
            name,
            *extra,
        ],
        check=True,
        env=env,
    )
    result: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    (RESULTS / f"{name}.json").unlink()
    return result


def value(result: dict[str, Any], section: str, key: str) -> float:
    return float(result[section][key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=tuple(MEASURES), default="catch-up")
    parser.add_argument("--transactions", type=int, default=None)
    args = parser.parse_args()
    extra = [] if args.transactions is None else ["--transactions", str(args.transactions)]
    trees = [checkout(args.base), checkout(args.head)]
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        order = trees if number % 2 else list(reversed(trees))
        measured = {
            sha: run(tree, args.only, f"compare-{sha}-{number}", extra) for sha, tree in order
        }
        row: dict[str, Any] = {"round": number, "order": [sha for sha, _ in order]}
        for section, key, _more_is_better in MEASURES[args.only]:
            base = value(measured[trees[0][0]], section, key)
            head = value(measured[trees[1][0]], section, key)
            row[key] = {"base": base, "head": head, "head_over_base": round(head / base, 3)}
        rounds.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        key: {
            "median_head_over_base": statistics.median(r[key]["head_over_base"] for r in rounds),
            "more_is_better": more,
        }
        for _section, key, more in MEASURES[args.only]
    }
    out = {
        "benchmark": f"compare-projector-{args.only}",
        "base": trees[0][0],
        "head": trees[1][0],
        "rounds": rounds,
        "summary": summary,
    }
    path = RESULTS / f"compare-projector-{args.only}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
