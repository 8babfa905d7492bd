"""The projector's Prometheus metrics and health probe, served over HTTP by ``serve``.

``ProjectorMetrics`` is the only API the worker, the sink and the rebuild call: plain methods
(``batch_applied``, ``lag``, ``rebuild``, ...) over a registry of its own, cheap enough for the
main loop, with every label drawn from a small fixed set. ``serve`` answers ``/metrics``
(Prometheus text) and ``/healthz`` (200 while streaming or rebuilding with recent progress of
the main loop, else 503) from a daemon thread; without a port nothing is served.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from projector import __version__
from projector.core.errors import ConfigError

KINDS = ("insert", "update", "delete", "truncate")
SERVICES = ("postgres", "redis")
ROLES = ("active", "standby")
STATES = ("starting", "streaming", "rebuilding", "stopping")
# Why Redis was rebuilt: a closed set (an unbounded label would be a new series per message).
REBUILD_CAUSES = (
    "missing_watermark",
    "behind_slot",
    "slot_missing",
    "other_cluster",
    "config_changed",
    "replay",
    "evicted",
    "lost_build",
    "watermark_moved",
    "other",
)
# The first pattern that matches the reason text (lower-cased) names the cause.
_CAUSE_PATTERNS = (
    ("lost_build", re.compile(r"lost keys of the rebuild|build lost")),
    ("evicted", re.compile(r"evict")),
    ("replay", re.compile(r"replay")),
    ("other_cluster", re.compile(r"different cluster|another (postgresql )?cluster|system id")),
    ("behind_slot", re.compile(r"behind")),
    ("slot_missing", re.compile(r"slot .*(does not exist|invalidated|missing|lost)")),
    ("watermark_moved", re.compile(r"moved under us|ahead of")),
    ("missing_watermark", re.compile(r"no watermark|watermark (is )?missing")),
    (
        "config_changed",
        re.compile(r"fingerprint|configuration|config|built from slot|key layout|board"),
    ),
)
_SERVICE_OTHER = "other"

_BATCH_ROWS_BUCKETS = (1, 10, 100, 1_000, 10_000, 50_000, 100_000, 1_000_000)
_APPLY_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def rebuild_cause(reason: str) -> str:
    """The bounded label of a rebuild's reason: a label from ``REBUILD_CAUSES`` is kept as
    it is; other text is matched against known reasons, falling back to ``other``."""
    if reason in REBUILD_CAUSES:
        return reason
    text = reason.lower()
    for cause, pattern in _CAUSE_PATTERNS:
        if pattern.search(text):
            return cause
    return "other"


class ProjectorMetrics:
    """What ``projector run`` reports; every method is cheap and thread-safe."""

    def __init__(
        self, *, stale_after: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = CollectorRegistry()
        self._stale_after = stale_after
        self._clock = clock
        self._state = "starting"
        self._last_progress: float | None = None
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("projector_build", "Version of the running projector.", registry=r).info(
            {"version": __version__}
        )
        self._lag_bytes = Gauge(
            "projector_lag_bytes",
            "WAL bytes between the server's position and what Redis has applied.",
            registry=r,
        )
        self._lag_seconds = Gauge(
            "projector_lag_seconds",
            "Seconds between the newest commit applied to Redis and now, while changes wait "
            "(0 when caught up).",
            registry=r,
        )
        self._retained_wal = Gauge(
            "projector_retained_wal_bytes",
            "WAL the replication slot keeps on the PostgreSQL server (from its restart_lsn).",
            registry=r,
        )
        self._rows = Counter(
            "projector_rows_applied",
            "Row changes applied to Redis, by kind.",
            ["kind"],
            registry=r,
        )
        self._rows_by_kind = {kind: self._rows.labels(kind) for kind in KINDS}
        self._transactions = Counter(
            "projector_transactions_applied",
            "Transactions applied to Redis in full.",
            registry=r,
        )
        self._batch_rows = Histogram(
            "projector_batch_rows",
            "Row changes per batch applied to Redis.",
            buckets=_BATCH_ROWS_BUCKETS,
            registry=r,
        )
        self._apply_seconds = Histogram(
            "projector_batch_apply_seconds",
            "Time from sending a batch to Redis to its acknowledgement.",
            buckets=_APPLY_SECONDS_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            "projector_batches_in_flight",
            "Batches sent to Redis and not yet acknowledged.",
            registry=r,
        )
        self._rebuilds = Counter(
            "projector_rebuilds",
            "Rebuilds of Redis from a PostgreSQL snapshot, by cause.",
            ["cause"],
            registry=r,
        )
        for cause in REBUILD_CAUSES:
            self._rebuilds.labels(cause)
        self._reconnects = Counter(
            "projector_reconnects",
            "Connections lost and retried, by service.",
            ["service"],
            registry=r,
        )
        for service in (*SERVICES, _SERVICE_OTHER):
            self._reconnects.labels(service)
        self._role = Gauge(
            "projector_role",
            "1 for this process's role (active streams; standby waits to take over).",
            ["role"],
            registry=r,
        )
        self._states = Gauge(
            "projector_state",
            "1 for what the main loop is doing now.",
            ["state"],
            registry=r,
        )
        self._unavailable = Gauge(
            "projector_board_unavailable",
            "1 for each declared board that cannot be projected now (the log and `projector "
            "status` name the cause and the fix); the other boards stream on.",
            ["board"],
            registry=r,
        )
        self._unavailable_now: dict[str, str] = {}
        Gauge(
            "projector_last_progress_age_seconds",
            "Seconds since the main loop last made progress (-1 before it started).",
            registry=r,
        ).set_function(self._progress_age)
        self.role("active")
        self.state("starting")

    # -- what the worker reports -------------------------------------------------------------

    def batch_applied(
        self, rows_by_kind: Mapping[str, int], transactions: int, seconds: float
    ) -> None:
        """A batch was acknowledged by Redis: its row changes by kind (``KINDS``), whole
        transactions, and seconds from send to acknowledgement. Counts as progress."""
        total = 0
        for kind, count in rows_by_kind.items():
            if count:
                self._rows_by_kind[kind].inc(count)  # KeyError: not one of KINDS
                total += count
        if transactions:
            self._transactions.inc(transactions)
        self._batch_rows.observe(total)
        self._apply_seconds.observe(seconds)
        self.progress()

    def in_flight(self, batches: int) -> None:
        """Batches sent to Redis and not yet acknowledged."""
        self._in_flight.set(batches)

    def lag(self, lag_bytes: int, seconds: float) -> None:
        """How far Redis is behind the server, in WAL bytes and in seconds."""
        self._lag_bytes.set(max(0, lag_bytes))
        self._lag_seconds.set(max(0.0, seconds))

    def retained_wal(self, retained_bytes: int) -> None:
        """WAL the slot retains on the server."""
        self._retained_wal.set(max(0, retained_bytes))

    def rebuild(self, cause_text: str) -> str:
        """Count a rebuild; ``cause_text`` is a cause label or the reason logged. Returns the
        label counted."""
        cause = rebuild_cause(cause_text)
        self._rebuilds.labels(cause).inc()
        return cause

    def reconnect(self, service: str) -> None:
        """Count a lost connection that will be retried (``postgres`` or ``redis``)."""
        self._reconnects.labels(service if service in SERVICES else _SERVICE_OTHER).inc()

    def role(self, name: str) -> None:
        """This process's role in a group of projectors: ``active`` or ``standby``."""
        if name not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {name!r}")
        for role in ROLES:
            self._role.labels(role).set(1 if role == name else 0)

    def state(self, name: str) -> None:
        """What the main loop does now (``STATES``); entering a state counts as progress."""
        if name not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {name!r}")
        self._state = name
        for state in STATES:
            self._states.labels(state).set(1 if state == name else 0)
        self.progress()

    def unavailable(self, problems: dict[str, str]) -> None:
        """The declared boards that cannot be projected now, each with its problem."""
        for board in set(self._unavailable_now) - set(problems):
            self._unavailable.remove(board)
        for board in problems:
            self._unavailable.labels(board).set(1)
        self._unavailable_now = dict(problems)

    def progress(self) -> None:
        """The main loop made progress (one pass of the loop, a rebuild step)."""
        self._last_progress = self._clock()

    # -- what the probe reads ----------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while streaming or rebuilding with progress within ``stale_after``."""
        age = self._progress_age()
        healthy = self._state in ("streaming", "rebuilding") and 0 <= age <= self._stale_after
        body: dict[str, Any] = {
            "status": "ok" if healthy else "unhealthy",
            "state": self._state,
            "last_progress_seconds_ago": None if age < 0 else round(age, 3),
            "stale_after_seconds": self._stale_after,
        }
        if self._unavailable_now:
            body["unavailable_boards"] = dict(self._unavailable_now)
        return healthy, body

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def _progress_age(self) -> float:
        last = self._last_progress
        return -1.0 if last is None else max(0.0, self._clock() - last)


class MetricsServer:
    """``/metrics`` and ``/healthz`` of one ``ProjectorMetrics`` on a daemon thread."""

    def __init__(self, metrics: ProjectorMetrics, host: str, port: int) -> None:
        handler = type("_Handler", (_Handler,), {"metrics": metrics})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"PROJECTOR_METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"
            ) from None
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(metrics: ProjectorMetrics, host: str, port: int | None) -> MetricsServer | None:
    """Serve ``metrics`` on ``host:port`` from a daemon thread; nothing when ``port`` is None.

    A port that cannot be bound is a ``ConfigError`` naming ``PROJECTOR_METRICS_PORT``.
    """
    if port is None:
        return None
    return MetricsServer(metrics, host, port)


class _Handler(BaseHTTPRequestHandler):
    metrics: ProjectorMetrics
    server_version = "projector"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(include_body=True)

    def do_HEAD(self) -> None:
        self._answer(include_body=False)

    def _answer(self, *, include_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, content_type, body = 200, CONTENT_TYPE_PLAIN_0_0_4, self.metrics.render()
        elif path == "/healthz":
            healthy, state = self.metrics.health()
            status, content_type = (200 if healthy else 503), "application/json"
            body = json.dumps(state).encode()
        else:
            status, content_type = 404, "application/json"
            body = b'{"error":"not found; try /metrics or /healthz"}'
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""
