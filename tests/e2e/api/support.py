"""Helpers of the read-API suite, independent of the code under test.

``ApiServer`` serves an app with uvicorn in a thread on a free port; ``ProjectorThread`` and
``ProjectorProcess`` run the projector; ``oracle`` computes every board from the inserted rows
with zoneinfo and ``isocalendar`` alone, and ``ranked`` applies the ranking rule (competition
ranks, ties by user id in code-point order) to it.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import redis
import uvicorn

from api.app import App, create_app
from harness.projector_process import ProjectorProcess
from projector.core.lsn import parse_lsn
from projector.settings import Settings
from projector.worker import Worker

Board = dict[str, int]
Boards = dict[tuple[str, str], Board]
ROOT = Path(__file__).resolve().parents[3]


class ApiServer:
    """The app for ``settings`` served by uvicorn in a thread, with an HTTP client."""

    def __init__(self, settings: Settings) -> None:
        self.app: App = create_app(settings, configure_logs=False)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params or None)

    def json(self, path: str, **params: Any) -> dict[str, Any]:
        """GET ``path``; fail unless it answers 200; return the body."""
        response = self.get(path, **params)
        assert response.status_code == 200, (path, params, response.status_code, response.text)
        body: dict[str, Any] = response.json()
        return body

    def close(self) -> None:
        self.client.close()
        self._server.should_exit = True
        self._thread.join(10)


@contextmanager
def serve(settings: Settings) -> Iterator[ApiServer]:
    """An ``ApiServer`` for the duration of the block."""
    server = ApiServer(settings)
    try:
        yield server
    finally:
        server.close()


class ProjectorThread:
    """``Worker.run_forever`` in a thread, stopped by ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=Worker(settings, self._stop).run_forever, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the projector did not stop"


def start_projector(settings: Settings, log: Path) -> ProjectorProcess:
    """``projector run`` with ``settings`` as a child process, to pause (SIGSTOP) and resume."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    for name in ("pg_dsn", "redis_url", "slot", "publication", "timezone", "key_prefix"):
        env[f"PROJECTOR_{name.upper()}"] = str(getattr(settings, name))
    env["PROJECTOR_RECONNECT_MAX_DELAY"] = "1"
    return ProjectorProcess(env, log, cwd=ROOT).start()


def current_lsn(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wait_caught_up(settings: Settings, timeout: float = 30.0) -> None:
    """Wait until Redis's watermark is at or past ``pg_current_wal_lsn()`` read now."""
    target = parse_lsn(current_lsn(settings.pg_dsn))
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(settings.redis_url) as client:
        while True:
            lsn = client.hget(f"{settings.key_prefix}watermark", "lsn")
            if lsn is not None and parse_lsn(lsn.decode()) >= target:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Redis did not catch up with {target:X} in {timeout} s")
            time.sleep(0.01)


def insert_rows(dsn: str, rows: list[tuple[str, datetime | None]]) -> None:
    """Insert pomodoros (``None``: completed now) in one transaction."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, coalesce(%s, now()))",
            rows,
        )


# --- the oracle -------------------------------------------------------------------------------


def oracle(instants: list[tuple[str, datetime]], tz: ZoneInfo) -> Boards:
    """Every board of the (user, instant) rows, by local date, ISO week, month and year."""
    boards: dict[tuple[str, str], Counter[str]] = {}
    for user, instant in instants:
        day = instant.astimezone(tz).date()
        iso = day.isocalendar()
        for key in (
            ("day", day.isoformat()),
            ("week", f"{iso.year:04d}-W{iso.week:02d}"),
            ("month", f"{day.year:04d}-{day.month:02d}"),
            ("year", f"{day.year:04d}"),
            ("all", "all"),
        ):
            boards.setdefault(key, Counter())[user] += 1
    return {key: dict(counter) for key, counter in boards.items()}


def ranked(board: Board, names: dict[str, str]) -> list[dict[str, Any]]:
    """The board's entries in rank order: score descending, then user id by code point."""
    order = sorted(board.items(), key=lambda item: (-item[1], item[0]))
    return [
        {
            "rank": 1 + sum(1 for score in board.values() if score > own),
            "user_id": user,
            "display_name": names.get(user),
            "score": own,
        }
        for user, own in order
    ]


def without_source(body: dict[str, Any]) -> dict[str, Any]:
    """The body less what legitimately differs between stores."""
    return {k: v for k, v in body.items() if k not in ("source", "as_of")}
