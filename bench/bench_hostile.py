"""Hostile-client benchmark: what unread event streams and expired-bucket reads cost the API.

Run: ``.venv/bin/python bench/bench_hostile.py`` (``--api-root DIR`` serves the API from another
revision's tree, e.g. ``git archive main api projector | tar -x -C DIR``, to compare). Starts
its own PostgreSQL and Redis on loopback, loads ``--users`` users with pomodoros completed today
and one expired day bucket (100 days ago, ``--expired-users`` members), lets ``projector run``
build Redis and stops it, then serves ``python -m api`` with ``--workers`` (default 2):

- top 10 of today at a steady ``--rate`` (open loop, latency from each request's scheduled
  send time; ``bench_api.steady``) with 0, 500 and 1,500 event streams open that never read a
  byte, over random periods and limits (1-1000), from one address (the stream caps are raised
  for it: the point is what open streams cost, not that the caps refuse them);
- 200 reads of the expired bucket with random offsets and limits (20 at a time), and the
  PostgreSQL work they cost: scans of ``pomodoros`` and tuples read
  (``pg_stat_user_tables``, the API's sessions ended first so that their counts are in).

Prints the numbers and saves ``bench/results/hostile.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from bench_api import ApiServer, build_redis, load_data, steady
from common import ROOT, api_env, machine, migrate, save, throwaway_servers

TOP10 = "/v1/leaderboards/day?limit=10"
PERIODS = ("day", "week", "month", "year", "all")
STREAM_STEPS = (0, 500, 1500)
EXPIRED_READS = 200


def load_expired(dsn: str, members: int, seed: int) -> str:
    """``members`` members with 1..20 pomodoros each on one day 100 days ago; its bucket id."""
    rng = random.Random(seed)
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 100 * 86_400))
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor().copy("COPY pomodoros (user_id, completed_at) FROM STDIN") as copy:
            for i in range(1, members + 1):
                for _ in range(rng.randint(1, 20)):
                    copy.write_row((f"old{i:06d}", f"{day}T12:00:00Z"))
        conn.execute("ANALYZE pomodoros")
    return day


class UnreadStreams:
    """Event streams that are opened and never read (raw sockets, loopback only)."""

    def __init__(self, port: int, seed: int) -> None:
        self._port = port
        self._rng = random.Random(seed)
        self._sockets: list[socket.socket] = []

    def __len__(self) -> int:
        return len(self._sockets)

    def open(self, count: int) -> None:
        for _ in range(count):
            period = self._rng.choice(PERIODS)
            limit = self._rng.randint(1, 1000)
            sock = socket.create_connection(("127.0.0.1", self._port), timeout=10)
            # A small receive buffer: the server's writes back up as with a stalled client.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(
                f"GET /v1/leaderboards/{period}/events?limit={limit} HTTP/1.1\r\n"
                "Host: bench\r\n\r\n".encode()
            )
            self._sockets.append(sock)

    def answers(self, timeout: float = 5.0) -> dict[str, int]:
        """How many streams the server answered 200, answered otherwise, or not at all within
        ``timeout`` seconds in all (peeked, never read)."""
        waiting = {sock.fileno(): sock for sock in self._sockets}
        counts = {"ok": 0, "refused": 0, "unanswered": 0}
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            for sock in waiting.values():
                selector.register(sock, selectors.EVENT_READ)
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                    sock = waiting.pop(key.fd)
                    selector.unregister(sock)
                    try:
                        head = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    except OSError:
                        head = b""
                    counts["ok" if head.startswith(b"HTTP/1.1 200") else "refused"] += 1
        counts["unanswered"] = len(waiting)
        return counts

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def pomodoros_reads(dsn: str) -> dict[str, int]:
    """Scans of ``pomodoros`` and tuples they read so far, with the API's sessions ended first
    (a backend reports its counts when it exits)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pomodoro-api'"
        )
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pomodoro-api'"
        ).fetchone() != (0,):
            if time.monotonic() > deadline:
                raise RuntimeError("the API's sessions did not end")
            time.sleep(0.05)
        time.sleep(0.5)
        row = conn.execute(
            "SELECT seq_scan, seq_tup_read, coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_user_tables WHERE relname = 'pomodoros'"
        ).fetchone()
    assert row is not None
    seq_scan, seq_tup, idx_scan, idx_tup = (int(x) for x in row)
    return {
        "scans": seq_scan + idx_scan,
        "tuples_read": seq_tup + idx_tup,
        "seq_scan": seq_scan,
        "idx_scan": idx_scan,
    }


async def _expired_reads(port: int, bucket: str, members: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    pages = [(rng.randrange(0, members), rng.randint(1, 100)) for _ in range(EXPIRED_READS)]
    gate = asyncio.Semaphore(20)
    statuses: dict[int, int] = {}

    async def one(offset: int, limit: int) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            path = f"/v1/leaderboards/day?bucket={bucket}&offset={offset}&limit={limit}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            status = int(data[9:12])
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one(offset, limit) for offset, limit in pages))
    return {
        "reads": EXPIRED_READS,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--expired-users", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0, help="steady top-10 req/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api-root", type=Path, default=ROOT, help="tree to serve the API from")
    parser.add_argument("--output", default="hostile", help="bench/results/NAME.json")
    args = parser.parse_args(argv)
    print(json.dumps(machine(), indent=2))
    logs = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    revision = "this tree" if args.api_root == ROOT else str(args.api_root)
    results: dict[str, Any] = {
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "api_root": revision,
        "users": args.users,
        "expired_members": args.expired_users,
        "workers": args.workers,
        "rate": args.rate,
        "duration_s": args.duration,
        "command": " ".join([".venv/bin/python", "bench/bench_hostile.py", *sys.argv[1:]]),
    }
    with throwaway_servers() as (pg, rd):
        dsn = pg.create_database("bench_hostile")
        env = api_env(dsn, rd.url(), "bench_hostile")
        env.update(
            PROJECTOR_RETENTION_DAY_DAYS="35",
            # Let one address hold every stream: the benchmark measures their cost.
            PROJECTOR_API_MAX_STREAMS="5000",
            PROJECTOR_API_MAX_STREAMS_PER_CLIENT="5000",
            PROJECTOR_API_MAX_CONNECTIONS="8000",
        )
        migrate(env)
        rows = load_data(dsn, args.users, args.seed)
        bucket = load_expired(dsn, args.expired_users, args.seed)
        print(f"loaded {args.users:,} users ({rows:,} pomodoros today), expired day {bucket}")
        built = build_redis(env, dsn, rd.url(), logs / "projector.log")
        print(f"projector built Redis in {built:.1f} s", flush=True)
        server = ApiServer(env, args.workers, logs / "api.log", root=args.api_root)
        streams = UnreadStreams(server.port, args.seed)
        try:
            first = server.get(TOP10)
            assert first["source"] == "redis" and first["total"] == args.users, first
            results["top10"] = []
            for target in STREAM_STEPS:
                streams.open(target - len(streams))
                time.sleep(2.0)  # every stream subscribed and its first event sent
                answers = streams.answers()
                latency = steady(server.port, lambda: TOP10, args.rate, args.duration)
                row = {"streams": target, "stream_answers": answers, **latency}
                results["top10"].append(row)
                print(
                    f"top 10 at {args.rate:g} req/s with {target:>5} unread streams "
                    f"({answers}): p50 {latency['p50_ms']:.2f} ms, "
                    f"p99 {latency['p99_ms']:.2f} ms, max {latency['max_ms']:.2f} ms, "
                    f"errors {latency['errors']}",
                    flush=True,
                )
            streams.close()
            time.sleep(1.0)
            before = pomodoros_reads(dsn)
            reads = asyncio.run(_expired_reads(server.port, bucket, args.expired_users, args.seed))
            after = pomodoros_reads(dsn)
            cost = {key: after[key] - before[key] for key in before}
            results["expired_bucket"] = {"bucket": bucket, **reads, **cost}
            print(
                f"{EXPIRED_READS} reads of expired bucket {bucket} with random offsets: "
                f"{reads['statuses']} in {reads['seconds']} s; PostgreSQL: {cost['scans']} "
                f"scans of pomodoros, {cost['tuples_read']:,} tuples read",
                flush=True,
            )
        finally:
            streams.close()
            server.stop()
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    save(args.output, results)
    print(f"logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
