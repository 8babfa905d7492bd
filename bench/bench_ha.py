"""High-availability benchmarks: takeover by a hot standby, and what a Redis replica costs.

Run: ``.venv/bin/python bench/bench_ha.py`` (``--only takeover,pause,freshness,catch-up,api``
runs part of it; the API part needs ``wrk``: ``apt-get install wrk``). Starts its own
PostgreSQL, a single Redis and a Sentinel topology (harness/redis_topology.py: a master, one
replica and three Sentinels, local redis-server processes), prints the numbers and saves
``bench/results/ha.json`` with the parameters, the machine and its load average (other work
on a shared machine skews every number).

- takeover: ``--processes`` (2) ``projector run`` processes against one slot, on the Sentinel
  topology with PROJECTOR_REDIS_MIN_REPLICAS=1 and the default PROJECTOR_TAKEOVER_TIMEOUT
  (5 s). ``--kills`` (20) times: kill -9 the active one (the process the fencing token in
  Redis names, whose log says ``active`` last), at once commit a single-row pomodoro every
  10 ms, and time from the kill to the first of those commits being visible on the Redis
  master (a probe member's all-time score); then start the killed process again and wait
  until it stands by. p50 / p90 / max seconds; target <= 10 s. Each kill also records when
  the new active's log said ``active`` (it holds the slot's lock) and ``streaming``.
- pause: the same with SIGSTOP instead of kill -9 (``--pauses``, 5). PostgreSQL ends the
  frozen process's lock session after PROJECTOR_TAKEOVER_TIMEOUT, so expect about that
  plus the standby's poll (<= 1 s); the lock's session may have been idle up to a third of
  that already. Then SIGCONT: the time until the woken process logs ``standby`` again
  (what it logged meanwhile is kept; ``woken_decided_to_rebuild`` counts the times it
  concluded Redis had to be rebuilt, which it would then do at its next takeover), then
  kill -9 and a fresh standby. After the takeovers, ``projector verify``: Redis must equal
  PostgreSQL.
- freshness: ``--rate`` (1,000) single-row commits/s for ``--seconds`` (20), latency from a
  commit returning to the pomodoro being visible on the master (bench_projector's method);
  with the Sentinel topology and MIN_REPLICAS=1 (the watcher also polls the replica, in
  turn with the master: latency to the replica too), the same with MIN_REPLICAS=0, and
  the single Redis without a replica. p50 / p99 / max ms; target p99 <= 5 ms with the
  replica and MIN_REPLICAS=1.
- catch-up: bench_projector's backlog (``--transactions`` 10,000 x ``--rows-per-tx`` 100,
  100,000 users over 400 days) projected into the single Redis, and into the Sentinel
  topology with MIN_REPLICAS=1; rows/s of each and their ratio (target >= 0.80), with the
  CPU per row of the master, the replica and the projector, and the longest batch script
  (Redis SLOWLOG). Also the topology with MIN_REPLICAS=0, which tells the cost of
  replicating from the cost of waiting for it.
- api: bench_api's top-10 scenario (wrk with 32 connections for ``--api-duration`` s, then
  1,000 req/s on a fixed schedule) over ``--api-users`` (100,000) users, the API on the
  Sentinel topology with PROJECTOR_API_READ_FROM_REPLICAS=false, then true; req/s of each,
  the share of answers the replica gave (from the API's ``api_replica_reads_total``), and
  the Redis CPU each node spent.

``--rounds N`` repeats freshness, catch-up and api N times, alternating the variants, and
reports the median run of each variant and, for a ratio, the median of the rounds' ratios
(the two runs of a round are made one after the other, so a drift in the machine's load
between rounds cancels out). The Sentinels call a master down after ``--sentinel-down-after-ms``
(5,000) without an answer: the failover tests' 1,000 ms is shorter than a catch-up script
on a busy 2-core machine, and the catch-up would then measure failovers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from bench_api import TOP10, ApiServer, build_redis, load_data, scenario
from bench_projector import (
    PROJECTOR,
    bootstrap,
    catch_up,
    freshness,
    projector_env,
)
from common import ROOT, api_env, migrate, percentile, save, throwaway_servers

from harness import servers
from harness.redis_topology import RedisNode, SentinelTopology

SECTIONS = ("takeover", "pause", "freshness", "catch-up", "api")
BOARD = "pomo:lb:pomodoros:all:all"
PREFIX = "pomo:"
# Redis databases: each section starts on an empty one.
_DB = {"takeover": 1, "freshness": 2, "catch-up": 3, "api": 4}
TARGETS = {
    "takeover_p90_s": 10,
    "takeover_max_s": 10,
    "freshness_min_replicas_p99_ms": 5,
    "catch_up_ratio": 0.80,
}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _sentinel_env(topology: SentinelTopology, min_replicas: int) -> dict[str, str]:
    """Projector settings for the topology: the master is found through the Sentinels."""
    return {
        "PROJECTOR_REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in topology.sentinels),
        "PROJECTOR_REDIS_SENTINEL_MASTER": topology.master_name,
        "PROJECTOR_REDIS_MIN_REPLICAS": str(min_replicas),
    }


def _replica(topology: SentinelTopology) -> RedisNode:
    return topology.node_at(topology.replicas()[0])


def _node_cpu(node: RedisNode) -> float:
    info = node.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _empty(url: str) -> redis.Redis:
    """A client of the database at ``url``, emptied first."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    return client


# --- several projectors on one slot -----------------------------------------------------------


class Fleet:
    """``projector run`` processes against one slot, each start with a JSON log of its own.

    Which one is active: the one whose pid the fencing token in Redis names (``host:pid:..``),
    provided its own log says ``active`` last and ``streaming`` since.
    """

    def __init__(self, env: dict[str, str], logs: Path, count: int, client: redis.Redis) -> None:
        self.env = {**env, "PROJECTOR_LOG_LEVEL": "info", "PROJECTOR_LOG_FORMAT": "json"}
        self.logs = logs
        self.client = client
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.log_paths: list[Path] = [logs / "unused"] * count
        self._starts = 0

    def start(self, index: int) -> None:
        self._starts += 1
        path = self.logs / f"projector-{index}-{self._starts:03d}.log"
        self.log_paths[index] = path
        with path.open("wb") as log:
            self.procs[index] = subprocess.Popen(
                PROJECTOR, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log
            )

    def pid(self, index: int) -> int:
        proc = self.procs[index]
        assert proc is not None
        return proc.pid

    def events(self, index: int) -> list[dict[str, Any]]:
        """The process's log events, oldest first (lines that are not JSON skipped)."""
        found = []
        for line in self.log_paths[index].read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def role(self, index: int) -> tuple[str | None, bool]:
        """The process's last role (``active``/``standby``) and whether it streams since."""
        role, streaming = None, False
        for event in self.events(index):
            name = event.get("event")
            if name in ("active", "standby"):
                role, streaming = name, False
            elif name == "streaming":
                streaming = True
        return role, streaming

    def owner_pid(self) -> int | None:
        raw = self.client.get(f"{PREFIX}owner")
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return int(text.split(":")[-2])

    def owner(self) -> int | None:
        """The index of the process the fencing token names, if one of ours."""
        owner = self.owner_pid()
        for index, proc in enumerate(self.procs):
            if proc is not None and proc.pid == owner:
                return index
        return None

    def settled(self) -> int | None:
        """The active process's index once one streams, holds the token and the other
        started ones stand by; else None."""
        owner = self.owner_pid()
        active = None
        for index, proc in enumerate(self.procs):
            if proc is None:
                continue
            if proc.poll() is not None:
                return None
            role, streaming = self.role(index)
            if role == "active" and streaming and proc.pid == owner:
                active = index
            elif role != "standby":
                return None
        return active

    def wait_settled(self, timeout: float = 90.0) -> int:
        deadline = time.monotonic() + timeout
        while (active := self.settled()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no settled active/standby set within {timeout:g} s{self.tails()}"
                )
            time.sleep(0.05)
        return active

    def wait_role(self, index: int, role: str, timeout: float) -> float:
        """Seconds until the process's last role is ``role``."""
        started = time.monotonic()
        while self.role(index)[0] != role:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"process {index} did not log {role!r}{self.tails()}")
            time.sleep(0.02)
        return time.monotonic() - started

    def first_event_after(self, index: int, name: str, wall: float) -> float | None:
        """Seconds from ``wall`` (time.time()) to the process's first ``name`` event after it."""
        for event in self.events(index):
            if event.get("event") == name:
                at = datetime.fromisoformat(str(event["timestamp"])).timestamp()
                if at >= wall:
                    return round(at - wall, 3)
        return None

    def reap(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None:
            proc.wait(30)

    def tails(self) -> str:
        out = []
        for index, path in enumerate(self.log_paths):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-8:]
                out.append(f"\n--- process {index} ({path}):\n" + "\n".join(lines))
        return "".join(out)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def _fleet(env: dict[str, str], logs: Path, count: int, client: redis.Redis) -> Iterator[Fleet]:
    fleet = Fleet(env, logs, count, client)
    try:
        for index in range(count):
            fleet.start(index)
            if index == 0:  # the first builds Redis; the others then stand by
                fleet.wait_settled()
        yield fleet
    finally:
        fleet.stop_all()


def _commit_until_visible(
    conn: psycopg.Connection[Any],
    client: redis.Redis,
    member: str,
    since: float,
    interval: float,
    timeout: float,
) -> float:
    """Commit a pomodoro of ``member`` every ``interval`` s until one is visible in Redis;
    return the seconds from ``since`` (time.monotonic()) to seeing it."""
    next_commit = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_commit:
            conn.execute("INSERT INTO pomodoros (user_id) VALUES (%s)", (member,))
            next_commit += interval
        if client.zscore(BOARD, member):
            return time.monotonic() - since
        if now - since > timeout:
            raise TimeoutError(f"no commit of {member} visible within {timeout:g} s")
        time.sleep(max(0.0, min(0.002, next_commit - time.monotonic())))


def _takeovers(
    fleet: Fleet,
    conn: psycopg.Connection[Any],
    client: redis.Redis,
    count: int,
    interval: float,
    freeze: bool,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """``count`` takeovers from an active process killed (or frozen, then woken and killed)."""
    label = "pause" if freeze else "kill"
    runs = []
    for n in range(count):
        active = fleet.wait_settled()
        # The active one demonstrably applies commits before it goes.
        _commit_until_visible(conn, client, f"ha-{label}-ready-{n}", time.monotonic(), 1, 60)
        # A standby polls the lock every second from its start, and the fleet has just
        # settled on a fresh standby's first poll: strike at a random phase of that cycle,
        # not always just after a poll (which would measure the worst case every time).
        time.sleep(rng.uniform(1.0, 3.0))
        pid = fleet.pid(active)
        wall, since = time.time(), time.monotonic()
        os.kill(pid, signal.SIGSTOP if freeze else signal.SIGKILL)
        took = _commit_until_visible(conn, client, f"ha-{label}-{n}", since, interval, 120)
        new = fleet.owner()
        run: dict[str, Any] = {
            "seconds": round(took, 3),
            "new_active_locked_s": None
            if new is None
            else fleet.first_event_after(new, "active", wall),
            "new_active_streaming_s": (
                None if new is None else fleet.first_event_after(new, "streaming", wall)
            ),
        }
        if freeze:
            seen = len(fleet.events(active))
            os.kill(pid, signal.SIGCONT)
            run["woken_standby_s"] = round(fleet.wait_role(active, "standby", 60), 3)
            run["woken_logged"] = [
                f"{e.get('event')}: {e.get('error') or e.get('reason') or ''}"[:200]
                for e in fleet.events(active)[seen:]
            ]
            os.kill(pid, signal.SIGKILL)
        fleet.reap(active)
        fleet.start(active)
        print(
            f"  {label} {n + 1}/{count}: visible after {took:.2f} s (lock after "
            f"{run['new_active_locked_s']} s, streaming after {run['new_active_streaming_s']} s)"
            + (f"; woken one stood by after {run['woken_standby_s']} s" if freeze else ""),
            flush=True,
        )
        runs.append(run)
    fleet.wait_settled()
    return runs


def _summary_s(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [run["seconds"] for run in runs]
    return {
        "count": len(seconds),
        "p50_s": round(percentile(seconds, 50), 3),
        "p90_s": round(percentile(seconds, 90), 3),
        "max_s": round(max(seconds), 3),
    }


def _verify(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "projector", "verify", "--json"],
        env={**env, "PROJECTOR_LOG_LEVEL": "warning"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if not done.stdout.strip():
        return {"exit_code": done.returncode, "stderr": done.stderr[-2000:]}
    report: dict[str, Any] = json.loads(done.stdout)
    return {
        "exit_code": done.returncode,
        "in_sync": report["in_sync"],
        "members_checked": report["members_checked"],
        "drift": report["drift"][:5],
    }


def takeover(
    pg_dsn: str, topology: SentinelTopology, logs: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """kill -9 (and SIGSTOP) takeovers; see the module's doc."""
    master_url = topology.master().url(_DB["takeover"])
    client = _empty(master_url)
    env = projector_env(pg_dsn, master_url, **_sentinel_env(topology, 1))
    if args.takeover_timeout:
        env["PROJECTOR_TAKEOVER_TIMEOUT"] = str(args.takeover_timeout)
    migrate(env)
    result: dict[str, Any] = {"processes": args.processes, "commit_interval_s": args.interval}
    rng = random.Random(args.seed)
    with (
        _fleet(env, logs, args.processes, client) as fleet,
        psycopg.connect(pg_dsn, autocommit=True) as conn,
    ):
        if "takeover" in args.only:
            print(f"\n== takeover: kill -9 the active of {args.processes} processes", flush=True)
            runs = _takeovers(fleet, conn, client, args.kills, args.interval, False, rng)
            result["kill"] = {**_summary_s(runs), "runs": runs}
            s = result["kill"]
            print(f"  kill -9: p50 {s['p50_s']} s, p90 {s['p90_s']} s, max {s['max_s']} s")
        if "pause" in args.only:
            print(f"\n== takeover: SIGSTOP the active of {args.processes} processes", flush=True)
            runs = _takeovers(fleet, conn, client, args.pauses, args.interval, True, rng)
            # A woken former active should just stand by; one that concluded "rebuild"
            # carries that into its next turn as the active (see the report).
            rebuilds = sum(
                any(line.startswith("rebuilding Redis") for line in run["woken_logged"])
                for run in runs
            )
            result["pause"] = {
                **_summary_s(runs),
                "woken_decided_to_rebuild": rebuilds,
                "runs": runs,
            }
            s = result["pause"]
            print(f"  SIGSTOP: p50 {s['p50_s']} s, p90 {s['p90_s']} s, max {s['max_s']} s")
        result["verify"] = _verify(fleet.env)
        print(f"  verify after the takeovers: {result['verify']}", flush=True)
    return result


# --- freshness and catch-up with a replica ----------------------------------------------------


def _variant_redis(
    variant: str, rd_url: str, topology: SentinelTopology, section: str
) -> tuple[str, dict[str, str]]:
    """The Redis URL and projector settings of a variant: the single node, or the
    topology's master through the Sentinels with MIN_REPLICAS 1 (0: ``sentinel_no_wait``)."""
    if variant == "single":
        return rd_url, {}
    extra = _sentinel_env(topology, 0 if variant == "sentinel_no_wait" else 1)
    return topology.master().url(_DB[section]), extra


def _fresh_run(
    variant: str,
    pg: servers.PostgresServer,
    rd_url: str,
    topology: SentinelTopology,
    log: Path,
    args: argparse.Namespace,
    round_: int,
) -> dict[str, Any]:
    dsn = pg.create_database(f"ha_fresh_{variant}_{round_}")
    url, extra = _variant_redis(variant, rd_url, topology, "freshness")
    replica_url = None if variant == "single" else _replica(topology).url(_DB["freshness"])
    client = _empty(url)
    print(f"\n== freshness, {_VARIANTS[variant]}", flush=True)
    bootstrap(dsn, projector_env(dsn, url, **extra), client, log)
    return freshness(dsn, url, log, args.rate, args.seconds, extra, replica_url)


def _catch_up_run(
    variant: str,
    pg: servers.PostgresServer,
    rd_url: str,
    topology: SentinelTopology,
    log: Path,
    args: argparse.Namespace,
    round_: int,
) -> dict[str, Any]:
    dsn = pg.create_database(f"ha_catchup_{variant}_{round_}")
    url, extra = _variant_redis(variant, rd_url, topology, "catch-up")
    client = _empty(url)
    print(f"\n== catch-up, {_VARIANTS[variant]}", flush=True)
    replica = None if variant == "single" else _replica(topology)
    before = _node_cpu(replica) if replica is not None else 0.0
    client.slowlog_reset()
    result = catch_up(dsn, url, log, args.transactions, args.rows_per_tx, extra_env=extra)
    # How long one batch's script held the master (SLOWLOG keeps commands over 10 ms): a
    # Sentinel that hears no PING answer for down-after-milliseconds calls the master down.
    scripts = [
        entry["duration"] / 1000
        for entry in client.slowlog_get(128)
        if bytes(entry["command"]).upper().startswith(b"EVALSHA")
    ]
    result["longest_script_ms"] = round(max(scripts, default=0.0), 1)
    if replica is not None:
        spent = _node_cpu(replica) - before
        result["replica_cpu_us_per_row"] = round(spent * 1e6 / result["rows"], 2)
    print(
        f"  longest script {result['longest_script_ms']} ms"
        + (f"; replica CPU {result['replica_cpu_us_per_row']} us/row" if replica else "")
    )
    return result


_VARIANTS = {
    "sentinel": "Sentinel topology (master + replica), PROJECTOR_REDIS_MIN_REPLICAS=1",
    "sentinel_no_wait": "Sentinel topology (master + replica), PROJECTOR_REDIS_MIN_REPLICAS=0",
    "single": "single Redis, no replica",
}


def _alternating(
    run: Callable[[str, int], dict[str, Any]], variants: tuple[str, ...], rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """Each variant once a round, in reverse order every other round (on a shared machine,
    load drifts: neither variant always goes first)."""
    out: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for round_ in range(rounds):
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            out[variant].append(run(variant, round_))
    return out


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda run: float(run[key]))
    return {**ordered[(len(ordered) - 1) // 2], "runs": len(runs)}


def _paired_ratio(
    numerators: list[dict[str, Any]], denominators: list[dict[str, Any]], key: str
) -> dict[str, Any]:
    """The median over rounds of numerator/denominator, each pair measured side by side."""
    ratios = [float(a[key]) / float(b[key]) for a, b in zip(numerators, denominators, strict=True)]
    return {"median": round(statistics.median(ratios), 3), "rounds": [round(r, 3) for r in ratios]}


# --- the API reading from replicas ------------------------------------------------------------

# name{labels} value; a label value may hold braces (route="/v1/leaderboards/{period}").
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)\s*$")


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def _scrape(server: ApiServer) -> str:
    time.sleep(1.2)  # counters reach the shared files every 0.5 s
    with urllib.request.urlopen(server.url("/metrics"), timeout=10) as response:
        text: str = response.read().decode()
    return text


def api(
    pg: servers.PostgresServer, topology: SentinelTopology, logs: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The top-10 route with and without reads from the replica; see the module's doc."""
    dsn = pg.create_database("ha_api")
    master, replica = topology.master(), _replica(topology)
    url = master.url(_DB["api"])
    _empty(url)
    env = api_env(dsn, url, "bench_api")
    env.update(_sentinel_env(topology, 1))
    migrate(env)
    rows = load_data(dsn, args.api_users, 1)
    built = build_redis(env, dsn, url, logs / "api-projector.log")
    topology.wait_replicas_in_sync()
    print(f"\n== api: {args.api_users:,} users, {rows:,} pomodoros, built in {built:.1f} s")
    options = argparse.Namespace(connections=args.connections, duration=args.api_duration)
    runs: dict[str, list[dict[str, Any]]] = {"false": [], "true": []}
    for round_ in range(args.rounds):
        for replicas in ("false", "true") if round_ % 2 == 0 else ("true", "false"):
            server = ApiServer(
                {**env, "PROJECTOR_API_READ_FROM_REPLICAS": replicas},
                args.workers,
                logs / f"api-replicas-{replicas}.log",
            )
            try:
                first = server.get(TOP10)
                assert first["source"] == "redis" and first["total"] == args.api_users, first
                before = _scrape(server)
                cpu = (_node_cpu(master), _node_cpu(replica))
                measured = scenario(
                    f"top 10, PROJECTOR_API_READ_FROM_REPLICAS={replicas}",
                    server,
                    TOP10,
                    "",
                    lambda: TOP10,
                    args.api_rate,
                    options,
                )
                master_cpu, replica_cpu = _node_cpu(master) - cpu[0], _node_cpu(replica) - cpu[1]
                after = _scrape(server)
            finally:
                server.stop()
            answered = _metric(after, "api_answers_total") - _metric(before, "api_answers_total")
            reads = {
                outcome: _metric(after, "api_replica_reads_total", outcome=outcome)
                - _metric(before, "api_replica_reads_total", outcome=outcome)
                for outcome in ("served", "behind", "failed")
            }
            measured.update(
                answers=int(answered),
                replica_reads={k: int(v) for k, v in reads.items()},
                replica_share=round(reads["served"] / answered, 4) if answered else None,
                redis_cpu_s={"master": round(master_cpu, 2), "replica": round(replica_cpu, 2)},
            )
            print(
                f"  replica served {measured['replica_share']} of {int(answered):,} answers; "
                f"Redis CPU master {master_cpu:.1f} s, replica {replica_cpu:.1f} s",
                flush=True,
            )
            runs[replicas].append(measured)
    return {
        "ratio_true_to_false": _paired_ratio(
            [r["throughput"] for r in runs["true"]],
            [r["throughput"] for r in runs["false"]],
            "requests_per_s",
        ),
        "users": args.api_users,
        "pomodoros": rows,
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.api_duration,
        "read_from_replicas_false": _median_api(runs["false"]),
        "read_from_replicas_true": _median_api(runs["true"]),
    }


def _median_api(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda run: float(run["throughput"]["requests_per_s"]))
    chosen = ordered[(len(ordered) - 1) // 2]
    return {**chosen, "all_requests_per_s": [r["throughput"]["requests_per_s"] for r in runs]}


# --- main -------------------------------------------------------------------------------------


def _report(results: dict[str, Any]) -> str:
    lines = ["\n== summary"]
    to = results.get("takeover", {})
    for kind, label in (("kill", "takeover after kill -9"), ("pause", "takeover after SIGSTOP")):
        if kind in to:
            s = to[kind]
            lines.append(
                f"{label:<40} p50 {s['p50_s']:.2f} s  p90 {s['p90_s']:.2f} s  "
                f"max {s['max_s']:.2f} s  ({s['count']} runs)"
            )
    if "verify" in to:
        lines.append(f"{'verify after the takeovers':<40} in sync: {to['verify'].get('in_sync')}")
    fr = results.get("freshness")
    if fr:
        for key, label in (
            ("sentinel_min_replicas_1", "freshness, replica, MIN_REPLICAS=1"),
            ("sentinel_min_replicas_0", "freshness, replica, MIN_REPLICAS=0"),
            ("single", "freshness, single Redis"),
        ):
            s = fr[key]
            lines.append(
                f"{label:<40} p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
                f"max {s['max_ms']:.2f} ms"
            )
    cu = results.get("catch_up")
    if cu:
        lines.append(
            f"{'catch-up, MIN_REPLICAS=1 / single':<40} "
            f"{cu['sentinel_min_replicas_1']['rows_per_second']:,} / "
            f"{cu['single']['rows_per_second']:,} rows/s; paired ratio {cu['ratio']['median']:.3f}"
        )
        lines.append(
            f"{'catch-up, MIN_REPLICAS=0 / single':<40} "
            f"{cu['sentinel_min_replicas_0']['rows_per_second']:,} / "
            f"{cu['single']['rows_per_second']:,} rows/s; paired ratio "
            f"{cu['ratio_min_replicas_0']['median']:.3f}"
        )
    ap = results.get("api")
    if ap:
        t, f = ap["read_from_replicas_true"], ap["read_from_replicas_false"]
        lines.append(
            f"{'API top 10, replica reads on / off':<40} "
            f"{t['throughput']['requests_per_s']:,} / {f['throughput']['requests_per_s']:,} req/s;"
            f" p99 at {t['steady']['target_rate']:g} req/s {t['steady']['p99_ms']:.2f} / "
            f"{f['steady']['p99_ms']:.2f} ms; replica share {t['replica_share']}; paired ratio "
            f"{ap['ratio_true_to_false']['median']:.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        default=list(SECTIONS),
        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument("--processes", type=int, default=2, help="projectors on the slot")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--pauses", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.01, help="s between probe commits")
    parser.add_argument(
        "--takeover-timeout",
        type=float,
        default=0.0,
        help="PROJECTOR_TAKEOVER_TIMEOUT for the takeovers (default: the projector's, 5 s)",
    )
    parser.add_argument("--rate", type=int, default=1_000, help="freshness commits/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="freshness duration")
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--rows-per-tx", type=int, default=100)
    parser.add_argument("--api-users", type=int, default=100_000)
    parser.add_argument("--api-duration", type=float, default=15.0)
    parser.add_argument("--api-rate", type=float, default=1_000.0)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--sentinel-down-after-ms",
        type=int,
        default=5_000,
        help="Sentinel down-after-milliseconds (default 5000; the failover tests use 1000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="when the takeovers strike")
    parser.add_argument("--output", default="", help="results name (default ha, or ha-SECTIONS)")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {SECTIONS}")
    if "api" in args.only and shutil.which("wrk") is None:
        print("bench_ha: wrk not found; install it (apt-get install wrk)", file=sys.stderr)
        return 2
    only = [s for s in SECTIONS if s in args.only]
    name = args.output or ("ha" if len(only) == len(SECTIONS) else "ha-" + "-".join(only))
    logs = Path(tempfile.mkdtemp(prefix="bench-ha-"))
    log = logs / "projector.log"
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/bench_ha.py", *sys.argv[1:]]),
        "parameters": {k: v for k, v in vars(args).items() if k != "output"},
        "load_average_before": _load(),
    }
    print(f"logs in {logs}", flush=True)
    # Sentinel's failure detection as in production, not as in the failover tests (1 s): a
    # catch-up script holds the master for up to ~1 s here, and a master silent for
    # down-after-milliseconds is failed over (see --sentinel-down-after-ms).
    topology = SentinelTopology(down_after_ms=args.sentinel_down_after_ms)
    with throwaway_servers() as (pg, rd), topology:
        if "takeover" in only or "pause" in only:
            dsn = pg.create_database("ha_takeover")
            results["takeover"] = takeover(dsn, topology, logs, args)
            results["takeover"]["load_average"] = _load()
        if "freshness" in only:
            fresh = _alternating(
                lambda v, r: _fresh_run(v, pg, rd.url(_DB["freshness"]), topology, log, args, r),
                ("sentinel", "sentinel_no_wait", "single"),
                args.rounds,
            )
            results["freshness"] = {
                "sentinel_min_replicas_1": _median_run(fresh["sentinel"], "p99_ms"),
                "sentinel_min_replicas_0": _median_run(fresh["sentinel_no_wait"], "p99_ms"),
                "single": _median_run(fresh["single"], "p99_ms"),
                "all_p50_ms": {k: [r["p50_ms"] for r in v] for k, v in fresh.items()},
                "all_p99_ms": {k: [r["p99_ms"] for r in v] for k, v in fresh.items()},
                "load_average": _load(),
            }
        if "catch-up" in only:
            caught = _alternating(
                lambda v, r: _catch_up_run(v, pg, rd.url(_DB["catch-up"]), topology, log, args, r),
                ("sentinel", "sentinel_no_wait", "single"),
                args.rounds,
            )
            sentinel = _median_run(caught["sentinel"], "rows_per_second")
            no_wait = _median_run(caught["sentinel_no_wait"], "rows_per_second")
            single = _median_run(caught["single"], "rows_per_second")
            results["catch_up"] = {
                "sentinel_min_replicas_1": sentinel,
                "sentinel_min_replicas_0": no_wait,
                "single": single,
                # Each round's ratio of runs made one after the other (the machine's load
                # drifts between rounds), then the median of those.
                "ratio": _paired_ratio(caught["sentinel"], caught["single"], "rows_per_second"),
                "ratio_min_replicas_0": _paired_ratio(
                    caught["sentinel_no_wait"], caught["single"], "rows_per_second"
                ),
                "all_rows_per_second": {
                    k: [r["rows_per_second"] for r in v] for k, v in caught.items()
                },
                "load_average": _load(),
            }
        if "api" in only:
            results["api"] = api(pg, topology, logs, args)
            results["api"]["load_average"] = _load()
    results["load_average_after"] = _load()
    results["targets"] = TARGETS
    save(name, results)
    print(_report(results))
    print(f"logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
