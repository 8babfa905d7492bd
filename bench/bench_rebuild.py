"""Rebuild benchmark: full rebuild of Redis from PostgreSQL vs one scan of the same table.

Run: ``.venv/bin/python bench/bench_rebuild.py [--quick]``: 1,000,000 pomodoros with
``--quick``, else 10,000,000 (100,000 users, timestamps over 400 days; loaded once). For
each size it times, in the same run, the reference: one all-time ``SELECT user_id,
count(*) FROM pomodoros GROUP BY user_id`` (PostgreSQL alone, best of three), then
``projector replay`` (slot + snapshot + scan + roll-up + loading Redis + swap; best of
two) and reports the ratio rebuild/scan (target: at most 4), then ``projector status`` and
``projector verify``. Saves bench/results/rebuild.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from common import ROOT, save, throwaway_servers

from projector.core import queries
from projector.core.boards import label_sources
from projector.core.buckets import Period, oldest_retained_bucket_start
from projector.settings import load_settings


def _env(dsn: str, url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PROJECTOR_PG_DSN=dsn,
        PROJECTOR_REDIS_URL=url,
        PROJECTOR_SLOT="benchrebuild",
        PROJECTOR_PUBLICATION="benchrebuild",
        PROJECTOR_LOG_LEVEL="warning",
    )
    return env


def _projector(env: dict[str, str], *args: str) -> tuple[float, int, str]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "projector", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return time.monotonic() - t0, done.returncode, done.stdout + done.stderr


def _load(dsn: str, total: int) -> float:
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        have_row = conn.execute("SELECT count(*) FROM pomodoros").fetchone()
        have = int(have_row[0]) if have_row else 0
        step = 1_000_000
        while have < total:
            n = min(step, total - have)
            conn.execute(
                "INSERT INTO pomodoros (user_id, completed_at)"
                " SELECT 'user' || (random() * 99999)::int, now() - random() * interval '400 days'"
                " FROM generate_series(1, %s)",
                (n,),
            )
            have += n
            print(f"  loaded {have:,} rows", flush=True)
        conn.execute(
            "INSERT INTO users SELECT 'user' || g, 'User ' || g FROM generate_series(0, 99999) g"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute("VACUUM ANALYZE pomodoros")
    return time.monotonic() - t0


def _reference_scan(dsn: str) -> float:
    """One all-time GROUP BY scan of the table, as PostgreSQL alone runs it."""
    with psycopg.connect(dsn) as conn:
        t0 = time.monotonic()
        conn.execute("SELECT user_id, count(*) FROM pomodoros GROUP BY user_id").fetchall()
        return time.monotonic() - t0


def _bare_queries(dsn: str) -> float:
    settings = load_settings(pg_dsn=dsn)
    tz = settings.zone
    t0 = time.monotonic()
    with psycopg.connect(dsn) as conn:
        for board in settings.boards:
            for period in (Period.DAY, Period.WEEK, Period.MONTH, Period.YEAR):
                since = oldest_retained_bucket_start(
                    period, tz, settings.retention, datetime.now(UTC)
                )
                params = {"tz": settings.timezone, "since": since}
                for _ in conn.execute(queries.period_scores(board, period), params):
                    pass
            for _ in conn.execute(queries.all_time_scores(board)):
                pass
        for labels in label_sources(settings.boards):
            for _ in conn.execute(queries.all_labels(labels)):
                pass
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows, not 10,000,000")
    parser.add_argument("--rows", type=int, nargs="+", help="other sizes (loaded in turn)")
    args = parser.parse_args()
    sizes = args.rows or ([1_000_000] if args.quick else [10_000_000])
    runs: list[dict[str, Any]] = []
    with throwaway_servers() as (pg, rd):
        dsn, url = pg.dsn(), rd.url()
        env = _env(dsn, url)
        subprocess.run(
            [sys.executable, "-m", "projector", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        for rows in sorted(sizes):
            print(f"dataset of {rows:,} pomodoros:", flush=True)
            load_s = _load(dsn, rows)
            _reference_scan(dsn)  # warm the cache the same way for every measurement
            scan = min(_reference_scan(dsn) for _ in range(3))
            bare = _bare_queries(dsn)
            rebuild_s, code, out = _projector(env, "replay")
            if code != 0:
                raise SystemExit(f"replay failed ({code}):\n{out}")
            rebuild_s2, _, _ = _projector(env, "replay")
            best = min(rebuild_s, rebuild_s2)
            runner = subprocess.Popen(
                [sys.executable, "-m", "projector", "run"],
                env=env,
                cwd=ROOT,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(3)
            status_s, status_code, _ = _projector(env, "status", "--json")
            verify_s, verify_code, verify_out = _projector(env, "verify")
            verify_all_s, _, _ = _projector(env, "verify", "--all")
            runner.terminate()
            runner.wait(60)
            run = {
                "rows": rows,
                "load_seconds": round(load_s, 1),
                "reference_scan_seconds": round(scan, 2),
                "per_period_queries_seconds": round(bare, 2),
                "rebuild_seconds": round(best, 2),
                "rebuild_seconds_both": [round(rebuild_s, 2), round(rebuild_s2, 2)],
                "ratio": round(best / scan, 2),
                "status_seconds": round(status_s, 2),
                "status_exit": status_code,
                "verify_seconds": round(verify_s, 2),
                "verify_all_seconds": round(verify_all_s, 2),
                "verify_exit": verify_code,
                "verify_summary": verify_out.strip().splitlines()[0],
            }
            print(
                f"  reference scan {scan:.2f}s, per-period queries {bare:.2f}s, "
                f"rebuild {best:.2f}s ({best / scan:.2f}x the scan), "
                f"status {status_s:.2f}s, verify {verify_s:.2f}s, verify --all {verify_all_s:.2f}s"
            )
            runs.append(run)
    save(
        "rebuild",
        {
            "command": " ".join([".venv/bin/python", "bench/bench_rebuild.py", *sys.argv[1:]]),
            "reference": "SELECT user_id, count(*) FROM pomodoros GROUP BY user_id",
            "runs": runs,
            "target_ratio": 4.0,
        },
    )


if __name__ == "__main__":
    main()
