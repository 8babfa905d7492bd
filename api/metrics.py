"""Request counters and latency histograms in the Prometheus text exposition format (0.0.4).

Hand-written: a few dictionaries updated on the event loop, rendered on ``GET /metrics``.
Each worker process counts its own requests and labels them ``worker`` (its PID); with several
workers a scrape reaches one of them, so scrape a single-worker deployment for exact totals.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable

# Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """What ``/metrics`` reports for this process."""

    def __init__(self) -> None:
        self._worker = str(os.getpid())
        self._requests: dict[tuple[str, str, int], int] = {}
        # route -> (bucket counts, sum of seconds, count)
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        self._answers: dict[tuple[str, str], int] = {}
        self._fallbacks: dict[str, int] = {}
        self.min_lsn_waits = 0
        self.fallbacks_shared = 0
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        slot = self._latency.get(route)
        if slot is None:
            slot = self._latency[route] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        slot[0][bisect_left(LATENCY_BUCKETS, seconds)] += 1
        slot[1][0] += seconds

    def answered(self, route: str, source: str) -> None:
        """Count an answer served from ``source`` (redis or postgres)."""
        key = (route, source)
        self._answers[key] = self._answers.get(key, 0) + 1

    def fell_back(self, reason: str) -> None:
        """Count a query sent to PostgreSQL instead of Redis, by why."""
        self._fallbacks[reason] = self._fallbacks.get(reason, 0) + 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as gauge ``name`` at each scrape."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """The exposition text."""
        w = _label(self._worker)
        lines = [
            "# HELP api_requests_total HTTP requests answered, by route, method and status.",
            "# TYPE api_requests_total counter",
        ]
        for (route, method, status), count in sorted(self._requests.items()):
            lines.append(
                f"api_requests_total{{worker={w},route={_label(route)},method={_label(method)},"
                f'status="{status}"}} {count}'
            )
        lines += [
            "# HELP api_request_duration_seconds Time from request to response, by route.",
            "# TYPE api_request_duration_seconds histogram",
        ]
        for route, (counts, total) in sorted(self._latency.items()):
            labels = f"worker={w},route={_label(route)}"
            running = 0
            for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
                running += count
                lines.append(
                    f'api_request_duration_seconds_bucket{{{labels},le="{bound}"}} {running}'
                )
            running += counts[-1]
            lines.append(f'api_request_duration_seconds_bucket{{{labels},le="+Inf"}} {running}')
            lines.append(f"api_request_duration_seconds_sum{{{labels}}} {total[0]:.6f}")
            lines.append(f"api_request_duration_seconds_count{{{labels}}} {running}")
        lines += [
            "# HELP api_answers_total Leaderboard answers, by route and the store that gave them.",
            "# TYPE api_answers_total counter",
        ]
        for (route, source), count in sorted(self._answers.items()):
            lines.append(
                f"api_answers_total{{worker={w},route={_label(route)},source={_label(source)}}} "
                f"{count}"
            )
        lines += [
            "# HELP api_fallbacks_total Queries answered by PostgreSQL instead of Redis, by why.",
            "# TYPE api_fallbacks_total counter",
        ]
        for reason, count in sorted(self._fallbacks.items()):
            lines.append(f"api_fallbacks_total{{worker={w},reason={_label(reason)}}} {count}")
        lines += [
            "# HELP api_min_lsn_waits_total Requests that waited for the projector (min_lsn).",
            "# TYPE api_min_lsn_waits_total counter",
            f"api_min_lsn_waits_total{{worker={w}}} {self.min_lsn_waits}",
            "# HELP api_fallbacks_shared_total Fallback queries answered by an identical query "
            "already running.",
            "# TYPE api_fallbacks_shared_total counter",
            f"api_fallbacks_shared_total{{worker={w}}} {self.fallbacks_shared}",
        ]
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name}{{worker={w}}} {read():g}",
            ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{escaped}"'
