"""Schemathesis against a real running API (uvicorn, PostgreSQL, Redis built by the projector):
every check passes, so the document allows nothing the API rejects and no input is a 5xx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.servers import free_port
from projector.commands.migrate import migrate

from .support import current_lsn, wait_caught_up

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
# The whole run, start-up included, stays well under a minute.
MAX_SECONDS = 25


@pytest.fixture
def running_api(pg_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`projector run` and `python -m api` as processes over a small dataset."""
    migrate(pg_dsn, "projector")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO users VALUES ('ann', 'Ann'), ('bob', 'Bob')")
        conn.execute(
            "INSERT INTO pomodoros (user_id, completed_at)"
            " SELECT 'u' || (g % 40), now() - (g % 400) * interval '1 day'"
            " FROM generate_series(1, 2000) AS g"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    env.update(
        PROJECTOR_PG_DSN=pg_dsn,
        PROJECTOR_REDIS_URL=redis_url,
        PROJECTOR_SLOT="schemathesis",
        PROJECTOR_KEY_PREFIX="st:",
        PROJECTOR_LOG_LEVEL="warning",
        PROJECTOR_API_ACCESS_LOG="false",
        PROJECTOR_API_MIN_LSN_WAIT="0.05",
    )
    port = free_port()
    log = (tmp_path / "processes.log").open("wb")
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "projector", "run"], env=env, cwd=ROOT, stdout=log, stderr=log
        ),
        subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_caught_up(pg_dsn, redis_url, "st:")
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).json().get("source") == "redis":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "processes.log").read_text()
            time.sleep(0.1)
        yield base, pg_dsn
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.close()


def test_schemathesis_finds_nothing(running_api: tuple[str, str], tmp_path: Path) -> None:
    """Every schemathesis check (positive and negative data, statuses, content types, response
    schemas, each event of the event streams included, no server errors) passes against the
    running API within the time budget."""
    base, dsn = running_api
    env = dict(os.environ)
    env.update(
        SCHEMATHESIS_HOOKS="schemathesis_hooks",
        PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        PROJECTOR_TEST_SERVER_LSN=str(current_lsn(dsn)),
    )
    # Event streams never end: each is read up to its first event, whose data (the board's
    # JSON) is checked against the document like any other answer.
    config = tmp_path / "schemathesis.toml"
    # A request the schema refuses may be refused for its size too (413 body, 414 URL: a
    # group of up to 1,000 members is longer than the server's request line).
    config.write_text(
        "max-stream-events = 1\n"
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "406", "413", "414", "422", "428"]\n'
    )
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--max-time",
            str(MAX_SECONDS - 10),
            "--max-examples",
            "60",
            # One worker: CPython 3.11's ast.parse, which hypothesis calls to describe its
            # filters, is not thread-safe ("AST constructor recursion depth mismatch").
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 30,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "passed" in output and elapsed < 60, output[-2000:]
