"""Live-board fan-out benchmark: 1,000 Server-Sent Events clients, 2 API workers, 50 commits/s.

Run: ``.venv/bin/python bench/bench_sse.py`` (or ``make bench``). Starts its own PostgreSQL
and Redis, ``projector run`` and ``python -m api --workers 2`` (access log off), then:

- a client process (separate from the API; uvloop, raw sockets, fd limit raised) opens
  ``--clients`` streams, 80% on today's top 10 and 20% on this week's;
- this process commits ``--rate`` single-pomodoro transactions per second for ``--duration``
  seconds, each for one of ten users, so that every commit changes both boards, and records
  when each commit returned and its end LSN (``pg_current_wal_lsn()`` right after it);
- each client notes when each event arrives and its ``id`` (the watermark LSN); a commit's
  latency at a client is the arrival of the first event whose LSN covers it, minus the time
  the commit returned (same machine, same clock).

Reports p50/p90/p99/max over every (client, commit) pair, events received and clients dropped
(a stream that ended or never connected), prints them and saves ``bench/results/sse.json``.
Target: p99 <= 250 ms and no client dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import psycopg
from bench_api import ApiServer
from common import ROOT, api_env, machine, migrate, percentile, save, throwaway_servers

from projector.core.lsn import parse_lsn

USERS = [f"bench{i}" for i in range(10)]
PATHS = ("/v1/leaderboards/day/events?limit=10", "/v1/leaderboards/week/events?limit=10")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65_536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- the client process -----------------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One SSE connection that records (LSN, arrival) of each event and nothing else."""

    def __init__(self, request: bytes, connected: asyncio.Future[None]) -> None:
        self.request = request
        self.connected = connected
        self.lsns: array[int] = array("Q")
        self.times: array[float] = array("d")
        self.tail = b""
        self.last = -1
        self.lost = False
        self.status_ok = False

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.status_ok:
            self.status_ok = data.startswith(b"HTTP/1.1 200")
        text = self.tail + data
        start = 0
        while True:
            at = text.find(b"id: ", start)
            if at < 0:
                break
            end = text.find(b"\n", at)
            if end < 0:
                break
            lsn = parse_lsn(text[at + 4 : end].decode())
            if lsn > self.last:
                self.last = lsn
                self.lsns.append(lsn)
                self.times.append(now)
                if not self.connected.done():
                    self.connected.set_result(None)
            start = end
        self.tail = text[-48:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed before the first event"))


async def _clients(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    streams: list[_Stream] = []
    failed = 0
    for index in range(count):
        path = PATHS[0] if index % 5 else PATHS[1]
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        connected: asyncio.Future[None] = loop.create_future()
        stream = _Stream(request.encode(), connected)
        try:
            await loop.create_connection(lambda s=stream: s, "127.0.0.1", port)  # type: ignore[misc]
            await asyncio.wait_for(connected, 10)
        except (OSError, TimeoutError, ConnectionError):
            failed += 1
        streams.append(stream)
    print(json.dumps({"ready": len(streams) - failed, "failed": failed}), flush=True)
    # Wait for the parent's "stop <commits file>" line.
    line = await loop.run_in_executor(None, sys.stdin.readline)
    commits = json.loads(Path(line.split(" ", 1)[1].strip()).read_text())
    print(json.dumps(_latencies(streams, commits, failed)), flush=True)


def _latencies(streams: list[_Stream], commits: list[list[Any]], failed: int) -> dict[str, Any]:
    samples: list[float] = []
    missing = 0
    for stream in streams:
        lsns, times = stream.lsns, stream.times
        i = 0
        for lsn, committed in commits:
            while i < len(lsns) and lsns[i] < lsn:
                i += 1
            if i == len(lsns):
                missing += 1
                continue
            samples.append((times[i] - committed) * 1000)
    dropped = failed + sum(1 for s in streams if s.lost or not s.status_ok)
    return {
        "clients": len(streams),
        "dropped": dropped,
        "events_received": sum(len(s.lsns) for s in streams),
        "samples": len(samples),
        "commits_never_seen": missing,
        "p50_ms": round(percentile(samples, 50), 2),
        "p90_ms": round(percentile(samples, 90), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "p999_ms": round(percentile(samples, 99.9), 2),
        "max_ms": round(max(samples), 2) if samples else None,
    }


def client_main(port: int, count: int) -> int:
    _raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_clients(port, count))
    except ImportError:
        asyncio.run(_clients(port, count))
    return 0


# --- the benchmark ----------------------------------------------------------------------------


def streams_per_worker(port: int, scrapes: int = 30) -> dict[str, int]:
    """Open streams by worker PID, from ``/metrics`` scraped until each worker answered."""
    found: dict[str, int] = {}
    for _ in range(scrapes):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        for worker, count in re.findall(rb'api_event_streams\{worker="(\d+)"\} (\d+)', data):
            found[worker.decode()] = int(count)
    return found


def write(dsn: str, rate: float, duration: float) -> list[list[Any]]:
    """Commit ``rate`` pomodoros per second; return [end LSN, time returned] of each."""
    commits: list[list[Any]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        total = int(rate * duration)
        start = time.monotonic()
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute("INSERT INTO pomodoros (user_id) VALUES (%s)", (USERS[i % len(USERS)],))
            committed = time.time()
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            commits.append([parse_lsn(row[0]), committed])
    return commits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--rate", type=float, default=50.0, help="commits per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of commits")
    parser.add_argument(
        "--role", choices=["bench", "clients"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "clients":
        return client_main(args.port, args.clients)

    _raise_fd_limit()  # inherited by the API workers
    # Stopped from outside (a timeout): still stop the servers and processes it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(json.dumps(machine(), indent=2))
    logs = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    results: dict[str, Any] = {
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "clients": args.clients,
        "workers": args.workers,
        "commit_rate": args.rate,
        "duration_s": args.duration,
        "boards": {"day top 10": "80%", "week top 10": "20%"},
        "command": " ".join([".venv/bin/python", "bench/bench_sse.py", *sys.argv[1:]]),
    }
    with throwaway_servers() as (pg, rd):
        dsn = pg.create_database("bench_sse")
        env = api_env(dsn, rd.url(), "bench_sse")
        # Every client connects from one address: let it hold them all.
        env.update(
            PROJECTOR_API_MAX_STREAMS=str(2 * args.clients),
            PROJECTOR_API_MAX_STREAMS_PER_CLIENT=str(2 * args.clients),
            PROJECTOR_API_MAX_CONNECTIONS=str(4 * args.clients),
        )
        migrate(env)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for user in USERS:
                conn.execute("INSERT INTO users VALUES (%s, %s)", (user, f"Bench {user[5:]}"))
                conn.execute("INSERT INTO pomodoros (user_id) VALUES (%s)", (user,))
        projector = subprocess.Popen(
            [sys.executable, "-m", "projector", "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(logs / "projector.log").open("ab"),
        )
        server = ApiServer(env, args.workers, logs / "api.log")
        clients = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--role",
                "clients",
                "--port",
                str(server.port),
                "--clients",
                str(args.clients),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert clients.stdin is not None and clients.stdout is not None
            started = time.monotonic()
            ready = json.loads(clients.stdout.readline())
            results["connect_s"] = round(time.monotonic() - started, 1)
            results["streams_per_worker"] = streams_per_worker(server.port)
            print(
                f"{ready['ready']:,} clients connected in {results['connect_s']} s "
                f"({ready['failed']} failed); streams per worker "
                f"{results['streams_per_worker']}",
                flush=True,
            )
            time.sleep(2)
            commits = write(dsn, args.rate, args.duration)
            time.sleep(2)  # the last events in flight
            commits_file = logs / "commits.json"
            commits_file.write_text(json.dumps(commits))
            clients.stdin.write(f"stop {commits_file}\n")
            clients.stdin.flush()
            measured = json.loads(clients.stdout.readline())
            results["commits"] = len(commits)
            results.update(measured)
        finally:
            if clients.poll() is None:
                clients.send_signal(signal.SIGTERM)
                clients.wait(30)
            server.stop()
            projector.send_signal(signal.SIGTERM)
            projector.wait(30)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["target"] = "p99 <= 250 ms, no client dropped"
    results["met"] = bool(results["p99_ms"] <= 250 and results["dropped"] == 0)
    save("sse", results)
    print(
        f"\n{results['clients']:,} clients on {args.workers} workers, {args.rate:g} commits/s for "
        f"{args.duration:g} s: commit -> event p50 {results['p50_ms']} ms, p90 "
        f"{results['p90_ms']} ms, p99 {results['p99_ms']} ms, max {results['max_ms']} ms; "
        f"{results['events_received']:,} events, {results['dropped']} dropped, "
        f"{results['commits_never_seen']} (client, commit) pairs never seen"
    )
    print(f"logs in {logs}")
    return 0 if results["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
