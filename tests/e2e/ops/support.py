"""Helpers of the operations suite: the API served by uvicorn in a thread, rows, catching up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
import psycopg
import redis
import uvicorn

from api.app import create_app
from projector.core.lsn import parse_lsn
from projector.settings import Settings


class ApiServer:
    """The app for ``settings`` served by uvicorn in a thread on a free port."""

    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(
            create_app(settings, configure_logs=False),
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


def insert_rows(dsn: str, rows: list[tuple[str, datetime | None]]) -> None:
    """Insert pomodoros (``None``: completed now) in one transaction."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, coalesce(%s, now()))",
            rows,
        )


def current_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def wait_caught_up(dsn: str, redis_url: str, prefix: str, timeout: float = 30.0) -> None:
    """Wait until Redis's watermark is at or past ``pg_current_wal_lsn()`` read now."""
    target = current_lsn(dsn)
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(redis_url) as client:
        while True:
            lsn = client.hget(f"{prefix}watermark", "lsn")
            if lsn is not None and parse_lsn(lsn.decode()) >= target:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Redis did not catch up with {target:X} in {timeout} s")
            time.sleep(0.01)
