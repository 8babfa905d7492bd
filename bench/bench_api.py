"""Read API benchmark: throughput at 32 connections and p99 latency at a steady 1,000 req/s,
each throughput also as a ratio to a bare uvicorn ceiling measured in the same run.

Run: ``.venv/bin/python bench/bench_api.py`` (needs ``wrk``: ``apt-get install wrk`` on
Debian/Ubuntu, ``brew install wrk`` on macOS). Starts its own PostgreSQL and Redis, loads
100,000 users with pomodoros completed today, lets ``projector run`` build Redis, serves the
API with ``python -m api`` (uvicorn, ``--workers``, default 2: on two cores wrk and Redis
share the CPU with the workers, and two workers keep the API's share when other work runs),
then measures, for each scenario:

- throughput: ``wrk -t1`` with 32 connections (closed loop) for ``--duration`` seconds;
- latency: an open-loop generator sending 1,000 req/s on a fixed schedule, each latency
  counted from the request's scheduled send time, so a stall is not hidden by the requests
  it delayed (no coordinated omission; wrk2 is not packaged in Debian).

Scenarios: the current day's top 10 (through the historical route and the declared board's),
a random user's rank with 5 neighbours, and the same top 10 answered by the PostgreSQL
fallback (the API started with an unreachable Redis; its steady rate is ``--fallback-rate``,
since PostgreSQL sustains far less than 1,000 req/s).

The ceiling: ``ceiling_app``, an ASGI callable that answers every request with the same
~700-byte JSON body, served by uvicorn (httptools, uvloop, as many workers) and measured with
the same wrk settings before and after the API's scenarios; each Redis scenario's
``ratio_to_ceiling`` is its wrk throughput over the mean of the two. The ratio is what the
targets are set in: absolute numbers move with the load of other work on the machine, the
ratio much less. Prints the numbers, the machine and its load average, and saves
``bench/results/api.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis
from common import ROOT, api_env, machine, migrate, percentile, save, throwaway_servers

from harness.servers import free_port
from projector.core.lsn import parse_lsn

TOP10 = "/v1/leaderboards/day?limit=10"
BOARD_TOP10 = "/v1/boards/pomodoros/day?limit=10"
# Redis scenarios and their targets as a share of the ceiling's throughput (issue 17).
TARGETS = {"top10": 0.45, "board_top10": 0.45, "user_rank": 0.35}
# wrk: summary as one JSON line; latencies in microseconds.
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRKJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
_WRK_RANDOM_USER = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/leaderboards/day/users/u%06d?around=5",
                                         math.random(1, {users})))
end
"""


# --- data -------------------------------------------------------------------------------------


def load_data(dsn: str, users: int, seed: int) -> int:
    """Create ``users`` users with 1..24 pomodoros each completed today (UTC); return rows."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    span = max(1.0, (now - midnight).total_seconds() - 1)
    rows = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor().copy("COPY users (id, display_name) FROM STDIN") as copy:
            for i in range(1, users + 1):
                copy.write_row((f"u{i:06d}", f"User {i}"))
        with conn.cursor().copy("COPY pomodoros (user_id, completed_at) FROM STDIN") as copy:
            for i in range(1, users + 1):
                # Skewed: most users have a few, some many; many ties, as on a real board.
                count = min(24, 1 + int(rng.expovariate(0.25)))
                for _ in range(count):
                    copy.write_row((f"u{i:06d}", midnight + timedelta(seconds=rng.random() * span)))
                rows += count
        conn.execute("ANALYZE")
    return rows


def build_redis(env: dict[str, str], dsn: str, redis_url: str, log: Path) -> float:
    """Run ``projector run`` until Redis reflects everything; return seconds taken."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = parse_lsn(row[0])
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "projector", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    client = redis.Redis.from_url(redis_url)
    try:
        while True:
            lsn = client.hget(f"{env['PROJECTOR_KEY_PREFIX']}watermark", "lsn")
            if (
                lsn is not None
                and parse_lsn(lsn.decode() if isinstance(lsn, bytes) else lsn) >= target
            ):
                return time.monotonic() - started
            if proc.poll() is not None:
                raise RuntimeError(f"the projector exited ({proc.returncode}); see {log}")
            if time.monotonic() - started > 600:
                raise RuntimeError("Redis was not built within 600 s")
            time.sleep(0.2)
    finally:
        # The benchmark reads only: stop the projector so it does not compete for the CPU.
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        client.close()


# --- the ceiling -----------------------------------------------------------------------------

# About what the API answers for a top 10: ten entries, the bucket and the watermark.
_CEILING_BODY = json.dumps(
    {
        "period": "day",
        "bucket": "2026-12-08",
        "period_start": "2026-12-08T00:00:00+00:00",
        "period_end": "2026-12-09T00:00:00+00:00",
        "total": 100000,
        "limit": 10,
        "offset": 0,
        "entries": [
            {"rank": i, "user_id": f"u{i:06d}", "display_name": f"User {i}", "score": 24}
            for i in range(1, 8)
        ],
        "source": "redis",
        "as_of": {"lsn": "0/9F9B878", "commit_time": "2026-12-08T00:10:36.433104+00:00"},
    },
    separators=(",", ":"),
).encode()
_CEILING_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_CEILING_BODY)).encode()),
    ],
}
_CEILING_BODY_MESSAGE = {"type": "http.response.body", "body": _CEILING_BODY}


async def ceiling_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fastest an ASGI app can answer here: a constant JSON body, nothing computed."""
    await send(_CEILING_START)
    await send(_CEILING_BODY_MESSAGE)


def ceiling_command(port: int, workers: int) -> list[str]:
    """uvicorn serving ``ceiling_app`` as the API is served (httptools, uvloop, no access
    log)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(ROOT / "bench"),
        "bench_api:ceiling_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


# --- the API under test -----------------------------------------------------------------------


class ApiServer:
    """``python -m api`` (or ``command(port, workers)``) as a subprocess."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int,
        log: Path,
        root: Path = ROOT,
        command: Callable[[int, int], list[str]] | None = None,
    ) -> None:
        self.port = free_port()
        self._proc = subprocess.Popen(
            (command or _api_command)(self.port, workers),
            env=env,
            cwd=root,  # python -m imports the API from here (another revision's tree)
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(100).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {log}")
            time.sleep(0.1)
        time.sleep(0.5 * workers)  # let every worker finish its start-up

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"GET {path}: {head.splitlines()[0]!r} {body[:300]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def stop(self) -> None:
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


def _api_command(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


# --- load generators --------------------------------------------------------------------------


def wrk(
    url: str, connections: int, duration: float, script: str = "", threads: int = 1
) -> dict[str, Any]:
    """Closed-loop throughput with wrk; return its summary (latencies in milliseconds)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script + _WRK_DONE)
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--timeout",
                "5s",
                "-s",
                lua.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration + 60,
        ).stdout
    finally:
        os.unlink(lua.name)
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return {
        "threads": threads,
        "connections": connections,
        "seconds": round(seconds, 2),
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / seconds),
        "errors": errors,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
    }


async def _steady(
    port: int, next_path: Callable[[], str], rate: float, duration: float, connections: int
) -> dict[str, Any]:
    clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float, path: str) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            pool.put_nowait((reader, writer))
        # From the scheduled send time: waiting for a free connection counts as latency.
        latencies.append(clock() - scheduled)

    total = int(rate * duration)
    start = clock() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, next_path())))
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    ms = [x * 1000 for x in latencies]
    return {
        "target_rate": rate,
        "achieved_rate": round(total / elapsed, 1),
        "requests": total,
        "errors": errors,
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "p999_ms": round(percentile(ms, 99.9), 3),
        "max_ms": round(max(ms), 3),
    }


def steady(
    port: int, next_path: Callable[[], str], rate: float, duration: float, connections: int = 32
) -> dict[str, Any]:
    """Open-loop latency at a constant ``rate`` (req/s)."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: dict[str, Any] = runner(_steady(port, next_path, rate, duration, connections))
    return result


# --- scenarios --------------------------------------------------------------------------------


def scenario(
    name: str,
    server: ApiServer,
    path: str,
    wrk_script: str,
    next_path: Callable[[], str] | None,
    rate: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """wrk's throughput on ``path`` (after a warm-up), then, with ``next_path``, the latency
    at a steady ``rate``."""
    print(f"\n== {name}", flush=True)
    connections, threads = args.connections, args.threads
    wrk(server.url(path), connections, min(3.0, args.duration), wrk_script, threads)  # warm-up
    throughput = wrk(server.url(path), connections, args.duration, wrk_script, threads)
    print(
        f"  wrk -t{threads} -c{connections} -d{args.duration:g}s: "
        f"{throughput['requests_per_s']:,} req/s, p99 {throughput['p99_ms']:.2f} ms, "
        f"errors {throughput['errors']}",
        flush=True,
    )
    result: dict[str, Any] = {"path": path, "throughput": throughput}
    if next_path is None:
        return result
    time.sleep(1)
    duration = args.steady_duration or args.duration
    latency = steady(server.port, next_path, rate, duration)
    print(
        f"  steady {rate:g} req/s: p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f}"
        f" ms, p99.9 {latency['p999_ms']:.2f} ms, max {latency['max_ms']:.2f} ms, "
        f"errors {latency['errors']}",
        flush=True,
    )
    result["steady"] = latency
    return result


def measure_ceiling(env: dict[str, str], log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The bare uvicorn ceiling's throughput with the same wrk settings."""
    server = ApiServer(env, args.workers, log, command=ceiling_command)
    try:
        return scenario(
            "ceiling: constant JSON from a bare ASGI app (uvicorn, httptools, uvloop)",
            server,
            "/v1/leaderboards/day?limit=10",
            "",
            None,
            0.0,
            args,
        )
    finally:
        server.stop()


def add_ratios(results: dict[str, Any]) -> None:
    """Each Redis scenario's throughput as a share of the ceiling's (mean of its two runs)."""
    runs = [results[key]["throughput"]["requests_per_s"] for key in ("ceiling", "ceiling_after")]
    ceiling = sum(runs) / len(runs)
    results["ceiling_requests_per_s"] = round(ceiling)
    results["ratios"] = {}
    for key, target in TARGETS.items():
        if key in results:
            ratio = round(results[key]["throughput"]["requests_per_s"] / ceiling, 3)
            results[key]["ratio_to_ceiling"] = ratio
            results["ratios"][key] = {"ratio": ratio, "target": target, "met": ratio >= target}


def _summary(results: dict[str, Any]) -> str:
    lines = [
        f"\n{results['users']:,} users, {results['workers']} uvicorn worker(s), "
        f"wrk -t{results['threads']} -c{results['connections']}; load average before "
        f"{results['load_average_before'][0]}, after {results['load_average_after'][0]}",
        f"{'scenario':<34} {'req/s (wrk)':>12} {'ratio':>6} {'steady rate':>12} "
        f"{'p50 ms':>8} {'p99 ms':>8}",
    ]
    for key, label in (
        ("ceiling", "ceiling (bare uvicorn), before"),
        ("top10", "top 10, Redis"),
        ("board_top10", "top 10 (declared board), Redis"),
        ("user_rank", "user rank +-5, Redis"),
        ("ceiling_after", "ceiling (bare uvicorn), after"),
        ("fallback_top10", "top 10, PostgreSQL fallback"),
    ):
        if key in results:
            t = results[key]["throughput"]
            ratio = results[key].get("ratio_to_ceiling")
            line = f"{label:<34} {t['requests_per_s']:>12,} {ratio or '':>6}"
            if "steady" in results[key]:
                s = results[key]["steady"]
                line += f" {s['target_rate']:>12g} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f}"
            lines.append(line)
    for key, r in results.get("ratios", {}).items():
        lines.append(
            f"{key}: {r['ratio']:.3f} of the ceiling (target {r['target']}: "
            f"{'met' if r['met'] else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument(
        "--steady-duration",
        type=float,
        default=0.0,
        help="seconds of each steady-rate measurement (default: --duration)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="steady req/s (default 1000)")
    parser.add_argument(
        "--fallback-rate",
        type=float,
        default=0.0,
        help="steady req/s for the PostgreSQL fallback (default: half the "
        "throughput wrk measured for it)",
    )
    parser.add_argument(
        "--no-fallback", action="store_true", help="skip the PostgreSQL fallback scenario"
    )
    parser.add_argument("--access-log", action="store_true", help="keep the access log on")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default="api", help="results name (bench/results/NAME.json)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "bench_api: wrk not found; install it (Debian/Ubuntu: apt-get install wrk; "
            "macOS: brew install wrk)",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(machine(), indent=2))
    logs = Path(tempfile.mkdtemp(prefix="bench-api-"))
    results: dict[str, Any] = {
        # Other work on the machine skews every number: say how busy it was.
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "users": args.users,
        "workers": args.workers,
        "threads": args.threads,
        "connections": args.connections,
        "duration_s": args.duration,
        "access_log": args.access_log,
        "command": " ".join([".venv/bin/python", "bench/bench_api.py", *sys.argv[1:]]),
        "revision": _revision(),
    }
    with throwaway_servers() as (pg, rd):
        dsn = pg.create_database("bench_api")
        env = api_env(dsn, rd.url(), "bench_api", access_log=args.access_log)
        migrate(env)
        started = time.monotonic()
        rows = load_data(dsn, args.users, args.seed)
        print(
            f"loaded {args.users:,} users, {rows:,} pomodoros in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        built = build_redis(env, dsn, rd.url(), logs / "projector.log")
        print(f"projector built Redis in {built:.1f} s", flush=True)
        results.update(pomodoros=rows, redis_build_s=round(built, 1))

        results["ceiling"] = measure_ceiling(env, logs / "ceiling.log", args)
        rng = random.Random(args.seed)
        server = ApiServer(env, args.workers, logs / "api.log")
        try:
            first = server.get(TOP10)
            assert first["source"] == "redis" and first["total"] == args.users, first
            declared = server.get(BOARD_TOP10)
            assert declared["source"] == "redis" and declared["total"] == args.users, declared
            user_path = f"/v1/leaderboards/day/users/u{args.users // 2:06d}?around=5"
            assert len(server.get(user_path)["above"]) == 5
            results["top10"] = scenario(
                "top 10 of the current day (Redis)",
                server,
                TOP10,
                "",
                lambda: TOP10,
                args.rate,
                args,
            )
            results["board_top10"] = scenario(
                "top 10 of the current day, declared board's route (Redis)",
                server,
                BOARD_TOP10,
                "",
                lambda: BOARD_TOP10,
                args.rate,
                args,
            )
            results["user_rank"] = scenario(
                "a random user's rank with 5 neighbours (Redis)",
                server,
                "/v1/leaderboards/day/users/u000001?around=5",
                _WRK_RANDOM_USER.replace("{users}", str(args.users)),
                lambda: f"/v1/leaderboards/day/users/u{rng.randint(1, args.users):06d}?around=5",
                args.rate,
                args,
            )
        finally:
            server.stop()
        results["ceiling_after"] = measure_ceiling(env, logs / "ceiling.log", args)
        add_ratios(results)

        if not args.no_fallback:
            results["fallback_top10"] = fallback(env, logs, args)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    save(args.output, results)
    print(_summary(results))
    print(f"logs in {logs}")
    return 0


def fallback(env: dict[str, str], logs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The top 10 from PostgreSQL: the API started with Redis unreachable (a port nobody
    listens on)."""
    env = {**env, "PROJECTOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    server = ApiServer(env, args.workers, logs / "api-fallback.log")
    try:
        assert server.get(TOP10)["source"] == "postgres"
        print("\n== top 10 of the current day (PostgreSQL fallback, Redis down)", flush=True)
        connections, threads = args.connections, args.threads
        wrk(server.url(TOP10), connections, min(3.0, args.duration), "", threads)
        throughput = wrk(server.url(TOP10), connections, args.duration, "", threads)
        print(
            f"  wrk -t{threads} -c{connections} -d{args.duration:g}s: "
            f"{throughput['requests_per_s']:,} req/s, p99 {throughput['p99_ms']:.1f} ms, "
            f"errors {throughput['errors']}",
            flush=True,
        )
        rate = args.fallback_rate or max(1.0, round(throughput["requests_per_s"] / 2))
        time.sleep(1)
        latency = steady(server.port, lambda: TOP10, rate, args.steady_duration or args.duration)
        print(
            f"  steady {rate:g} req/s: p50 {latency['p50_ms']:.1f} ms, p99 "
            f"{latency['p99_ms']:.1f} ms, errors {latency['errors']}",
            flush=True,
        )
        return {"path": TOP10, "throughput": throughput, "steady": latency}
    finally:
        server.stop()


def _revision() -> str:
    """The commit the API was served from (with ``+`` when the tree has changes)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "api"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + ("+" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
