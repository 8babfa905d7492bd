"""Shared benchmark plumbing: throwaway servers, the machine description, saving results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from harness import servers

ROOT = Path(__file__).resolve().parents[1]
# The source tree whose projector the benchmarks run: this one, or another checkout
# (bench/compare.py runs two commits in alternating rounds).
TREE = Path(os.environ.get("BENCH_TREE") or ROOT)
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    pg = subprocess.run(
        [str((servers.find_postgres_bindir() or Path("/usr/bin")) / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    rd = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgres": pg,
        "redis": rd.split(" sha=")[0],
        "platform": platform.platform(),
    }


@contextmanager
def throwaway_servers() -> Iterator[tuple[servers.PostgresServer, servers.RedisServer]]:
    """A PostgreSQL (wal_level=logical) and a Redis for one benchmark run."""
    pg = servers.postgres_for_tests()
    rd = servers.redis_for_tests()
    pg.start()
    rd.start()
    try:
        yield pg, rd
    finally:
        pg.cleanup()
        rd.cleanup()


def save(name: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and print where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path.relative_to(ROOT)}")
    return path


def migrate(env: dict[str, str], log: Path | None = None) -> None:
    """``projector migrate`` with ``env``; its log goes to ``log`` (else to stderr)."""
    with log.open("ab") if log is not None else nullcontext() as stderr:
        subprocess.run(
            [sys.executable, "-m", "projector", "migrate"],
            env=env,
            cwd=TREE,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def api_env(pg_dsn: str, redis_url: str, name: str, *, access_log: bool = False) -> dict[str, str]:
    """The environment of the projector and the API for a read benchmark named ``name``
    (its slot and publication), keys under ``pomo:`` in UTC, quiet logs."""
    env = dict(os.environ)
    env.update(
        PROJECTOR_PG_DSN=pg_dsn,
        PROJECTOR_REDIS_URL=redis_url,
        PROJECTOR_SLOT=name,
        PROJECTOR_PUBLICATION=name,
        PROJECTOR_KEY_PREFIX="pomo:",
        PROJECTOR_TIMEZONE="UTC",
        PROJECTOR_LOG_LEVEL="warning",
        PROJECTOR_API_ACCESS_LOG="true" if access_log else "false",
    )
    return env


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]
