"""The read API's Prometheus metrics, correct across uvicorn worker processes.

Built on prometheus-client. With several workers ``python -m api`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start: each worker then
keeps its values in memory-mapped files there, and whichever worker a scrape reaches renders
the sum over all of them (gauges: over the live ones; a dead worker's gauges are dropped).
With one worker, or an app built in-process, the values live in this object's own registry.
A request is counted in plain dictionaries (a few look-ups); ``flush`` moves the counts into
the exported values at each scrape of this worker and, with several workers, every
``FLUSH_INTERVAL`` seconds (the app's background task), so a scrape sees the other
workers' requests at most that late.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Text format 0.0.4: what every Prometheus server reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4.encode()
FLUSH_INTERVAL = 0.5
# Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# How a gauge's values from several workers combine (prometheus-client's multiprocess modes).
GaugeMode = Literal["livesum", "livemin", "livemax"]
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db\Z")


def multiprocess_dir() -> Path | None:
    """The directory shared by the workers, when this process keeps its values there.

    prometheus-client picks file-backed values when it is first imported, if the variable
    is set then; a variable set later changes nothing, and neither does this.
    """
    value = os.environ.get(MULTIPROC_ENV)
    shared = getattr(values.ValueClass, "_multiprocess", False)
    return Path(value) if value and shared else None


class Metrics:
    """What ``/metrics`` reports: requests, latency, answers by store, fallbacks, gauges."""

    def __init__(self) -> None:
        # A *_created sample per series is noise for these dashboards; and multiprocess mode
        # has none, so both modes show the same families.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self._dir = multiprocess_dir()
        # Multiprocess values live in files, not in a registry: register nothing then.
        self._registry: CollectorRegistry | None = None if self._dir else CollectorRegistry()
        registry = self._registry
        self._requests = Counter(
            "api_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "api_request_duration_seconds",
            "Time from request to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._answers = Counter(
            "api_answers",
            "Leaderboard answers, by route and the store that gave them.",
            ["route", "source"],
            registry=registry,
        )
        self._fallbacks = Counter(
            "api_fallbacks",
            "Queries answered by PostgreSQL instead of Redis, by why.",
            ["reason"],
            registry=registry,
        )
        self._replica_reads = Counter(
            "api_replica_reads",
            "Reads tried on a Redis replica, by outcome: served, behind (min_lsn), failed.",
            ["outcome"],
            registry=registry,
        )
        self._min_lsn_waits = Counter(
            "api_min_lsn_waits",
            "Requests that waited for the projector (min_lsn).",
            registry=registry,
        )
        self._fallbacks_shared = Counter(
            "api_fallbacks_shared",
            "Fallback queries answered by an identical query already running.",
            registry=registry,
        )
        # The hot path counts in plain dictionaries; ``flush`` moves the increments into
        # prometheus-client's values (file-backed with several workers: a few microseconds
        # per value, too dear for every request).
        self._pending_requests: dict[tuple[str, str, int], int] = {}
        self._pending_latency: dict[str, list[float]] = {}  # bucket counts..., sum
        self._pending_answers: dict[tuple[str, str], int] = {}
        self._pending_replica_reads: dict[str, int] = {}
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._answer_children: dict[tuple[str, str], Any] = {}
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []

    @property
    def multiprocess(self) -> bool:
        """Whether values are shared with other worker processes."""
        return self._dir is not None

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        key = (route, method, status)
        self._pending_requests[key] = self._pending_requests.get(key, 0) + 1
        latency = self._pending_latency.get(route)
        if latency is None:
            latency = self._pending_latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def answered(self, route: str, source: str) -> None:
        """Count an answer served from ``source`` (redis or postgres)."""
        key = (route, source)
        self._pending_answers[key] = self._pending_answers.get(key, 0) + 1

    def flush(self) -> None:
        """Move the requests counted since the last flush into the exported values."""
        requests, self._pending_requests = self._pending_requests, {}
        for key, count in requests.items():
            child = self._request_children.get(key)
            if child is None:
                child = self._request_children[key] = self._requests.labels(*key)
            child.inc(count)
        answers, self._pending_answers = self._pending_answers, {}
        for answer, count in answers.items():
            child = self._answer_children.get(answer)
            if child is None:
                child = self._answer_children[answer] = self._answers.labels(*answer)
            child.inc(count)
        replica_reads, self._pending_replica_reads = self._pending_replica_reads, {}
        for outcome, count in replica_reads.items():
            self._replica_reads.labels(outcome).inc(count)
        latencies, self._pending_latency = self._pending_latency, {}
        for route, counts in latencies.items():
            child = self._latency_children.get(route)
            if child is None:
                child = self._latency_children[route] = self._latency.labels(route)
            # A histogram child keeps one value per bucket (not cumulative) and the sum.
            for bucket, observed in zip(child._buckets, counts[:-1], strict=True):
                if observed:
                    bucket.inc(observed)
            child._sum.inc(counts[-1])

    def fell_back(self, reason: str) -> None:
        """Count a query sent to PostgreSQL instead of Redis, by why."""
        self._fallbacks.labels(reason).inc()

    def replica_read(self, outcome: str) -> None:
        """Count a read tried on a replica: ``served``, ``behind`` or ``failed`` (one per
        request when replicas are read: counted like ``answered``, flushed later)."""
        self._pending_replica_reads[outcome] = self._pending_replica_reads.get(outcome, 0) + 1

    def min_lsn_waited(self) -> None:
        """Count a request that waited for the projector to reach its ``min_lsn``."""
        self._min_lsn_waits.inc()

    def fallback_shared(self) -> None:
        """Count a fallback answered by a query that another request started."""
        self._fallbacks_shared.inc()

    def gauge(
        self, name: str, help_text: str, read: Callable[[], float], *, mode: GaugeMode = "livesum"
    ) -> None:
        """Report ``read()`` as gauge ``name``, refreshed by ``refresh()`` (each scrape and
        periodically). ``mode`` says how workers combine: ``livesum``, ``livemin``,
        ``livemax`` (over live workers)."""
        gauge = Gauge(name, help_text, registry=self._registry, multiprocess_mode=mode)
        self._gauges.append((gauge, read))
        gauge.set(read())

    def refresh(self) -> None:
        """Flush the counts and read every gauge's source now (for this worker)."""
        self.flush()
        for gauge, read in self._gauges:
            gauge.set(read())

    def render(self) -> str:
        """The exposition text: this process's values, or every worker's together."""
        self.refresh()
        if self._dir is None:
            assert self._registry is not None
            return generate_latest(self._registry).decode()
        forget_dead_workers(self._dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self._dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry).decode()

    def close(self) -> None:
        """This worker is exiting: its gauges no longer count (its counters still do)."""
        self.flush()
        if self._dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self._dir))  # type: ignore[no-untyped-call]


def forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges of worker processes that are gone (killed, crashed)."""
    pids = set()
    for entry in directory.iterdir():
        match = _LIVE_FILE.match(entry.name)
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
