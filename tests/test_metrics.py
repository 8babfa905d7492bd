"""The projector's metrics endpoint and health probe, over real HTTP on a free port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from projector.core.errors import ConfigError
from projector.metrics import (
    KINDS,
    REBUILD_CAUSES,
    MetricsServer,
    ProjectorMetrics,
    rebuild_cause,
    serve,
)
from projector.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]

FAMILIES = {
    "projector_lag_bytes": "gauge",
    "projector_lag_seconds": "gauge",
    "projector_retained_wal_bytes": "gauge",
    "projector_rows_applied": "counter",
    "projector_transactions_applied": "counter",
    "projector_batch_rows": "histogram",
    "projector_batch_apply_seconds": "histogram",
    "projector_batches_in_flight": "gauge",
    "projector_rebuilds": "counter",
    "projector_reconnects": "counter",
    "projector_role": "gauge",
    "projector_state": "gauge",
    "projector_last_progress_age_seconds": "gauge",
    "projector_build_info": "gauge",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served(clock: Clock) -> Iterator[tuple[ProjectorMetrics, str]]:
    metrics = ProjectorMetrics(stale_after=30.0, clock=clock)
    server = serve(metrics, "127.0.0.1", 0)
    assert server is not None
    try:
        yield metrics, f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_endpoint_answers_with_every_metric_family(served: tuple[ProjectorMetrics, str]) -> None:
    """/metrics is Prometheus text holding every family the dashboards and alerts use."""
    _, base = served
    status, content_type, text = _get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    found = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        assert found.get(name) == kind, name
    samples = _samples(text)
    for kind in KINDS:
        assert samples[("projector_rows_applied_total", (("kind", kind),))] == 0
    for cause in REBUILD_CAUSES:
        assert samples[("projector_rebuilds_total", (("cause", cause),))] == 0
    assert "process_resident_memory_bytes" in found


def test_values_move_when_the_api_is_called(served: tuple[ProjectorMetrics, str]) -> None:
    """Each ProjectorMetrics call shows in the next scrape."""
    metrics, base = served
    metrics.batch_applied({"insert": 7, "update": 2, "delete": 1}, transactions=3, seconds=0.004)
    metrics.batch_applied({"truncate": 1}, transactions=1, seconds=0.2)
    metrics.in_flight(2)
    metrics.lag(4096, 1.5)
    metrics.retained_wal(1 << 20)
    assert metrics.rebuild("Redis holds no watermark (empty, flushed or lost data)") == (
        "missing_watermark"
    )
    metrics.rebuild("replay")
    metrics.reconnect("redis")
    metrics.reconnect("postgres")
    metrics.reconnect("postgres")
    metrics.role("standby")
    samples = _samples(_get(base + "/metrics")[2])
    assert samples[("projector_rows_applied_total", (("kind", "insert"),))] == 7
    assert samples[("projector_rows_applied_total", (("kind", "update"),))] == 2
    assert samples[("projector_rows_applied_total", (("kind", "truncate"),))] == 1
    assert samples[("projector_transactions_applied_total", ())] == 4
    assert samples[("projector_batch_rows_count", ())] == 2
    assert samples[("projector_batch_rows_sum", ())] == 11
    assert samples[("projector_batch_apply_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("projector_batch_apply_seconds_count", ())] == 2
    assert samples[("projector_batches_in_flight", ())] == 2
    assert samples[("projector_lag_bytes", ())] == 4096
    assert samples[("projector_lag_seconds", ())] == 1.5
    assert samples[("projector_retained_wal_bytes", ())] == 1 << 20
    assert samples[("projector_rebuilds_total", (("cause", "missing_watermark"),))] == 1
    assert samples[("projector_rebuilds_total", (("cause", "replay"),))] == 1
    assert samples[("projector_reconnects_total", (("service", "postgres"),))] == 2
    assert samples[("projector_reconnects_total", (("service", "redis"),))] == 1
    assert samples[("projector_role", (("role", "standby"),))] == 1
    assert samples[("projector_role", (("role", "active"),))] == 0


def test_health_probe_flips_with_state_and_progress(
    served: tuple[ProjectorMetrics, str], clock: Clock
) -> None:
    """/healthz is 503 while starting, 200 streaming or rebuilding, 503 once progress stalls."""
    metrics, base = served
    status, content_type, body = _get(base + "/healthz")
    assert status == 503 and content_type == "application/json"
    assert json.loads(body)["state"] == "starting"
    metrics.state("streaming")
    assert _get(base + "/healthz")[0] == 200
    clock.now += 29
    assert _get(base + "/healthz")[0] == 200
    clock.now += 2  # 31 s without progress
    status, _, body = _get(base + "/healthz")
    assert status == 503 and json.loads(body)["last_progress_seconds_ago"] == 31
    metrics.progress()
    assert _get(base + "/healthz")[0] == 200
    metrics.state("rebuilding")
    assert _get(base + "/healthz")[0] == 200
    metrics.state("stopping")
    assert _get(base + "/healthz")[0] == 503
    assert _get(base + "/nope")[0] == 404


def test_rebuild_causes_are_a_closed_set() -> None:
    """Every reason the projector logs maps to one of a few labels; anything else is other."""
    reasons = {
        "Redis holds no watermark (empty, flushed or lost data)": "missing_watermark",
        "Redis holds no watermark: it lost its data or was flushed": "missing_watermark",
        "Redis watermark 0/16 is behind the slot's confirmed position 0/20: Redis lost data": (
            "behind_slot"
        ),
        "replication slot 'projector' does not exist": "slot_missing",
        "replication slot 'projector' was invalidated (wal_status=lost)": "slot_missing",
        "PostgreSQL is a different cluster (system id 1, watermark names 2)": "other_cluster",
        "Redis was built from slot 'a', not 'b'": "config_changed",
        "board definitions changed (fingerprint abc != def)": "config_changed",
        "replay requested by operator": "replay",
        "Redis lost keys of the rebuild in progress (flushed, cleared or restarted)": (
            "lost_build"
        ),
        "Redis evicted keys (maxmemory-policy allkeys-lru)": "evicted",
        "Redis watermark moved under us (expected A, found B)": "watermark_moved",
        "cosmic rays": "other",
    }
    for reason, cause in reasons.items():
        assert rebuild_cause(reason) == cause, reason
    assert all(rebuild_cause(cause) == cause for cause in REBUILD_CAUSES)


def test_no_port_serves_nothing() -> None:
    """Without PROJECTOR_METRICS_PORT nothing listens."""
    assert serve(ProjectorMetrics(), "127.0.0.1", None) is None


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "80.5"])
def test_bad_port_is_a_clear_config_error(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad PROJECTOR_METRICS_PORT stops start-up with one line naming it (exit 2)."""
    monkeypatch.setenv("PROJECTOR_METRICS_PORT", value)
    with pytest.raises(ConfigError, match=r"\APROJECTOR_METRICS_PORT: "):
        load_settings()
    result = subprocess.run(
        [sys.executable, "-m", "projector", "run"],
        env={"PROJECTOR_METRICS_PORT": value, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROJECTOR_METRICS_PORT" in lines[0], result.stderr


def test_taken_port_is_a_clear_config_error() -> None:
    """A port another process holds is a ConfigError naming PROJECTOR_METRICS_PORT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expected = rf"PROJECTOR_METRICS_PORT: cannot listen on .*:{port}"
        with pytest.raises(ConfigError, match=expected):
            MetricsServer(ProjectorMetrics(), "127.0.0.1", port)


def test_empty_port_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty PROJECTOR_METRICS_PORT is the same as unset."""
    monkeypatch.setenv("PROJECTOR_METRICS_PORT", "")
    assert load_settings().metrics_port is None
