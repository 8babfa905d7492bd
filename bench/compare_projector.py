"""Paired rounds of ``bench_projector.py`` on two commits (``bench/compare.py`` with the
projector benchmark; kept for its command line).

Run: ``.venv/bin/python bench/compare_projector.py BASE HEAD [--rounds 3] [--only catch-up]
[--transactions N]``; saves ``bench/results/compare-projector-<only>.json``.
"""

from __future__ import annotations

import argparse

from compare import DEFAULT_MEASURES, compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--rounds", type=int, default=3)
    kinds = sorted({only for bench, only in DEFAULT_MEASURES if bench == "projector" and only})
    parser.add_argument("--only", choices=kinds, default="catch-up")
    parser.add_argument("--transactions", type=int, default=None)
    args = parser.parse_args()
    extra = [] if args.transactions is None else ["--transactions", str(args.transactions)]
    compare(args.base, args.head, only=args.only, rounds=args.rounds, extra=extra)


if __name__ == "__main__":
    main()
