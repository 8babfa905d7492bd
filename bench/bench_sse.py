"""Live-board fan-out benchmark: 10,000 Server-Sent Events clients, 2 API workers, 50 commits/s.

Run: ``.venv/bin/python bench/bench_sse.py`` (or ``make bench``). Starts its own PostgreSQL
and Redis, ``projector run`` and ``python -m api --workers 2`` (access log off; the event-stream
caps raised for the benchmark's single client address, and saved with the results), then:

- ``--client-procs`` load-generator processes (separate from the API; uvloop, raw asyncio
  sockets, fd limit raised) open ``--clients`` streams between them, 80% on today's top 10
  and 20% on this week's;
- this process commits ``--rate`` single-pomodoro transactions per second for ``--duration``
  seconds, each for one of ten users, so that every commit changes both boards, and records
  when each commit returned and its end LSN (``pg_current_wal_lsn()`` right after it);
- each client notes when each event arrives and its ``id`` (the watermark LSN); a commit's
  latency at a client is the arrival of the first event whose LSN covers it, minus the time
  the commit returned (same machine, same clock).

Reports p50/p90/p99/max over every (client, commit) pair (to 0.1 ms), events received,
clients dropped (a stream that ended or never connected), and the CPU that each part used
during the commits: the API workers, the projector and the load generator itself (if it ran
out of CPU, its own latency would count). ``--reference TREE`` first runs the same load
against the API of another source tree (e.g. ``git archive`` of main), on the same servers,
and reports both. ``--py-spy`` profiles the API workers during the commits. Prints the numbers
and saves ``bench/results/sse.json``. Target: p99 <= 250 ms and no client dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from bench_api import ApiServer
from common import ROOT, api_env, machine, migrate, save, throwaway_servers

from projector.core.lsn import parse_lsn

USERS = [f"bench{i}" for i in range(10)]
PATHS = ("/v1/leaderboards/day/events?limit=10", "/v1/leaderboards/week/events?limit=10")
# Latencies are counted in buckets of 0.1 ms up to 60 s (the last bucket holds anything later).
_BUCKETS_PER_MS = 10
_LAST_BUCKET = 60_000 * _BUCKETS_PER_MS
_CONNECTING_AT_ONCE = 100
_POLL_PAUSE = 0.005
_READ_SIZE = 65_536
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it from 3.14
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_TICKS = os.sysconf("SC_CLK_TCK")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65_536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- a load-generator process -----------------------------------------------------------------


class _Stream:
    """One SSE connection; records the id of the newest event of each read and when the
    kernel received its last byte (the read's ``SO_TIMESTAMPNS``): the events of one read
    arrived no later than that, and the newest covers the older ones."""

    __slots__ = ("ids", "last", "lost", "sock", "status_ok", "tail", "times")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ids: list[bytes] = []
        self.times: array[float] = array("d")
        self.tail = b""
        self.last = b""
        self.lost = False
        self.status_ok = False

    def read(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(_READ_SIZE, _ANCILLARY_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        if not data:
            self.lost = True
            return
        received = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                received = seconds + nanoseconds / 1e9
        if not self.status_ok:
            self.status_ok = data.startswith(b"HTTP/1.1 200")
        # Every event's "id: " line follows a newline (of the chunk header or of the event
        # before); the tail keeps an id line cut at the end of a read for the next one.
        text = self.tail + data if self.tail else data
        self.tail = text[-64:]
        at = text.rfind(b"\nid: ")
        while at >= 0:
            end = text.find(b"\n", at + 5)
            if end >= 0:
                ident = text[at + 5 : end]
                if ident != self.last:
                    self.last = ident
                    self.ids.append(ident)
                    self.times.append(received)
                return
            at = text.rfind(b"\nid: ", 0, at)


class _LoadGenerator:
    """``count`` streams read by one epoll loop that wakes every ``_POLL_PAUSE`` seconds at
    most: a read's arrival time comes from the kernel, so reading late costs no accuracy, and
    the load generator takes no wake-up per event from the CPU the API needs."""

    def __init__(self, port: int, count: int, first: int) -> None:
        self.port = port
        self.count = count
        self.first = first
        self.streams: list[_Stream] = []
        self.failed = 0
        self.poll = select.epoll()
        self.by_fd: dict[int, _Stream] = {}

    def open(self) -> None:
        """Connect in batches, each waited for until every stream had its first event."""
        for start in range(0, self.count, _CONNECTING_AT_ONCE):
            batch = []
            for index in range(start, min(self.count, start + _CONNECTING_AT_ONCE)):
                path = PATHS[0] if (self.first + index) % 5 else PATHS[1]
                request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                    sock.sendall(request.encode())
                    sock.setblocking(False)
                except OSError:
                    self.failed += 1
                    continue
                stream = _Stream(sock)
                self.streams.append(stream)
                self.by_fd[sock.fileno()] = stream
                self.poll.register(sock.fileno(), select.EPOLLIN)
                batch.append(stream)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(not s.ids and not s.lost for s in batch):
                self.read_ready(0.05)

    def read_ready(self, timeout: float) -> None:
        by_fd = self.by_fd
        for fd, _ in self.poll.poll(timeout):
            stream = by_fd[fd]
            stream.read()
            if stream.lost:
                self.poll.unregister(fd)
                del by_fd[fd]

    def run_until(self, done: Callable[[], bool]) -> None:
        """Read the streams until ``done()``."""
        while not done():
            self.read_ready(0)
            time.sleep(_POLL_PAUSE)


def _clients(port: int, count: int, first: int) -> None:
    generator = _LoadGenerator(port, count, first)
    generator.open()
    streams = generator.streams
    failed = generator.failed + sum(1 for s in streams if not s.ids)
    print(json.dumps({"ready": len(streams) - failed, "failed": failed}), flush=True)
    # "start" when the commits begin, then "stop <commits file>", on standard input.
    commands = _Lines(sys.stdin.fileno())
    generator.run_until(commands.ready)
    assert commands.take() == "start"
    cpu_start = _own_cpu()
    generator.run_until(commands.ready)
    cpu = _own_cpu() - cpu_start
    commits = json.loads(Path(commands.take().split(" ", 1)[1]).read_text())
    result = _latencies(streams, commits, generator.failed)
    result["cpu_s"] = round(cpu, 2)
    print(json.dumps(result), flush=True)


class _Lines:
    """Lines from a pipe, without blocking until one is complete."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._buffer = b""

    def ready(self) -> bool:
        if b"\n" not in self._buffer and self._poll.poll(0):
            chunk = os.read(self._fd, 4096)
            if not chunk:
                raise SystemExit("the benchmark went away")
            self._buffer += chunk
        return b"\n" in self._buffer

    def take(self) -> str:
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _latencies(streams: list[_Stream], commits: list[list[Any]], failed: int) -> dict[str, Any]:
    """A histogram of commit -> event latency over every (stream, commit) pair."""
    commit_lsns = [lsn for lsn, _ in commits]
    committed = [at for _, at in commits]
    lsns: dict[bytes, int] = {}
    histogram = [0] * (_LAST_BUCKET + 1)
    samples = missing = 0
    worst = 0.0
    # Per commit, its first and last arrival at a client of this process: how long the way to
    # the first client took (projector, wait for a read, the read) and how long the fan-out.
    firsts = [float("inf")] * len(commits)
    lasts = [0.0] * len(commits)
    for stream in streams:
        done = 0  # commits covered by an earlier event
        for ident, arrived in zip(stream.ids, stream.times, strict=True):
            lsn = lsns.get(ident)
            if lsn is None:
                lsn = lsns[ident] = parse_lsn(ident.decode())
            covered = bisect_right(commit_lsns, lsn)
            for index in range(done, covered):
                ms = (arrived - committed[index]) * 1000
                histogram[min(_LAST_BUCKET, max(0, int(ms * _BUCKETS_PER_MS)))] += 1
                worst = max(worst, ms)
                firsts[index] = min(firsts[index], ms)
                lasts[index] = max(lasts[index], ms)
            samples += max(0, covered - done)
            done = max(done, covered)
        missing += len(commits) - done
    return {
        "clients": len(streams),
        "dropped": failed + sum(1 for s in streams if s.lost or not s.status_ok),
        "events_received": sum(len(s.ids) for s in streams),
        "samples": samples,
        "commits_never_seen": missing,
        "max_ms": round(worst, 2),
        "histogram": {str(i): n for i, n in enumerate(histogram) if n},
        "firsts": [round(ms, 1) if ms != float("inf") else None for ms in firsts],
        "lasts": [round(ms, 1) for ms in lasts],
    }


def client_main(port: int, count: int, first: int) -> int:
    _raise_fd_limit()
    _clients(port, count, first)
    return 0


# --- the benchmark ----------------------------------------------------------------------------


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The load generators' results as one, with percentiles from the summed histogram."""
    histogram: dict[int, int] = {}
    firsts = [
        min((f for f in column if f is not None), default=None)
        for column in zip(*(part.pop("firsts") for part in parts), strict=True)
    ]
    lasts = [max(column) for column in zip(*(part.pop("lasts") for part in parts), strict=True)]
    for part in parts:
        for bucket, count in part.pop("histogram").items():
            histogram[int(bucket)] = histogram.get(int(bucket), 0) + count
    merged: dict[str, Any] = {
        name: sum(part[name] for part in parts)
        for name in ("clients", "dropped", "events_received", "samples", "commits_never_seen")
    }
    ordered = sorted(histogram.items())

    def percentile(q: float) -> float | None:
        # Nearest rank, as bench/common.py's percentile.
        total = merged["samples"]
        if not total:
            return None
        rank = min(total, max(1, round(q / 100 * total + 0.5)))
        seen = 0
        for bucket, count in ordered:
            seen += count
            if seen >= rank:
                return round(bucket / _BUCKETS_PER_MS, 1)
        return None

    for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9)):
        merged[name] = percentile(q)
    merged["max_ms"] = max((part["max_ms"] for part in parts), default=None)
    # Each commit's way to its first client, and the spread until its last one.
    spread = [last - first for first, last in zip(firsts, lasts, strict=True) if first is not None]
    seen = sorted(first for first in firsts if first is not None)
    merged["per_commit"] = {
        "first_client_p50_ms": _nearest(seen, 50),
        "first_client_p99_ms": _nearest(seen, 99),
        "first_to_last_client_p50_ms": _nearest(sorted(spread), 50),
        "first_to_last_client_p99_ms": _nearest(sorted(spread), 99),
    }
    merged["load_generator_cpu_s"] = round(sum(part["cpu_s"] for part in parts), 2)
    return merged


def _nearest(ordered: list[float], q: float) -> float | None:
    """The q-th percentile of sorted ``ordered`` by nearest rank."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))], 1)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _api_workers(server: ApiServer) -> list[int]:
    """The uvicorn worker processes (spawned children; not multiprocessing's tracker)."""
    workers = []
    for child in _children(server._proc.pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            pass
    return workers


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICKS, sum(values) / _TICKS


def _sockets(pid: int) -> int:
    try:
        return sum(
            1
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        )
    except OSError:
        return 0


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


def run_once(
    args: argparse.Namespace,
    env: dict[str, str],
    dsn: str,
    projector: subprocess.Popen[bytes],
    tree: Path,
    logs: Path,
) -> dict[str, Any]:
    """One measurement against the API of ``tree``: connect, commit, measure, stop."""
    server = ApiServer(env, args.workers, logs / f"api-{tree.name}.log", root=tree)
    workers = _api_workers(server)
    idle_sockets = {pid: _sockets(pid) for pid in workers}
    procs: list[subprocess.Popen[str]] = []
    spies: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {"tree": str(tree)}
    try:
        share, extra = divmod(args.clients, args.client_procs)
        first = 0
        for index in range(args.client_procs):
            count = share + (1 if index < extra else 0)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--role",
                        "clients",
                        "--port",
                        str(server.port),
                        "--clients",
                        str(count),
                        "--first",
                        str(first),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            first += count
        started = time.monotonic()
        ready = [json.loads(_line(proc)) for proc in procs]
        result["connect_s"] = round(time.monotonic() - started, 1)
        result["streams_per_worker"] = {
            str(pid): _sockets(pid) - idle_sockets[pid] for pid in workers
        }
        connected = sum(r["ready"] for r in ready)
        print(
            f"[{tree.name}] {connected:,} clients connected in {result['connect_s']} s "
            f"({sum(r['failed'] for r in ready)} failed); streams per worker (sockets) "
            f"{result['streams_per_worker']}",
            flush=True,
        )
        time.sleep(2)
        if args.py_spy:
            spies = [
                _py_spy(pid, args.duration, logs / f"py-spy-{tree.name}-{pid}.txt")
                for pid in workers
            ]
        watched = {"api_workers": workers, "projector": [projector.pid]}
        watched["load_generator"] = [proc.pid for proc in procs]
        before = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in watched.items()}
        busy_before, total_before = _machine_busy()
        for proc in procs:
            _tell(proc, "start")
        wall = time.monotonic()
        commits = write(dsn, args.rate, args.duration)
        wall = time.monotonic() - wall
        busy_after, total_after = _machine_busy()
        after = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in watched.items()}
        time.sleep(2)  # the last events in flight
        commits_file = logs / f"commits-{tree.name}.json"
        commits_file.write_text(json.dumps(commits))
        for proc in procs:
            _tell(proc, f"stop {commits_file}")
        measured = _merge([json.loads(_line(proc)) for proc in procs])
        result["commits"] = len(commits)
        result.update(measured)
        result["cpu_cores"] = {
            name: round((after[name] - before[name]) / wall, 2) for name in watched
        }
        result["cpu_cores"]["machine"] = round(
            (busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1), 2
        )
        result["cpu_cores"]["load_generator_own"] = round(
            measured["load_generator_cpu_s"] / wall, 2
        )
    finally:
        for spy in spies:
            spy.wait(60)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        server.stop()
    return result


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("a load-generator process ended early")
    return line


def _tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _py_spy(pid: int, duration: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (from the venv) sampling ``pid`` for ``duration`` seconds, as collapsed stacks."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(duration)),
            "--rate",
            "100",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument("--rate", type=float, default=50.0, help="commits per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of commits")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="load-generator processes (default 2)"
    )
    parser.add_argument(
        "--reference", type=Path, help="another source tree whose API is measured first"
    )
    parser.add_argument("--py-spy", action="store_true", help="profile the API workers")
    parser.add_argument(
        "--output", default="sse", help="saved as bench/results/OUTPUT.json (default sse)"
    )
    parser.add_argument(
        "--role", choices=["bench", "clients"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "clients":
        return client_main(args.port, args.clients, args.first)

    _raise_fd_limit()  # inherited by the API workers
    # Either worker may be handed nearly every stream, each a file descriptor.
    wanted = args.clients + 1024
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < wanted:
        print(
            f"bench_sse: {args.clients} clients need {wanted} file descriptors per process; "
            f"raise the hard limit (ulimit -Hn) or ask for fewer (--clients)",
            file=sys.stderr,
        )
        return 2
    # Stopped from outside (a timeout): still stop the servers and processes it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(json.dumps(machine(), indent=2))
    logs = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    # Every client connects from one address, and either worker may get most of them: each
    # worker may hold them all (the defaults, 1,000 streams and 64 per address, would refuse).
    caps = {
        "PROJECTOR_API_MAX_STREAMS": str(args.clients),
        "PROJECTOR_API_MAX_STREAMS_PER_CLIENT": str(args.clients),
        "PROJECTOR_API_MAX_CONNECTIONS": str(args.clients + 100),
    }
    results: dict[str, Any] = {
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "clients": args.clients,
        "workers": args.workers,
        "commit_rate": args.rate,
        "duration_s": args.duration,
        "load_generator_processes": args.client_procs,
        "boards": {"day top 10": "80%", "week top 10": "20%"},
        "api_settings": caps,
        "command": " ".join([".venv/bin/python", "bench/bench_sse.py", *sys.argv[1:]]),
    }
    runs: dict[str, dict[str, Any]] = {}
    with throwaway_servers() as (pg, rd):
        dsn = pg.create_database("bench_sse")
        env = api_env(dsn, rd.url(), "bench_sse")
        env.update(caps)
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
        try:
            if args.reference is not None:
                runs["reference"] = run_once(args, env, dsn, projector, args.reference, logs)
                _summary("reference", runs["reference"], args)
            runs["this"] = run_once(args, env, dsn, projector, ROOT, logs)
        finally:
            projector.send_signal(signal.SIGTERM)
            projector.wait(30)
    this = runs.pop("this")
    results.update(this)
    if runs:
        results["reference"] = runs["reference"]
        ref = runs["reference"]["p99_ms"]
        if ref and this["p99_ms"]:
            results["p99_vs_reference"] = round(this["p99_ms"] / ref, 2)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["target"] = "p99 <= 250 ms, no client dropped"
    results["met"] = bool(
        results["p99_ms"] is not None and results["p99_ms"] <= 250 and results["dropped"] == 0
    )
    save(args.output, results)
    _summary("this tree", results, args)
    print(f"logs in {logs}")
    return 0 if results["met"] else 1


def _summary(name: str, result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n[{name}] {result['clients']:,} clients on {args.workers} workers, {args.rate:g} "
        f"commits/s for {args.duration:g} s: commit -> event p50 {result['p50_ms']} ms, p90 "
        f"{result['p90_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
        f"{result['events_received']:,} events, {result['dropped']} dropped, "
        f"{result['commits_never_seen']} (client, commit) pairs never seen; CPU (cores) "
        f"{result['cpu_cores']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
