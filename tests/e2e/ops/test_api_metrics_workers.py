"""`python -m api --workers 2`: one scrape reports the requests of both worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.servers import free_port
from projector.commands.migrate import migrate

ROOT = Path(__file__).resolve().parents[3]
REQUESTS = 300


@pytest.fixture
def two_workers(pg_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API with two uvicorn workers; its temporary files go under ``tmp_path``."""
    migrate(pg_dsn, "projector")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROJECTOR_", "PROMETHEUS"))}
    env.update(
        PROJECTOR_PG_DSN=pg_dsn,
        PROJECTOR_REDIS_URL=redis_url,
        PROJECTOR_API_ACCESS_LOG="false",
        PROJECTOR_LOG_LEVEL="warning",
        TMPDIR=str(tmp_path),
    )
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "--workers", "2", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        yield base, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # The directory where the workers met is gone with them.
    assert not list(tmp_path.glob("api-metrics-*"))


def _healthz_total(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "api_requests_total" and sample.labels["route"] == "/healthz"
    )


def _wait_total(base: str, expected: float, timeout: float = 10.0) -> None:
    """Wait until a scrape reports ``expected`` /healthz requests (workers flush every
    FLUSH_INTERVAL)."""
    deadline = time.monotonic() + timeout
    while (total := _healthz_total(base)) != expected:
        assert time.monotonic() < deadline, f"a scrape reports {total}, not {expected}"
        time.sleep(0.1)


def _worker_pids(tmp_path: Path) -> set[int]:
    (directory,) = tmp_path.glob("api-metrics-*")
    return {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("counter_*.db")}


def test_a_scrape_sees_the_total_of_both_workers(two_workers: tuple[str, Path]) -> None:
    """Requests spread over two worker processes add up in whichever worker is scraped."""
    base, tmp_path = two_workers

    def one_request(_: int) -> int:
        # A connection per request, so that both workers accept some.
        return httpx.get(base + "/healthz", timeout=10, headers={"Connection": "close"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one_request, range(REQUESTS))) == {200}
    _wait_total(base, REQUESTS)
    assert len(_worker_pids(tmp_path)) == 2, "one worker served every request; cannot tell"
    for _ in range(5):  # each scrape may reach either worker: all give the same total
        assert _healthz_total(base) == REQUESTS


def test_a_killed_worker_keeps_its_counts_and_loses_its_gauges(
    two_workers: tuple[str, Path],
) -> None:
    """After kill -9 of a worker its requests still count; its live gauges are dropped."""
    base, tmp_path = two_workers
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda _: httpx.get(base + "/healthz", headers={"Connection": "close"}),
                range(REQUESTS),
            )
        )
    _wait_total(base, REQUESTS)
    pids = _worker_pids(tmp_path)
    assert len(pids) == 2
    victim = min(pids)
    (directory,) = tmp_path.glob("api-metrics-*")
    assert list(directory.glob(f"gauge_live*_{victim}.db"))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while list(directory.glob(f"gauge_live*_{victim}.db")):
        assert time.monotonic() < deadline, "the dead worker's gauges were not dropped"
        with contextlib.suppress(httpx.TransportError):  # the dead worker's connection
            httpx.get(base + "/metrics", timeout=5, headers={"Connection": "close"})
        time.sleep(0.1)
    assert _healthz_total(base) == REQUESTS
