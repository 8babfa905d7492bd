"""``python -m api``: several workers from the factory, structured access logs, bad settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from harness.servers import free_port
from projector.settings import Settings

from .support import ROOT


def _run_api(settings: Settings, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    environ.update(
        PROJECTOR_PG_DSN=settings.pg_dsn,
        PROJECTOR_REDIS_URL=settings.redis_url,
        PROJECTOR_LOG_FORMAT="json",
        **env,
    )
    port = free_port()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=environ,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_workers_serve_with_json_access_logs(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two workers answer; each request is one JSON log line; SIGTERM exits cleanly."""
    settings = settings_for()
    log = tmp_path / "api.log"
    proc, url = _run_api(settings, log, PROJECTOR_API_ACCESS_LOG="true")
    try:
        with httpx.Client(base_url=url) as client:
            for _ in range(6):
                assert client.get("/v1/leaderboards/week", params={"limit": 3}).status_code == 200
            assert client.get("/v1/leaderboards/decade").status_code == 400
    finally:
        assert _stop(proc) == 0
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    requests = [e for e in events if e.get("event") == "request"]
    board = [e for e in requests if e["path"] == "/v1/leaderboards/week"]
    assert len(board) == 6 and {e["status"] for e in board} == {200}
    assert {e["source"] for e in board} == {"postgres"}  # nothing built Redis
    assert board[0]["query"] == "limit=3" and board[0]["method"] == "GET"
    assert isinstance(board[0]["ms"], float) and board[0]["level"] == "info"
    assert any(e["status"] == 400 for e in requests)
    assert len({e["event"] for e in events if e.get("event") == "api started"}) == 1


def test_access_log_can_be_turned_off(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """PROJECTOR_API_ACCESS_LOG=false: requests leave no log line."""
    settings = settings_for()
    log = tmp_path / "api.log"
    proc, url = _run_api(settings, log, PROJECTOR_API_ACCESS_LOG="false")
    try:
        assert httpx.get(f"{url}/v1/leaderboards/day").status_code == 200
    finally:
        assert _stop(proc) == 0
    assert '"event": "request"' not in log.read_text()


def test_a_bad_setting_stops_start_up_with_one_line() -> None:
    """An invalid PROJECTOR_ variable is named in one line and exit status 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    env["PROJECTOR_API_PG_CONCURRENCY"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "api"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROJECTOR_API_PG_CONCURRENCY" in lines[0]
