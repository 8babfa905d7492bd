"""Helpers of the live suite: the whole system on real servers, and a Server-Sent Events reader.

``Stack`` is what ``make run`` runs, on the harness's PostgreSQL and Redis: a migrated
database of its own, ``projector run`` as a process, and the API as ``python -m api`` (real
uvicorn, its own port). ``ThreadServer`` serves an ``App`` with uvicorn in a thread, for
tests that look inside the app. ``EventStream`` reads an event stream line by line with a
read timeout, so "nothing arrives within N seconds" is a ``httpx.ReadTimeout``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

from api.app import App, create_app
from harness.servers import free_port
from projector.commands.migrate import migrate
from projector.settings import load_settings
from tests.e2e.projector.support import (
    WIDE_RETENTION,
    ProjectorProcess,
    projector_process,
    settings_env,
    wait_until_caught_up,
)

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


class ApiProcess:
    """``python -m api`` on a free port, until ``stop``."""

    def __init__(self, env: dict[str, str], log: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api", "--port", str(self.port), "--workers", str(workers)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the API did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        if workers > 1:
            time.sleep(0.5 * workers)  # every worker up, not only the first

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@dataclass
class Stack:
    """PostgreSQL, Redis, ``projector run`` and the API, as ``make run`` has them."""

    config: dict[str, Any]
    env: dict[str, str]
    projector: ProjectorProcess
    api: ApiProcess
    logs: Path
    extra: list[ApiProcess] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return str(self.config["pg_dsn"])

    @property
    def prefix(self) -> str:
        return str(self.config["key_prefix"])

    def start_api(self, workers: int = 1) -> ApiProcess:
        """Another API process on the same stores (stopped with the stack)."""
        api = ApiProcess(self.env, self.logs / f"api-{len(self.extra) + 1}.log", workers)
        self.extra.append(api)
        return api

    def execute(self, statement: str, params: Any = None) -> None:
        """Run one statement in its own committed transaction, as an app would."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement, params)

    def current_lsn(self) -> str:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def caught_up(self, redis_client: Any) -> None:
        wait_until_caught_up(
            self.dsn, redis_client, self.prefix, alive=self.projector.check, timeout=30
        )

    def stop(self) -> None:
        for api in [self.api, *self.extra]:
            api.stop()
        self.projector.close()


def start_stack(
    postgres_server: Any,
    redis_server: Any,
    logs: Path,
    name: str,
    schema: Path | None = None,
    **overrides: Any,
) -> tuple[Stack, str]:
    """The whole system in a database of its own and under a key prefix of its own;
    ``schema``: SQL run after the migrations, before the projector starts (the tables of
    declared boards in ``boards_file``).

    Returns the stack and the database name (to drop afterwards).
    """
    postgres_server.start()
    redis_server.start()
    logs.mkdir(parents=True, exist_ok=True)
    from harness import servers

    database = servers.unique_database_name(name)
    dsn = postgres_server.create_database(database)
    migrate(dsn, "projector")
    config: dict[str, Any] = {
        "pg_dsn": dsn,
        "redis_url": redis_server.url(),
        "slot": f"live_{uuid.uuid4().hex[:12]}",
        "publication": "projector",
        "timezone": "UTC",
        "key_prefix": f"live{uuid.uuid4().hex[:6]}:",
        "reconnect_max_delay": 1.0,
        "api_access_log": "false",
        **WIDE_RETENTION,
        **overrides,
    }
    settings = load_settings(**config)  # fail early on a bad override
    if schema is not None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(schema.read_text())  # type: ignore[arg-type]
        migrate(dsn, "projector", settings.boards)  # the boards' tables in the publication
    env = settings_env(config)
    projector = projector_process(config, logs / "projector.log").start()
    api = ApiProcess(env, logs / "api.log")
    return Stack(config, env, projector, api, logs), database


class ThreadServer:
    """An ``App`` served by uvicorn in a thread, on a loop the test can reach."""

    def __init__(self, app: App) -> None:
        self.app = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the API server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.app.close_streams)
        self.server.should_exit = True
        self._thread.join(15)
        assert not self._thread.is_alive(), "the API server did not stop"
        self.loop.close()


def thread_server(config: dict[str, Any], **overrides: Any) -> ThreadServer:
    """A ``ThreadServer`` of the app for ``config`` (Settings field names) and ``overrides``."""
    settings = load_settings(**{**config, **overrides})
    return ThreadServer(create_app(settings, configure_logs=False))


@dataclass
class Event:
    """One dispatched block of an event stream: data and id, or comments only."""

    data: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        assert self.data is not None, f"not a data event: {self}"
        body: dict[str, Any] = json.loads(self.data)
        return body


class EventStream:
    """``GET path`` as an event stream; ``next()`` waits at most ``read_timeout`` seconds."""

    def __init__(self, base_url: str, path: str, read_timeout: float = 5.0) -> None:
        self.client = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(10.0, read=read_timeout)
        )
        self._context = self.client.stream("GET", path)
        self.response = self._context.__enter__()
        self._lines = self.response.iter_lines()

    def next(self) -> Event:
        """The next block; ``StopIteration`` when the server ended the stream cleanly."""
        event = Event()
        seen = False
        for line in self._lines:
            if not line:
                if seen:
                    return event
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                event.comments.append(value)
            elif name == "data":
                event.data = value if event.data is None else event.data + "\n" + value
            elif name == "id":
                event.id = value
            elif name == "retry":
                event.retry = int(value)
        raise StopIteration

    def next_data(self) -> Event:
        """The next event with data, skipping comment-only blocks."""
        while True:
            event = self.next()
            if event.data is not None:
                return event

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.client.close()


def insert_pomodoros(
    dsn: str, rows: list[tuple[str, Any]], names: dict[str, str] | None = None
) -> str:
    """Insert users and pomodoros (``None``: now) in one transaction; return the LSN after."""
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            for user, name in (names or {}).items():
                cur.execute(
                    "INSERT INTO users (id, display_name) VALUES (%s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                    (user, name),
                )
            cur.executemany(
                "INSERT INTO pomodoros (user_id, completed_at) VALUES (%s, coalesce(%s, now()))",
                rows,
            )
        conn.commit()
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])
