"""Top-10 throughput of the read API at another revision and at this work tree, interleaved.

Run: ``.venv/bin/python bench/compare_api.py --base REV`` (default ``main``). On a shared
machine absolute numbers drift with the load of other work; alternating short ``wrk`` runs
of the two versions against the same servers and data compares them under the same load.
The base revision is exported with ``git archive`` into a temporary directory and served
from there (``python -m api`` runs the code of its working directory). Besides requests per
second it reports the CPU time the API processes spent per request (from /proc), which other
work on the machine disturbs far less. Same data and settings as ``bench_api.py``; prints
each round and saves ``bench/results/api_compare.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_api import _WRK_RANDOM_USER, TOP10, build_redis, load_data, wrk
from common import ROOT, api_env, migrate, save, throwaway_servers

from harness.servers import free_port


def _serve(env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/healthz"], check=False
    ).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the API in {cwd} did not start; see {log}")
        time.sleep(0.1)
    time.sleep(1.0)  # both workers up
    return proc, port


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its children, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument(
        "--scenario",
        choices=("top10", "user_rank"),
        default="top10",
        help="the day's top 10, or a random user's rank with 5 neighbours (bench_api.py's)",
    )
    parser.add_argument("--output", default="api_compare", help="bench/results/NAME.json")
    args = parser.parse_args(argv)
    if args.scenario == "top10":
        path, script = TOP10, ""
    else:
        path = "/v1/leaderboards/day/users/u000001?around=5"
        script = _WRK_RANDOM_USER.replace("{users}", str(args.users))
    logs = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    base = logs / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.base], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    versions = {f"base ({args.base})": base, f"this tree ({head}+)": ROOT}
    rounds: dict[str, list[int]] = {name: [] for name in versions}
    cpu_us: dict[str, list[float]] = {name: [] for name in versions}
    with throwaway_servers() as (pg, rd):
        dsn = pg.create_database("bench_compare")
        env = api_env(dsn, rd.url(), "bench_compare")
        migrate(env)
        load_data(dsn, args.users, 1)
        build_redis(env, dsn, rd.url(), logs / "projector.log")
        for index in range(args.rounds):
            for name, cwd in versions.items():
                proc, port = _serve(env, cwd, logs / f"api-{cwd.name}.log")
                try:
                    url = f"http://127.0.0.1:{port}{path}"
                    wrk(url, 32, 2.0, script)  # warm-up
                    before = _cpu_seconds(proc.pid)
                    result = wrk(url, 32, args.duration, script)
                    spent = _cpu_seconds(proc.pid) - before
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(30)
                rounds[name].append(result["requests_per_s"])
                cpu_us[name].append(round(spent / result["requests"] * 1e6, 1))
                print(
                    f"round {index + 1} {name:<24} {result['requests_per_s']:>7,} req/s, "
                    f"{cpu_us[name][-1]:6.1f} us CPU per request (load "
                    f"{os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    means = {name: sum(values) / len(values) for name, values in rounds.items()}
    cpu = {name: sum(values) / len(values) for name, values in cpu_us.items()}
    first, second = means.values()
    change = round(100 * (second - first) / first, 1)
    cpu_first, cpu_second = cpu.values()
    cpu_change = round(100 * (cpu_second - cpu_first) / cpu_first, 1)
    results: dict[str, Any] = {
        "path": path,
        "scenario": args.scenario,
        "users": args.users,
        "workers": 2,
        "connections": 32,
        "duration_s": args.duration,
        "rounds": rounds,
        "mean_requests_per_s": {name: round(mean) for name, mean in means.items()},
        "change_percent": change,
        "cpu_us_per_request": cpu_us,
        "mean_cpu_us_per_request": {name: round(value, 1) for name, value in cpu.items()},
        "cpu_change_percent": cpu_change,
        "command": " ".join([".venv/bin/python", "bench/compare_api.py", *sys.argv[1:]]),
    }
    save(args.output, results)
    print(
        f"{args.scenario}, mean of {args.rounds} rounds: "
        + ", ".join(f"{n} {means[n]:,.0f} req/s and {cpu[n]:.1f} us CPU" for n in means)
        + f"; throughput {change:+.1f}%, CPU per request {cpu_change:+.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
