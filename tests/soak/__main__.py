"""``python -m tests.soak --rounds N --seed S --out bench/results/soak.json``: the long soak.

Prints a line per round and a report at the end; adds the run's summary to ``--out``
(totals over every saved run included). Exits 1 when any round failed.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tests.soak.report import save
from tests.soak.runner import MAX_TX_CHANGES, run_soak

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="rounds to run (default 20)")
    parser.add_argument(
        "--seed", type=int, default=None, help="base seed: round i uses seed + i (default: random)"
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "bench" / "results" / "soak.json"),
        help="results file the run is added to ('' to save nothing)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / ".soak", help="logs and evidence (wiped first)"
    )
    parser.add_argument(
        "--max-tx-changes",
        type=int,
        default=MAX_TX_CHANGES,
        help=f"PROJECTOR_MAX_TX_CHANGES of the projectors (default {MAX_TX_CHANGES})",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    print(
        f"soak: {args.rounds} round(s) from seed {seed} (round i uses seed {seed} + i; "
        f"replay one with: make soak SEED=<its seed> ROUNDS=1); logs in {args.workdir}",
        flush=True,
    )
    summary = run_soak(
        args.rounds,
        seed,
        args.workdir,
        max_tx_changes=args.max_tx_changes,
        echo=lambda line: print(line, flush=True),
    )
    print(summary.text())
    if args.out:
        from bench.common import machine

        totals = save(Path(args.out), summary.as_json(), machine())
        print(
            f"saved to {args.out}: {totals['rounds']} rounds over {totals['runs']} run(s), "
            f"{totals['drifts']} drift(s), {totals['failed_rounds']} failed round(s)"
        )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
