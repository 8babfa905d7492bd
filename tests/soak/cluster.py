"""The soak's own world: a PostgreSQL and a Redis it may restart at will, the TCP proxies
the projector reaches them through, and the `projector run` processes themselves.

The workload, the nemesis and the oracle connect to the servers directly; only the
projectors go through the proxies, so a network fault cuts the projector off and nobody
else. Every projector process logs JSON lines to a file of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from harness import servers
from harness.tcp_proxy import TcpProxy
from projector.commands.migrate import migrate
from projector.core.keys import Keys
from projector.logs import configure_logging
from tests.e2e.projector.support import (
    WIDE_RETENTION,
    projector_executable,
    settings_env,
    watermark,
)
from tests.soak import schema

PREFIX = "pomo:"
# The projector's own key names (watermark, heartbeat, replay request, build keys); the
# boards are read through read_redis alone.
KEYS = Keys(PREFIX)
SLOT = "soak"
PUBLICATION = "projector"
DATABASE = "soak"
ZONES = ("UTC", "America/New_York", "Asia/Kolkata")
# Short enough that a SIGSTOP longer than it keeps a round within seconds; the
# short_wal_sender_timeout fault lowers it further for a while.
BASE_WAL_SENDER_TIMEOUT = "3s"

# A table outside the publication: large transactions may write it first, so that the
# walsender decodes a while before their first published change (see workload.py).
_BALLAST_DDL = "CREATE TABLE IF NOT EXISTS soak_ballast (id bigserial PRIMARY KEY, note text)"


def _die_with_parent() -> None:
    """Pre-exec: SIGKILL the child when the thread that started it ends (PR_SET_PDEATHSIG);
    the soak starts projectors from its main thread only, so: when the soak dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


class Projector:
    """One `projector run` process; its JSON log lines are read incrementally."""

    def __init__(self, number: int, env: dict[str, str], log_path: Path) -> None:
        self.number = number
        self.env = env
        self.log_path = log_path
        self.timezone = env["PROJECTOR_TIMEZONE"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        # Set when the soak itself ends the process: any other exit is a finding.
        self.ended_on_purpose = False
        self._offset = 0

    def start(self) -> Projector:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [projector_executable(), "run"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the soak, which ends them itself
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        self.ended_on_purpose = True
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.paused = False

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM (finish the batch, acknowledge, exit 0); SIGKILL after ``timeout``."""
        self.ended_on_purpose = True
        if not self.running:
            return
        assert self.proc is not None
        if self.paused:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def pause(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def new_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written since the last call (other lines are skipped)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += end
        events = []
        for line in data[:end].splitlines():
            if line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def wait_logged(self, event: str, timeout: float) -> bool:
        """Wait until the process has logged ``event`` (not consuming it); False on timeout
        or when the process exited."""
        deadline = time.monotonic() + timeout
        needle = f'"event": "{event}"'.encode()
        while time.monotonic() < deadline and self.running:
            try:
                if needle in self.log_path.read_bytes():
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """Servers, proxies and projector processes of one soak run."""

    def __init__(self, workdir: Path, *, max_tx_changes: int) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.max_tx_changes = max_tx_changes
        self.pg = servers.LocalPostgres()
        self.redis = servers.LocalRedis()
        # Set by start(): they forward to the servers' ports, known once they run.
        self.pg_proxy: TcpProxy
        self.redis_proxy: TcpProxy
        self._proxies: list[TcpProxy] = []
        self.timezone = "UTC"
        self.projectors: list[Projector] = []
        self._spawned = 0

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg.start()
        self.redis.start()
        self.pg.set_config(wal_sender_timeout=BASE_WAL_SENDER_TIMEOUT)
        self.pg.create_database(DATABASE, exist_ok=True)
        configure_logging("warning")  # the soak prints its own progress, not migrate's
        migrate(self.dsn, PUBLICATION)  # users and pomodoros
        with self.connect() as conn:
            conn.execute(_BALLAST_DDL)
            schema.create(conn, datetime.now(UTC))
        migrate(self.dsn, PUBLICATION, schema.BOARDS)  # the publication covers every board
        self.pg_proxy = TcpProxy("127.0.0.1", self.pg.port, "postgres").start()
        self.redis_proxy = TcpProxy("127.0.0.1", self.redis.port, "redis").start()
        self._proxies = [self.pg_proxy, self.redis_proxy]

    def close(self) -> None:
        for projector in self.projectors:
            projector.kill9()
        for proxy in self._proxies:
            proxy.close()
        self.pg.cleanup()
        self.redis.cleanup()

    # -- addresses -------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """PostgreSQL, directly (workload, nemesis, oracle)."""
        return str(self.pg.dsn(DATABASE))

    @property
    def redis_url(self) -> str:
        """Redis, directly (nemesis, oracle, `projector replay`)."""
        return str(self.redis.url())

    def projector_config(self, timezone: str, *, proxied: bool = True) -> dict[str, Any]:
        """Settings (field names) of a projector; through the proxies unless told otherwise."""
        pg_port = self.pg_proxy.port if proxied else self.pg.port
        redis_port = self.redis_proxy.port if proxied else self.redis.port
        return {
            "pg_dsn": f"postgresql://postgres@127.0.0.1:{pg_port}/{DATABASE}",
            "redis_url": f"redis://127.0.0.1:{redis_port}/0",
            "slot": SLOT,
            "publication": PUBLICATION,
            "timezone": timezone,
            "key_prefix": PREFIX,
            "boards_file": str(schema.BOARDS_FILE),
            "max_tx_changes": self.max_tx_changes,
            "heartbeat_interval": 0.5,
            "reconnect_max_delay": 1.0,
            "log_format": "json",
            **WIDE_RETENTION,
        }

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=10)

    # -- projectors ------------------------------------------------------------------

    def spawn_projector(self) -> Projector:
        """Start one more `projector run` in the current time zone."""
        self._spawned += 1
        env = settings_env(self.projector_config(self.timezone))
        log_path = self.logs / f"projector-{self._spawned:05d}.log"
        projector = Projector(self._spawned, env, log_path).start()
        self.projectors.append(projector)
        return projector

    def running(self) -> list[Projector]:
        return [p for p in self.projectors if p.running]

    def active(self) -> Projector | None:
        """The process that streams (its PID is in the heartbeat), else any running one."""
        running = self.running()
        if not running:
            return None
        with contextlib.suppress(redis.RedisError), self.client() as client:
            pid = client.hget(KEYS.heartbeat, "pid")
            for projector in running:
                if pid is not None and int(pid) == projector.pid:
                    return projector
        return running[-1]

    def forget_exited(self) -> list[Projector]:
        """Drop exited processes from the list; return them (their logs were read)."""
        gone = [p for p in self.projectors if not p.running]
        self.projectors = [p for p in self.projectors if p.running]
        return gone

    # -- server facts ----------------------------------------------------------------

    def wal_sender_timeout(self) -> float:
        """The walsenders' timeout in seconds, as PostgreSQL applies it now."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT setting::float / 1000 FROM pg_settings WHERE name = 'wal_sender_timeout'"
            ).fetchone()
        assert row is not None
        return float(row[0])

    def set_wal_sender_timeout(self, value: str) -> None:
        self.pg.set_config(wal_sender_timeout=value)

    def watermark(self) -> dict[str, str]:
        with self.client() as client:
            return watermark(client, PREFIX)

    def drop_slot(self, timeout: float = 15.0) -> None:
        """Drop the projector's slot once no walsender holds it."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while True:
                row = conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
                ).fetchone()
                if row is None:
                    return
                if row[0] is None:
                    with contextlib.suppress(psycopg.errors.ObjectInUse):
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
                        return
                else:
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"slot {SLOT!r} stayed in use for {timeout:.0f} s")
                time.sleep(0.05)
