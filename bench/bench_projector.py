"""Projector benchmarks: catch-up throughput, commit-to-visible latency, memory.

Run: ``.venv/bin/python bench/bench_projector.py`` (or ``make bench``). Starts its own
PostgreSQL and Redis, prints the numbers and saves ``bench/results/projector.json``.

- catch-up: a backlog of 10,000 transactions x 100 rows (100,000 users, timestamps over
  400 days) is written while the projector is stopped; then the projector starts and the
  clock runs until the Redis watermark passes the backlog's last LSN. Redis CPU per row is
  the server's CPU time over the catch-up divided by the rows (likewise the projector's and
  its walsender's). The decode floor is measured on the same backlog in the same run, once
  before and once after the projector: a minimal reader (``decode_floor``: the replication
  recipe of projector/stream.py, every message decoded by projector.core.pgoutput, nothing
  else) on a second slot; the result gives the projector's rate over the floor's.
  ``catch-up-focus`` does the same with the three boards of examples/focus_minutes.toml
  (and 1,000 teams).
- freshness: 1,000 single-row commits/s; latency from each commit returning to the
  pomodoro being visible in Redis (a probe member's all-time score reaching it).
- memory: peak RSS of the projector while it applies one 1,000,000-row transaction.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import redis
from common import ROOT, TREE, migrate, percentile, save, throwaway_servers

from projector.core.lsn import parse_lsn
from projector.core.pgoutput import Commit, Decoder, Insert
from projector.core.replication import PrimaryKeepalive
from projector.stream import ReplicationStream

PROJECTOR = [sys.executable, "-m", "projector", "run"]
FOCUS_SQL = ROOT / "examples" / "focus_minutes.sql"
FOCUS_BOARDS = ROOT / "examples" / "focus_minutes.toml"


def projector_env(pg_dsn: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PROJECTOR_PG_DSN=pg_dsn,
        PROJECTOR_REDIS_URL=redis_url,
        PROJECTOR_SLOT="bench",
        PROJECTOR_PUBLICATION="bench",
        PROJECTOR_LOG_LEVEL="warning",
        # Keep every board of the 400-day backlog: the benchmark measures all the writes.
        PROJECTOR_RETENTION_DAY_DAYS="800",
        PROJECTOR_RETENTION_WEEK_WEEKS="120",
    )
    env.update(extra)
    return env


def start_projector(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        PROJECTOR, env=env, cwd=TREE, stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )


def stop_projector(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def watermark_lsn(client: redis.Redis, prefix: str = "pomo:") -> int:
    raw = client.hget(f"{prefix}watermark", "lsn")
    if not raw:
        return -1
    return parse_lsn(raw.decode() if isinstance(raw, bytes) else raw)


def current_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def wait_for(client: redis.Redis, lsn: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while watermark_lsn(client) < lsn:
        if time.monotonic() > deadline:
            raise TimeoutError(f"projector did not reach {lsn:X}")
        time.sleep(0.002)
    return time.monotonic()


def bootstrap(pg_dsn: str, env: dict[str, str], client: redis.Redis, log: Path) -> None:
    migrate(env, log)
    if env.get("PROJECTOR_BOARDS_FILE"):  # the example's columns and label table, then
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the publication again
            conn.execute(FOCUS_SQL.read_text())
        migrate(env, log)
    proc = start_projector(env, log)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        wait_for(client, current_lsn(conn), 60)
    stop_projector(proc)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used: less sensitive than wall time to
    other load on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def walsender_cpu(conn: psycopg.Connection[Any], slot: str) -> float | None:
    """CPU seconds of the walsender streaming ``slot`` (None when none streams it)."""
    row = conn.execute(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    try:
        return process_cpu(int(row[0]))
    except OSError:
        return None


FLOOR_SLOT = "bench_floor"


def decode_floor(pg_dsn: str, publication: str, rows: int) -> dict[str, Any]:
    """Rows/s of the least a pgoutput consumer does: read the slot ``FLOOR_SLOT`` with the
    replication recipe of ``projector.stream`` and decode every message with the project's
    decoder, until ``rows`` inserts went by. Confirms nothing (the slot's position stays, so
    it can be read again), applies nothing."""
    stream = ReplicationStream(pg_dsn, FLOOR_SLOT, publication)
    decode = Decoder(1).decode
    seen = 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        stream.open()
        try:
            cpu0, t0 = time.process_time(), time.monotonic()
            stream.start(0)
            walsender0 = walsender_cpu(conn, FLOOR_SLOT)
            done = False
            while not done:
                for frame in stream.frames(1.0):
                    if isinstance(frame, PrimaryKeepalive):
                        if frame.reply_requested:
                            stream.send_status(0)  # alive; position unchanged
                        continue
                    message = decode(frame.data)
                    if type(message) is Insert:
                        seen += 1
                    elif type(message) is Commit and seen >= rows:
                        done = True
                        break
                if time.monotonic() - t0 > 600:
                    raise TimeoutError("the decode floor reader did not see the backlog")
            seconds = time.monotonic() - t0
            reader = time.process_time() - cpu0
            walsender1 = walsender_cpu(conn, FLOOR_SLOT)
        finally:
            stream.close()
    return {
        "rows": seen,
        "seconds": round(seconds, 3),
        "rows_per_second": round(seen / seconds),
        "reader_cpu_us_per_row": round(reader * 1e6 / seen, 2),
        "walsender_cpu_us_per_row": None
        if walsender0 is None or walsender1 is None
        else round((walsender1 - walsender0) * 1e6 / seen, 2),
    }


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling process ``pid`` until it exits."""
    spy = Path(sys.executable).with_name("py-spy")
    kind = "flamegraph" if out.suffix == ".svg" else "raw"
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", kind, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def catch_up(
    pg_dsn: str,
    redis_url: str,
    log: Path,
    txs: int,
    rows_per_tx: int,
    focus: bool = False,
    extra_env: Mapping[str, str] | None = None,
    floor: bool = False,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Rows/s of a fresh projector through a backlog written while none ran.

    ``redis_url`` is the server the clock and the CPU count read (the master); ``extra_env``
    configures the projector further (a Sentinel topology, say, found through it). With
    ``floor``, the decode floor (``decode_floor``) reads the same backlog before and after
    the projector, and the result has the ratio of the projector's rate to the floor's mean.
    With ``profile``, py-spy samples the projector over the catch-up into that file (a
    flame graph for ``.svg``, else collapsed stacks).
    """
    env = projector_env(pg_dsn, redis_url, **(extra_env or {}))
    if focus:
        env.update(PROJECTOR_BOARDS_FILE=str(FOCUS_BOARDS), PROJECTOR_SLOT="bench_focus")
    client = redis.Redis.from_url(redis_url)
    bootstrap(pg_dsn, env, client, log)
    print(f"writing backlog: {txs:,} transactions x {rows_per_tx} rows ...", flush=True)
    started = time.monotonic()
    insert = (
        "INSERT INTO pomodoros (user_id, completed_at, minutes, team_id)"
        " SELECT 'user' || (random() * 99999)::int, now() - random() * interval '400 days',"
        "        (random() * 50)::int, 'team' || (random() * 999)::int"
        " FROM generate_series(1, %s)"
        if focus
        else "INSERT INTO pomodoros (user_id, completed_at)"
        " SELECT 'user' || (random() * 99999)::int,"
        "        now() - random() * interval '400 days'"
        " FROM generate_series(1, %s)"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        if floor:  # a slot of its own, from before the backlog
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (FLOOR_SLOT,),
            )
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (FLOOR_SLOT,))
        for i in range(txs):
            conn.execute(insert, (rows_per_tx,))
            if i % 2000 == 0:
                print(f"  {i:,} transactions", flush=True)
        target = current_lsn(conn)
    print(f"backlog written in {time.monotonic() - started:.1f}s; projecting ...", flush=True)
    rows = txs * rows_per_tx
    floors = []
    if floor:
        floors.append(decode_floor(pg_dsn, env["PROJECTOR_PUBLICATION"], rows))
        print(f"decode floor (before): {floors[-1]['rows_per_second']:,} rows/s", flush=True)
    cpu0 = redis_cpu(client)
    t0 = time.monotonic()
    proc = start_projector(env, log)
    spy = None if profile is None else start_py_spy(proc.pid, profile)
    walsender: float | None = None
    try:
        t1 = wait_for(client, target, 600)
        projector_cpu = process_cpu(proc.pid)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            walsender = walsender_cpu(conn, env["PROJECTOR_SLOT"])
    finally:
        stop_projector(proc)
        if spy is not None:
            spy.wait(60)
    cpu = redis_cpu(client) - cpu0
    seconds = t1 - t0
    print(
        f"catch-up ({'three example boards' if focus else 'default board'}): {rows:,} rows in "
        f"{seconds:.2f}s = {rows / seconds:,.0f} rows/s; Redis CPU {cpu * 1e6 / rows:.1f} us/row,"
        f" projector CPU {projector_cpu * 1e6 / rows:.1f} us/row"
    )
    result: dict[str, Any] = {
        "boards": "examples/focus_minutes.toml" if focus else "default",
        "rows": rows,
        "transactions": txs,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds),
        "redis_cpu_us_per_row": round(cpu * 1e6 / rows, 2),
        "projector_cpu_us_per_row": round(projector_cpu * 1e6 / rows, 2),
        "walsender_cpu_us_per_row": None if walsender is None else round(walsender * 1e6 / rows, 2),
    }
    if floor:
        floors.append(decode_floor(pg_dsn, env["PROJECTOR_PUBLICATION"], rows))
        print(f"decode floor (after): {floors[-1]['rows_per_second']:,} rows/s", flush=True)
        floor_rate = sum(f["rows_per_second"] for f in floors) / len(floors)
        result["decode_floor"] = {
            "rows_per_second": round(floor_rate),
            "runs": floors,
            "reader": "bench_projector.decode_floor: projector.stream.ReplicationStream + "
            "projector.core.pgoutput.Decoder, nothing else",
        }
        result["over_decode_floor"] = round(rows / seconds / floor_rate, 3)
        print(
            f"catch-up over the decode floor ({floor_rate:,.0f} rows/s, mean of before and "
            f"after): {result['over_decode_floor']:.3f}"
        )
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (FLOOR_SLOT,))
    return result


_WATCHER = """
import sys, time, redis
key = "pomo:lb:pomodoros:all:all"
member, total, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
clients = [redis.Redis.from_url(url) for url in sys.argv[4:]]
seen = [int(r.zscore(key, member) or 0) for r in clients]
print("ready", flush=True)
out = []
while min(seen) < total and time.monotonic() < deadline:
    for i, r in enumerate(clients):
        score = int(r.zscore(key, member) or 0)
        if score > seen[i]:
            out.append(f"{i} {time.monotonic()!r} {score}")
            seen[i] = score
print("\\n".join(out))
"""


def freshness(
    pg_dsn: str,
    redis_url: str,
    log: Path,
    rate: int,
    seconds: float,
    extra_env: Mapping[str, str] | None = None,
    replica_url: str | None = None,
) -> dict[str, Any]:
    """Commit-to-visible latency at a steady commit rate.

    The watcher is a separate process (no shared GIL with the writer) that polls the probe
    member's score as fast as Redis answers and notes when each count first became visible;
    CLOCK_MONOTONIC is shared by all processes, so its times compare with the writer's.
    ``redis_url`` is the server (the master) whose visibility counts; ``extra_env``
    configures the projector further; with ``replica_url`` the watcher polls that replica
    in turn with the master, and the result also gives the latency to the replica.
    """
    env = projector_env(pg_dsn, redis_url, **(extra_env or {}))
    client = redis.Redis.from_url(redis_url)
    proc = start_projector(env, log)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            # Redis may hold the position already (a previous run's watermark): wait for a new
            # commit, which only this projector, once it streams, can apply.
            conn.execute("INSERT INTO pomodoros (user_id) VALUES ('warm-up')")
            wait_for(client, current_lsn(conn), 60)
        probe = f"probe-{os.getpid()}"
        total = int(rate * seconds)
        watched = [redis_url] if replica_url is None else [redis_url, replica_url]
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHER,
                probe,
                str(total),
                repr(time.monotonic() + seconds + 60),
                *watched,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        # Only once the watcher polls: a commit made before would count its start-up as latency
        # (on a busy machine, starting Python and importing redis can outlast any fixed sleep).
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("the freshness watcher did not start")
        commits: list[float] = []
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT 1")
            start = time.monotonic()
            for i in range(total):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                conn.execute("INSERT INTO pomodoros (user_id) VALUES (%s)", (probe,))
                commits.append(time.monotonic())
            achieved = total / (time.monotonic() - start)
        out, _ = watcher.communicate(timeout=120)
    finally:
        stop_projector(proc)
    visible: list[list[tuple[float, int]]] = [[] for _ in watched]
    for line in out.strip().splitlines():
        which, t, score = line.split()
        visible[int(which)].append((float(t), int(score)))
    latencies = _latencies(commits, visible[0])
    result = {
        "target_commits_per_second": rate,
        "achieved_commits_per_second": round(achieved),
        "commits": total,
        **_latency_summary(latencies),
    }
    print(
        f"freshness at {achieved:,.0f} commits/s: p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
    )
    if replica_url is not None:
        replica = result["replica"] = _latency_summary(_latencies(commits, visible[1]))
        print(
            f"  visible on the replica: p50 {replica['p50_ms']} ms, "
            f"p99 {replica['p99_ms']} ms, max {replica['max_ms']} ms"
        )
    return result


def _latencies(commits: list[float], visible: list[tuple[float, int]]) -> list[float]:
    """Milliseconds from each commit (the k-th) to the first time the count reached k."""
    latencies: list[float] = []
    index = 0
    for k, committed in enumerate(commits, start=1):
        while index < len(visible) and visible[index][1] < k:
            index += 1
        if index == len(visible):
            break
        latencies.append((visible[index][0] - committed) * 1000)
    return latencies


def _latency_summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "observed": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
    }


def memory(pg_dsn: str, redis_url: str, log: Path, rows: int) -> dict[str, Any]:
    env = projector_env(pg_dsn, redis_url)
    client = redis.Redis.from_url(redis_url)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        print(f"writing one transaction of {rows:,} rows ...", flush=True)
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT 'user' || (random() * 99999)::int, now() - random() * interval '400 days'"
            " FROM generate_series(1, %s)",
            (rows,),
        )
        target = current_lsn(conn)
    proc = start_projector(env, log)
    peak = 0
    t0 = time.monotonic()
    status = Path(f"/proc/{proc.pid}/status")
    while watermark_lsn(client) < target:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        if time.monotonic() - t0 > 600:
            raise TimeoutError("large transaction not applied")
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = max(peak, int(line.split()[1]))
    stop_projector(proc)
    print(
        f"memory: one {rows:,}-row transaction applied in {seconds:.1f}s, "
        f"projector peak RSS {peak / 1024:.1f} MB"
    )
    return {"rows": rows, "seconds": round(seconds, 2), "peak_rss_mb": round(peak / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--rows-per-tx", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--big-tx", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("catch-up", "catch-up-focus", "freshness", "memory"))
    parser.add_argument("--output", help="results file name (default: projector[-ONLY])")
    parser.add_argument("--profile", type=Path, help="py-spy the projector's catch-up into it")
    args = parser.parse_args()
    log = ROOT / "bench" / "results" / "projector.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    results: dict[str, Any] = {}
    with throwaway_servers() as (pg, rd):
        dsn, url = pg.dsn(), rd.url()
        if args.only in (None, "catch-up"):
            results["catch_up"] = catch_up(
                dsn, url, log, args.transactions, args.rows_per_tx, floor=True, profile=args.profile
            )
        if args.only in (None, "catch-up-focus"):
            # A fresh database: the example adds columns and a label table.
            focus_dsn = pg.create_database("bench_focus")
            results["catch_up_focus"] = catch_up(
                focus_dsn, rd.url(1), log, args.transactions, args.rows_per_tx, focus=True
            )
        if args.only not in (None, "catch-up"):
            bootstrap(dsn, projector_env(dsn, url), redis.Redis.from_url(url), log)
        if args.only in (None, "freshness"):
            results["freshness"] = freshness(dsn, url, log, args.rate, args.seconds)
        if args.only in (None, "memory"):
            results["memory"] = memory(dsn, url, log, args.big_tx)
    results["targets"] = {
        "catch_up_rows_per_second": 75_000,
        "catch_up_over_decode_floor": 0.70,
        "freshness_p50_ms": 2,
        "freshness_p99_ms": 10,
        "memory_peak_rss_mb": 200,
    }
    save(args.output or ("projector" if args.only is None else f"projector-{args.only}"), results)


if __name__ == "__main__":
    main()
