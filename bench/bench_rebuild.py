"""Rebuild benchmark: full rebuild of Redis from PostgreSQL vs the bare aggregate queries.

Run: ``.venv/bin/python bench/bench_rebuild.py [--rows 1000000 10000000]``. For each size
it loads that many pomodoros (100,000 users, timestamps over 400 days), times the same
aggregate queries PostgreSQL alone needs (one per period over the retained range, plus
all-time), then times ``projector replay`` (slot + snapshot + queries + loading Redis +
swap), then ``projector status`` and ``projector verify``. Saves bench/results/rebuild.json.
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
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args()
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
        for rows in sorted(args.rows):
            print(f"dataset of {rows:,} pomodoros:", flush=True)
            load_s = _load(dsn, rows)
            _bare_queries(dsn)  # warm the cache the same way for both measurements
            bare = min(_bare_queries(dsn) for _ in range(2))
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
                "bare_queries_seconds": round(bare, 2),
                "rebuild_seconds": round(best, 2),
                "ratio": round(best / bare, 2),
                "status_seconds": round(status_s, 2),
                "status_exit": status_code,
                "verify_seconds": round(verify_s, 2),
                "verify_all_seconds": round(verify_all_s, 2),
                "verify_exit": verify_code,
                "verify_summary": verify_out.strip().splitlines()[0],
            }
            print(
                f"  bare queries {bare:.2f}s, rebuild {best:.2f}s ({best / bare:.2f}x), "
                f"status {status_s:.2f}s, verify {verify_s:.2f}s, verify --all {verify_all_s:.2f}s"
            )
            runs.append(run)
    save("rebuild", {"runs": runs, "target_ratio": 2.0})


if __name__ == "__main__":
    main()
