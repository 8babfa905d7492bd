"""Paired rounds of one benchmark on two commits: is HEAD as fast as BASE?

Run: ``.venv/bin/python bench/compare.py BASE HEAD [--bench projector] [--only catch-up]
[--rounds 3] [--measure SECTION.KEY[:lower]] [-- ARGS...]``.

Each commit is checked out (``git worktree``) under ``bench/.trees/``. Every round runs this
tree's ``bench/bench_<bench>.py`` once on each commit, in alternating order (BASE first in
odd rounds), so slow and fast moments of a shared machine fall on both. The commit under
test is the code the benchmark runs: ``BENCH_TREE`` names its worktree (the benchmarks start
``python -m projector`` there) and ``PYTHONPATH`` puts it first (what a benchmark imports);
the measuring script is the same for both. A benchmark must take ``--output NAME`` (its
results file); ARGS after ``--`` go to it as they are.

Prints each round's numbers and the HEAD/BASE ratio of each measure, with the median and
range over the rounds, and saves ``bench/results/compare-<bench>[-<only>].json`` (or
``--output NAME``).
``--measure`` picks numbers out of the results (``section.key``, higher is better unless
``:lower``); the projector's kinds have defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREES = ROOT / "bench" / ".trees"
RESULTS = ROOT / "bench" / "results"


def _measure(spec: str) -> tuple[str, bool]:
    path, _, direction = spec.partition(":")
    if direction not in ("", "higher", "lower"):
        raise argparse.ArgumentTypeError(f"{spec!r}: the direction is 'higher' or 'lower'")
    return path, direction != "lower"


# What each kind of the projector benchmark reports, and whether more is better.
DEFAULT_MEASURES: dict[tuple[str, str | None], list[tuple[str, bool]]] = {
    ("projector", "catch-up"): [
        ("catch_up.rows_per_second", True),
        ("catch_up.over_decode_floor", True),
        ("catch_up.projector_cpu_us_per_row", False),
        ("catch_up.redis_cpu_us_per_row", False),
    ],
    ("projector", "catch-up-focus"): [
        ("catch_up_focus.rows_per_second", True),
        ("catch_up_focus.projector_cpu_us_per_row", False),
        ("catch_up_focus.redis_cpu_us_per_row", False),
    ],
    ("projector", "freshness"): [("freshness.p50_ms", False), ("freshness.p99_ms", False)],
    ("projector", "memory"): [("memory.peak_rss_mb", False)],
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


def run(tree: Path, script: Path, name: str, extra: list[str]) -> dict[str, Any]:
    """One run of ``script`` on ``tree``'s code; its results (the file is removed)."""
    python_path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "BENCH_TREE": str(tree), "PYTHONPATH": python_path}
    subprocess.run([sys.executable, str(script), "--output", name, *extra], check=True, env=env)
    path = RESULTS / f"{name}.json"
    result: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return result


def value(result: dict[str, Any], path: str) -> float:
    """The number at ``section.key`` (any depth) of a results document."""
    node: Any = result
    for part in path.split("."):
        node = node[part]
    return float(node)


def compare(
    base: str,
    head: str,
    *,
    bench: str = "projector",
    only: str | None = None,
    rounds: int = 3,
    measures: list[tuple[str, bool]] | None = None,
    extra: list[str] | None = None,
    output: str | None = None,
) -> Path:
    """Run the paired rounds; return the saved results file."""
    script = ROOT / "bench" / f"bench_{bench}.py"
    if not script.exists():
        raise SystemExit(f"no benchmark {script.relative_to(ROOT)}")
    measures = measures or DEFAULT_MEASURES.get((bench, only))
    if not measures:
        raise SystemExit(f"say what to compare for {bench} {only or ''}: --measure SECTION.KEY")
    args = [*(["--only", only] if only else []), *(extra or [])]
    trees = [checkout(base), checkout(head)]
    label = bench if only is None else f"{bench}-{only}"
    started = time.time()
    results: list[dict[str, Any]] = []
    for number in range(1, rounds + 1):
        order = trees if number % 2 else list(reversed(trees))
        measured = {
            sha: run(tree, script, f"compare-{label}-{sha}-{number}", args) for sha, tree in order
        }
        row: dict[str, Any] = {"round": number, "order": [sha for sha, _ in order]}
        for path, _more_is_better in measures:
            a, b = value(measured[trees[0][0]], path), value(measured[trees[1][0]], path)
            row[path] = {"base": a, "head": b, "head_over_base": round(b / a, 3) if a else None}
        results.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for path, more in measures:
        ratios = [r[path]["head_over_base"] for r in results if r[path]["head_over_base"]]
        summary[path] = {
            "more_is_better": more,
            "median_head_over_base": statistics.median(ratios) if ratios else None,
            "range": [min(ratios), max(ratios)] if ratios else None,
            "base_median": statistics.median(r[path]["base"] for r in results),
            "head_median": statistics.median(r[path]["head"] for r in results),
            "head_better_rounds": sum(
                (r[path]["head"] > r[path]["base"]) == more and r[path]["head"] != r[path]["base"]
                for r in results
            ),
        }
    out = {
        "benchmark": f"compare-{label}",
        "command": shlex.join(
            [".venv/bin/python", "bench/compare.py", *sys.argv[1:]]
            if Path(sys.argv[0]).name == "compare.py"
            else [".venv/bin/python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]
        ),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "load_average_after": list(os.getloadavg()),
        "base": trees[0][0],
        "head": trees[1][0],
        "rounds": results,
        "summary": summary,
    }
    path = RESULTS / f"{output or f'compare-{label}'}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"saved {path.relative_to(ROOT)}")
    return path


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--bench", default="projector", help="bench/bench_NAME.py")
    parser.add_argument("--only", help="passed on as --only (the projector's kinds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--measure", type=_measure, action="append", help="SECTION.KEY[:lower], repeatable"
    )
    parser.add_argument("--output", help="results name (default: compare-BENCH[-ONLY])")
    args = parser.parse_args(argv)
    only = args.only if args.only or args.bench != "projector" else "catch-up"
    compare(
        args.base,
        args.head,
        bench=args.bench,
        only=only,
        rounds=args.rounds,
        measures=args.measure,
        extra=extra,
        output=args.output,
    )


if __name__ == "__main__":
    main()
