"""Throwaway PostgreSQL and Redis servers for the tests, and a persistent pair for `make run`.

`postgres_for_tests()` and `redis_for_tests()` pick, in this order: the servers named by
PROJECTOR_TEST_PG_DSN / PROJECTOR_TEST_REDIS_URL; local server binaries started in a
temporary directory; testcontainers when a Docker engine answers. Only local servers can
be stopped, restarted or killed; the others raise `ServerControlUnsupported`.

As a command (`scripts/servers.py`), `up --dir .run` starts (or reuses) a persistent local
PostgreSQL and Redis under `.run/` and prints `export` lines for the projector; `down` stops them.
Those two accept no one without credentials: PostgreSQL asks every connection, socket or TCP,
for a SCRAM password, Redis's default user has a password; both are generated once and kept
in `.run/servers.json` (mode 0600). A `.run/` of the passwordless era is upgraded in place
(its data kept) on the next `up`. The throwaway test servers keep `trust` and a passwordless
Redis: they live in private temporary directories for one test run.
`roles` (after the migrations) creates the least-privilege PostgreSQL roles and Redis users
with `projector roles --apply`, passwords kept in `.run/servers.json`, and prints the
`export` lines that make the projector and the API log in as them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from projector.commands.roles import DEFAULT_API_ROLE, DEFAULT_RUN_ROLE

PG_DSN_ENV = "PROJECTOR_TEST_PG_DSN"
REDIS_URL_ENV = "PROJECTOR_TEST_REDIS_URL"
# "local" or "containers" forces one kind of server instead of trying local binaries first.
SERVERS_ENV = "PROJECTOR_TEST_SERVERS"
PG_BINDIR_ENV = "PROJECTOR_PG_BINDIR"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
POSTGRES_IMAGE = "postgres:15"
REDIS_IMAGE = "redis:7"
UP_POSTGRES_PORT = 55432
UP_REDIS_PORT = 56379

# Every harness PostgreSQL runs with these; throwaway ones also trade durability for speed
# (fsync off survives a killed server, not a crashed machine, which is all tests need).
_PG_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "shared_buffers": "256MB",
}
_PG_THROWAWAY_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.NNNNN" must fit too
# pg_hba.conf of a server with a password: SCRAM for every connection, socket or TCP.
_HBA_SCRAM = """\
# harness/servers.py: every connection, socket or TCP, logs in with a password (SCRAM)
local   all          all                  scram-sha-256
host    all          all    127.0.0.1/32  scram-sha-256
host    all          all    ::1/128       scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all    127.0.0.1/32  scram-sha-256
host    replication  all    ::1/128       scram-sha-256
"""

StopMode = Literal["smart", "fast", "immediate"]


class HarnessError(RuntimeError):
    """A test server could not be found, started or stopped."""


class ServerControlUnsupported(HarnessError, NotImplementedError):
    """The server is not a local process that the harness may stop, restart or kill."""


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections in TIME_WAIT must not make the port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return fields[0] != "Z"


def _runs_in(pid: int, directory: Path) -> bool:
    """Whether live process `pid` has `directory` as its working directory.

    PostgreSQL and Redis chdir into their data directories, so this tells our server
    apart from an unrelated process that inherited a stale PID file's number.
    """
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == str(directory.resolve()) and _pid_alive(pid)


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _death_signal_setter(sig: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send `sig` to the child if the test process dies.

    atexit covers normal exits; this covers a test runner that is killed outright.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_death_signal() -> None:
        prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG

    return set_death_signal


def _spawn(
    argv: list[str],
    log_path: Path,
    *,
    cwd: Path,
    run_as: pwd.struct_passwd | None,
    detached: bool,
    death_signal: int,
) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=None if detached else _death_signal_setter(death_signal),
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
        )


def _postgres_os_user() -> pwd.struct_passwd | None:
    """The account that runs PostgreSQL: `postgres` when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise HarnessError(
            "running as root, but there is no `postgres` OS user to run PostgreSQL as "
            "(create one with `useradd --system postgres`, or run as another user)"
        ) from None


def _reachable_by(path: Path, user: pwd.struct_passwd | None) -> bool:
    """Whether `user` may traverse every directory above `path` (None: ourselves)."""
    if user is None:
        return True
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for parent in path.resolve().parents:
        mode = parent.stat()
        if mode.st_uid == user.pw_uid:
            allowed = mode.st_mode & stat.S_IXUSR
        elif mode.st_gid in groups:
            allowed = mode.st_mode & stat.S_IXGRP
        else:
            allowed = mode.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _path_key(path: Path) -> str:
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


def find_postgres_bindir() -> Path | None:
    """The directory holding `initdb` and `postgres`: $PROJECTOR_PG_BINDIR, PATH, or the
    newest /usr/lib/postgresql/*/bin (Debian keeps them off PATH)."""
    candidates: list[Path] = []
    if os.environ.get(PG_BINDIR_ENV):
        candidates.append(Path(os.environ[PG_BINDIR_ENV]))
    for name in ("postgres", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [d for d in debian.iterdir() if d.name.replace(".", "").isdigit()]
        versions.sort(key=lambda d: [int(part) for part in d.name.split(".")], reverse=True)
        candidates.extend(d / "bin" for d in versions)
    candidates.append(Path("/usr/local/pgsql/bin"))
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")):
            return directory
    return None


def find_redis_server() -> Path | None:
    """The `redis-server` executable on PATH (or in /usr/bin, /usr/local/bin)."""
    found = shutil.which("redis-server") or shutil.which(
        "redis-server", path="/usr/local/bin:/usr/bin"
    )
    return Path(found) if found else None


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers; otherwise why not, in a few words."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return "the docker Python package is not installed"
    # A failed probe leaves its socket to the garbage collector: collect it here, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure means: no usable engine
            return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        finally:
            gc.collect()
    return None


def unique_database_name(hint: str) -> str:
    """A fresh database name that still says which test made it."""
    slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- PostgreSQL


class PostgresServer(ABC):
    """A PostgreSQL with `wal_level=logical` that tests may create databases in."""

    kind: str = "abstract"
    #: Whether stop/restart/kill9 work (local processes only).
    process_control: bool = False

    def __init__(self) -> None:
        self._overrides: set[str] = set()

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def data_dir(self) -> Path:
        raise ServerControlUnsupported(
            f"no data directory for PostgreSQL ({self.kind} server, not a local process)"
        )

    @abstractmethod
    def dsn(self, dbname: str = "postgres") -> str:
        """Connection string for `dbname` on this server."""

    @abstractmethod
    def start(self) -> None:
        """Start the server if it is not running, and wait until it accepts connections."""

    def stop(self, mode: StopMode = "fast") -> None:
        raise ServerControlUnsupported(
            f"cannot stop PostgreSQL ({self.kind} server, not a local process)"
        )

    def restart(self, mode: StopMode = "fast") -> None:
        raise ServerControlUnsupported(
            f"cannot restart PostgreSQL ({self.kind} server, not a local process)"
        )

    def kill9(self) -> None:
        raise ServerControlUnsupported(
            f"cannot kill PostgreSQL ({self.kind} server, not a local process)"
        )

    @abstractmethod
    def cleanup(self) -> None:
        """Stop the server (if the harness started it) and remove what the harness made."""

    def _admin_dsn(self) -> str:
        return self.dsn("postgres")

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self._admin_dsn(), autocommit=True, connect_timeout=10) as conn:
            yield conn

    def _log_hint(self) -> str:
        """What to add to a start-up error: the server log's tail, where there is one."""
        return ""

    def _answers_for_us(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the server behind `conn` is this one, not another on the same port."""
        return True

    def _wait_ready(self, alive: Callable[[], bool] | None = None, dsn: str | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if alive is not None and not alive():
                raise HarnessError(
                    f"PostgreSQL on port {self.port} exited while starting{self._log_hint()}"
                )
            try:
                with psycopg.connect(dsn or self._admin_dsn(), connect_timeout=2) as conn:
                    if self._answers_for_us(conn):
                        return
                problem = "another server answers on that port"
            except psycopg.OperationalError as exc:
                problem = str(exc).strip()
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"PostgreSQL on port {self.port} was not ready within {START_TIMEOUT:.0f} s "
                    f"({problem}){self._log_hint()}"
                )
            time.sleep(0.05)

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """Create an empty database and return its DSN."""
        with self._admin() as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if not (exist_ok and conn.execute(query, [name]).fetchone()):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database after ending its sessions (walsenders included) and its slots."""
        deadline = time.monotonic() + 30
        with self._admin() as conn:
            while True:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    [name],
                )
                slots = conn.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                    [name],
                ).fetchall()
                for slot_name, active_pid in slots:
                    try:
                        if active_pid is None:
                            conn.execute("SELECT pg_drop_replication_slot(%s)", [slot_name])
                        else:
                            conn.execute("SELECT pg_terminate_backend(%s)", [active_pid])
                    except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                        pass  # re-acquired or dropped meanwhile; the next round sees it
                try:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )
                    return
                except psycopg.errors.ObjectInUse as exc:
                    if time.monotonic() > deadline:
                        raise HarnessError(f"could not drop database {name!r}: {exc}") from exc
                time.sleep(0.05)

    def set_config(self, **params: object) -> None:
        """Override server settings (ALTER SYSTEM) and apply them now: by reloading, or by
        restarting for settings that need it. A value of None removes the override.

        Overrides stay until `reset_config()` (the `pg_dsn` fixture calls it after each test).
        """
        if not params:
            return
        self.start()
        with self._admin() as conn:
            contexts = dict(
                conn.execute(
                    "SELECT name, context FROM pg_settings WHERE name = ANY(%s)", [list(params)]
                ).fetchall()
            )
            unknown = sorted(set(params) - set(contexts))
            if unknown:
                raise HarnessError(f"unknown PostgreSQL setting(s): {', '.join(unknown)}")
            needs_restart = any(contexts[name] == "postmaster" for name in params)
            if needs_restart and not self.process_control:
                raise ServerControlUnsupported(
                    f"setting {', '.join(params)} needs a restart, impossible on PostgreSQL "
                    f"({self.kind} server, not a local process)"
                )
            try:
                for name, value in params.items():
                    if value is None:
                        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
                        self._overrides.discard(name)
                    else:
                        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
                        conn.execute(
                            sql.SQL("ALTER SYSTEM SET {} = {}").format(
                                sql.Identifier(name), sql.Literal(text)
                            )
                        )
                        self._overrides.add(name)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ServerControlUnsupported(f"cannot change settings: {exc}") from exc
            conn.execute("SELECT pg_reload_conf()")
        if needs_restart:
            self.restart()
        else:
            self._wait_reloaded({name: value is not None for name, value in params.items()})

    def reset_config(self) -> None:
        """Remove every override made by `set_config`."""
        if self._overrides:
            self.set_config(**dict.fromkeys(sorted(self._overrides)))

    def _wait_reloaded(self, overridden: Mapping[str, bool]) -> None:
        # pg_reload_conf() only signals the postmaster: poll until new sessions see the file.
        deadline = time.monotonic() + 10
        while True:
            with self._admin() as conn:
                rows = conn.execute(
                    "SELECT name, coalesce(sourcefile LIKE '%%postgresql.auto.conf', false)"
                    " FROM pg_settings WHERE name = ANY(%s)",
                    [list(overridden)],
                ).fetchall()
            if all(from_auto == overridden[name] for name, from_auto in rows):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"PostgreSQL did not apply {', '.join(overridden)} on reload")
            time.sleep(0.02)


class LocalPostgres(PostgresServer):
    """A PostgreSQL process started from local binaries, in a directory of its own.

    Without `base_dir` everything lives in a temporary directory removed by `cleanup()`
    (registered with atexit). With `persistent=True` the server keeps durable settings,
    outlives this Python process and can be adopted again by a later `start()`. With
    `password` the superuser `postgres` has it and every connection (socket or TCP) must
    give a password (`scram-sha-256`); without, everyone is trusted (throwaway servers).
    """

    kind = "local"
    process_control = True

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        persistent: bool = False,
        bindir: Path | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__()
        self._password = password
        found = bindir or find_postgres_bindir()
        if found is None:
            raise HarnessError(
                "no PostgreSQL server binaries (initdb, postgres) on PATH or in "
                f"/usr/lib/postgresql/*/bin; install postgresql-15 or set {PG_BINDIR_ENV}"
            )
        self._bindir = found
        self._user = _postgres_os_user()
        self._temporary = base_dir is None
        if base_dir is None:
            tmp = Path(tempfile.gettempdir())
            parent = tmp if _reachable_by(tmp / "x", self._user) else Path("/tmp")
            base_dir = Path(tempfile.mkdtemp(prefix="projector-pg-", dir=parent))
        self._base = base_dir.resolve()
        self._base.mkdir(parents=True, exist_ok=True)
        _give_to(self._base, self._user)
        if not _reachable_by(self.data_dir, self._user):
            raise HarnessError(
                f"the postgres OS user cannot reach {self._base}: a directory above it is "
                "closed to other users (choose a place under /tmp or /var/tmp)"
            )
        self._persistent = persistent
        self._port_given = port is not None
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        if self._temporary:
            atexit.register(self.cleanup)

    @property
    def port(self) -> int:
        return self._port

    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def log_path(self) -> Path:
        return self._base / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        own = self._base / "sock"
        if len(str(own)) <= _SOCKET_PATH_MAX - 20:
            return own
        return Path("/tmp") / f"projector-pg-sock-{_path_key(self._base)}"

    def dsn(self, dbname: str = "postgres") -> str:
        login = f"postgres:{quote(self._password, safe='')}" if self._password else "postgres"
        return f"postgresql://{login}@127.0.0.1:{self._port}/{quote(dbname, safe='')}"

    @property
    def hba_path(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def postmaster_pid(self) -> int | None:
        """The running postmaster's PID, or None."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._proc = None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _runs_in(pid, self.data_dir) else None

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def start(self) -> None:
        if self.is_running():
            self._wait_ready(self.is_running)
            if not self._requires_password():  # started by the passwordless version
                with self._admin() as conn:
                    self._set_password(conn)
                    self._write_hba()
                    conn.execute("SELECT pg_reload_conf()")
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        elif not self._requires_password():
            self._upgrade_from_trust()
        for attempt in range(3):
            self._launch()
            try:
                self._wait_ready(self.is_running)
                return
            except HarnessError:
                taken = "could not bind" in _tail(self.log_path, self._log_offset)
                if self.is_running() or self._port_given or not taken or attempt == 2:
                    raise
                self._port = free_port()  # lost a race for the port: try another

    def _log_hint(self) -> str:
        tail = _tail(self.log_path, self._log_offset)
        return f"; log {self.log_path}:\n{tail}"

    def _answers_for_us(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SHOW data_directory").fetchone()
        return row is not None and Path(row[0]) == self.data_dir

    def _requires_password(self) -> bool:
        """Whether the server asks what it should: nothing (no password), else SCRAM for
        every connection (the pg_hba.conf `_write_hba` writes)."""
        if self._password is None:
            return True
        try:
            return self.hba_path.read_text().startswith(_HBA_SCRAM)
        except FileNotFoundError:
            return False

    def _write_hba(self) -> None:
        self.hba_path.write_text(_HBA_SCRAM)
        _give_to(self.hba_path, self._user)

    def _set_password(self, conn: psycopg.Connection[Any]) -> None:
        """Give `postgres` the password, hashed here (SCRAM) so no log ever sees it."""
        assert self._password is not None
        verifier = conn.pgconn.encrypt_password(
            self._password.encode(), b"postgres", b"scram-sha-256"
        )
        conn.execute(
            sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier.decode()))
        )

    def _socket_dsn(self) -> str:
        return make_conninfo(
            host=str(self.socket_dir), port=str(self._port), user="postgres", dbname="postgres"
        )

    def _upgrade_from_trust(self) -> None:
        """A data directory of the passwordless version, stopped: start it reachable only
        through a socket closed to other OS users, set the password, require it, stop."""
        self._launch(private=True)
        try:
            self._wait_ready(self.is_running, dsn=self._socket_dsn())
            with psycopg.connect(self._socket_dsn(), autocommit=True) as conn:
                self._set_password(conn)
            self._write_hba()
        finally:
            self.stop("fast")

    def _initdb(self) -> None:
        argv = [
            str(self._bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            "postgres",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        pwfile = self._base / "initdb.pw"
        if self._password is None:
            argv += ["--auth", "trust"]
        else:
            # Readable by the server's OS user only, and only while initdb runs.
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(self._password + "\n")
            _give_to(pwfile, self._user)
            argv += ["--auth", "scram-sha-256", "--pwfile", str(pwfile)]
        try:
            result = subprocess.run(
                argv,
                cwd=self._base,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
                extra_groups=[] if self._user else None,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise HarnessError(
                f"initdb into {self.data_dir} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        settings = dict(_PG_SETTINGS)
        if not self._persistent:
            settings.update(_PG_THROWAWAY_SETTINGS)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Added by harness/servers.py\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in settings.items())
        if self._password is not None:
            self._write_hba()

    def _launch(self, *, private: bool = False) -> None:
        """Start the postmaster; `private`: no TCP, a socket for this OS user alone."""
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        _give_to(sock, self._user)
        self.log_path.touch()
        self._log_offset = self.log_path.stat().st_size
        argv = [
            str(self._bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self._port),
            "-k",
            str(sock),
            *(
                ["-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"]
                if private
                else ["-c", "listen_addresses=127.0.0.1"]
            ),
        ]
        self._proc = _spawn(
            argv,
            self.log_path,
            cwd=self._base,
            run_as=self._user,
            detached=self._persistent,
            death_signal=signal.SIGQUIT,
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down with pg_ctl's meaning of `mode`; no-op when not running."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        _signal(pid, _PG_STOP_SIGNALS[mode])
        if not _wait_gone([pid], STOP_TIMEOUT):
            self.kill9()
            raise HarnessError(f"PostgreSQL {pid} ignored a {mode} shutdown; it was killed")
        self._reap()

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop and start again on the same port and data."""
        self.stop(mode)
        self.start()

    def kill9(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would; start() recovers."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = _children(pid)
        for victim in [pid, *children]:
            _signal(victim, signal.SIGKILL)
        if not _wait_gone([pid, *children], 10):
            raise HarnessError(f"PostgreSQL processes {[pid, *children]} survived SIGKILL")
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def cleanup(self) -> None:
        atexit.unregister(self.cleanup)
        try:
            self.stop("fast")
        except HarnessError:
            self.kill9()
        if self._temporary:
            shutil.rmtree(self._base, ignore_errors=True)
            if self.socket_dir != self._base / "sock":
                shutil.rmtree(self.socket_dir, ignore_errors=True)


def _import_postgres_container() -> Any:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the community split
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer


def _import_redis_container() -> Any:
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers before the community split
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.redis import RedisContainer
    return RedisContainer


class ContainerPostgres(PostgresServer):
    """PostgreSQL in a testcontainers container.

    Docker maps the port afresh when a container restarts, so stop, restart and kill9 are
    not offered: tests that need them are skipped on containers.
    """

    kind = "container"

    def __init__(self, image: str = POSTGRES_IMAGE) -> None:
        super().__init__()
        self._image = image
        self._container: Any = None
        self._host = ""
        self._port = 0

    @property
    def port(self) -> int:
        if self._container is None:
            raise HarnessError("the PostgreSQL container is not started")
        return self._port

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:postgres@{self._host}:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        if self._container is not None:
            return
        settings = dict(_PG_SETTINGS, **_PG_THROWAWAY_SETTINGS)
        command = ["postgres"]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        container = _import_postgres_container()(
            self._image, username="postgres", password="postgres", dbname="postgres", driver=None
        ).with_command(command)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            container.start()
        self._container = container
        atexit.register(self.cleanup)
        self._host = container.get_container_host_ip()
        self._port = int(container.get_exposed_port(5432))
        self._wait_ready()

    def cleanup(self) -> None:
        atexit.unregister(self.cleanup)
        if self._container is not None:
            self._container.stop()
            self._container = None


class EnvironmentPostgres(PostgresServer):
    """A PostgreSQL someone else runs, named by PROJECTOR_TEST_PG_DSN: used, never controlled."""

    kind = "environment"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn

    @property
    def port(self) -> int:
        return int(conninfo_to_dict(self._dsn).get("port") or 5432)

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(self._dsn, dbname=dbname)

    def _admin_dsn(self) -> str:
        return self._dsn

    def start(self) -> None:
        self._wait_ready()

    def cleanup(self) -> None:
        pass  # not ours to stop


# --------------------------------------------------------------------------- Redis


class RedisServer(ABC):
    """A Redis that tests may flush at will."""

    kind: str = "abstract"
    process_control: bool = False

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def url(self, db: int = 0) -> str:
        """redis:// URL of logical database `db`."""

    @abstractmethod
    def start(self) -> None:
        """Start the server if it is not running, and wait until it answers PING."""

    def stop(self) -> None:
        raise ServerControlUnsupported(
            f"cannot stop Redis ({self.kind} server, not a local process)"
        )

    def restart(self) -> None:
        raise ServerControlUnsupported(
            f"cannot restart Redis ({self.kind} server, not a local process)"
        )

    def kill9(self) -> None:
        raise ServerControlUnsupported(
            f"cannot kill Redis ({self.kind} server, not a local process)"
        )

    @abstractmethod
    def cleanup(self) -> None:
        """Stop the server (if the harness started it) and remove what the harness made."""

    def client(self, db: int = 0) -> redis.Redis:
        """A new client; close it (or use it in `with`)."""
        return redis.Redis.from_url(self.url(db), socket_connect_timeout=2, socket_timeout=30)

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def _log_hint(self) -> str:
        """What to add to a start-up error: the server log's tail, where there is one."""
        return ""

    def _answers_for_us(self, client: redis.Redis) -> bool:
        """Whether the server behind `client` is this one, not another on the same port."""
        return True

    def _wait_ready(self, alive: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if alive is not None and not alive():
                raise HarnessError(
                    f"Redis on port {self.port} exited while starting{self._log_hint()}"
                )
            try:
                with self.client() as client:
                    if client.ping() and self._answers_for_us(client):
                        return
                problem = "another server answers on that port"
            except redis.exceptions.ConnectionError as exc:  # BusyLoadingError is one too
                problem = str(exc).strip()
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"Redis on port {self.port} was not ready within {START_TIMEOUT:.0f} s "
                    f"({problem}){self._log_hint()}"
                )
            time.sleep(0.02)


class LocalRedis(RedisServer):
    """A redis-server process in a directory of its own.

    Throwaway by default: no persistence, so `restart()` brings it back empty on the same
    port. With `persistent=True` it keeps an append-only file and outlives this process.
    With `password` the default user needs it (set in a config file of mode 0600, never on
    the command line, which every local user can read); without, it needs none.
    """

    kind = "local"
    process_control = True

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        persistent: bool = False,
        password: str | None = None,
    ) -> None:
        self._password = password
        found = find_redis_server()
        if found is None:
            raise HarnessError("no redis-server on PATH; install redis-server")
        self._executable = found
        self._temporary = base_dir is None
        self._base = (base_dir or Path(tempfile.mkdtemp(prefix="projector-redis-"))).resolve()
        self._base.mkdir(parents=True, exist_ok=True)
        self._persistent = persistent
        self._port_given = port is not None
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        if self._temporary:
            atexit.register(self.cleanup)

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_path(self) -> Path:
        return self._base / "redis.log"

    @property
    def pid_path(self) -> Path:
        return self._base / "redis.pid"

    def url(self, db: int = 0) -> str:
        login = f":{quote(self._password, safe='')}@" if self._password else ""
        return f"redis://{login}127.0.0.1:{self._port}/{db}"

    @property
    def config_path(self) -> Path:
        return self._base / "redis.conf"

    def _default_user(self) -> list[str]:
        """ACL rules of the default user: an admin that must give the password."""
        assert self._password is not None
        digest = hashlib.sha256(self._password.encode()).hexdigest()
        return ["on", "resetpass", f"#{digest}", "~*", "&*", "+@all"]

    def _write_config(self) -> None:
        """The config file that gives the default user its password, mode 0600."""
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.config_path.chmod(0o600)  # also when it existed before
        with os.fdopen(fd, "w") as file:
            file.write(f"user default {' '.join(self._default_user())}\n")

    def _require_password(self) -> None:
        """A server started by the passwordless version, still running: its default user
        gets the password now (the config file gives it from the next start)."""
        with redis.Redis(
            host="127.0.0.1", port=self._port, socket_connect_timeout=2, socket_timeout=10
        ) as anonymous:
            try:
                anonymous.ping()
            except redis.exceptions.AuthenticationError:
                return  # it asks for a password already (and was started with the file)
            anonymous.execute_command("ACL", "SETUSER", "default", *self._default_user())
        self._write_config()

    def pid(self) -> int | None:
        """The running server's PID, or None."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._proc = None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _runs_in(pid, self._base) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        if self.is_running():
            if self._password is not None:
                self._require_password()
            self._wait_ready(self.is_running)
            return
        for attempt in range(3):
            self._launch()
            try:
                self._wait_ready(self.is_running)
                return
            except HarnessError:
                taken = "Address already in use" in _tail(self.log_path, self._log_offset)
                if self.is_running() or self._port_given or not taken or attempt == 2:
                    raise
                self._port = free_port()  # lost a race for the port: try another

    def _log_hint(self) -> str:
        return f"; log {self.log_path}:\n{_tail(self.log_path, self._log_offset)}"

    def _answers_for_us(self, client: redis.Redis) -> bool:
        info = client.info("server")
        return info.get("process_id") == self.pid()

    def _launch(self) -> None:
        self.log_path.touch()
        self._log_offset = self.log_path.stat().st_size
        persistence = ["--appendonly", "yes"] if self._persistent else ["--appendonly", "no"]
        config = []
        if self._password is not None:
            self._write_config()
            config = [str(self.config_path)]
        argv = [
            str(self._executable),
            *config,
            "--port",
            str(self._port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self._base),
            "--pidfile",
            str(self.pid_path),
            "--logfile",
            "",
            "--daemonize",
            "no",
            "--save",
            "",
            *persistence,
        ]
        self._proc = _spawn(
            argv,
            self.log_path,
            cwd=self._base,
            run_as=None,
            detached=self._persistent,
            death_signal=signal.SIGTERM,
        )

    def stop(self) -> None:
        """Shut down (SIGTERM); no-op when not running."""
        pid = self.pid()
        if pid is None:
            return
        _signal(pid, signal.SIGTERM)
        if not _wait_gone([pid], STOP_TIMEOUT):
            self.kill9()
            raise HarnessError(f"Redis {pid} ignored SIGTERM; it was killed")
        self._reap()

    def restart(self) -> None:
        """Stop and start again on the same port (empty unless persistent)."""
        self.stop()
        self.start()

    @property
    def rdb_path(self) -> Path:
        """Where SAVE writes its snapshot, and the file a start loads when it exists."""
        return self._base / "dump.rdb"

    def restart_from(self, snapshot: Path | None) -> None:
        """Stop, then start on the same port holding exactly `snapshot` (an RDB file saved
        earlier, e.g. a copy of `rdb_path` after SAVE), or nothing at all when None."""
        self.stop()
        if snapshot is None:
            with contextlib.suppress(FileNotFoundError):
                self.rdb_path.unlink()
        else:
            shutil.copyfile(snapshot, self.rdb_path)
        self.start()

    def kill9(self) -> None:
        """SIGKILL the server; start() brings it back."""
        pid = self.pid()
        if pid is None:
            return
        _signal(pid, signal.SIGKILL)
        if not _wait_gone([pid], 10):
            raise HarnessError(f"Redis {pid} survived SIGKILL")
        self._reap()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def cleanup(self) -> None:
        atexit.unregister(self.cleanup)
        try:
            self.stop()
        except HarnessError:
            self.kill9()
        if self._temporary:
            shutil.rmtree(self._base, ignore_errors=True)


class ContainerRedis(RedisServer):
    """Redis in a testcontainers container; like ContainerPostgres, it cannot be restarted."""

    kind = "container"

    def __init__(self, image: str = REDIS_IMAGE) -> None:
        self._image = image
        self._container: Any = None
        self._host = ""
        self._port = 0

    @property
    def port(self) -> int:
        if self._container is None:
            raise HarnessError("the Redis container is not started")
        return self._port

    def url(self, db: int = 0) -> str:
        return f"redis://{self._host}:{self.port}/{db}"

    def start(self) -> None:
        if self._container is not None:
            return
        container = _import_redis_container()(self._image).with_command(
            ["redis-server", "--save", "", "--appendonly", "no"]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            container.start()
        self._container = container
        atexit.register(self.cleanup)
        self._host = container.get_container_host_ip()
        self._port = int(container.get_exposed_port(6379))
        self._wait_ready()

    def cleanup(self) -> None:
        atexit.unregister(self.cleanup)
        if self._container is not None:
            self._container.stop()
            self._container = None


class EnvironmentRedis(RedisServer):
    """A Redis someone else runs, named by PROJECTOR_TEST_REDIS_URL: flushed, never controlled."""

    kind = "environment"

    def __init__(self, url: str) -> None:
        self._url = url

    @property
    def port(self) -> int:
        return urlsplit(self._url).port or 6379

    def url(self, db: int = 0) -> str:
        parts = urlsplit(self._url)
        if parts.scheme == "unix":
            query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(db))]
            return parts._replace(query=urlencode(query)).geturl()
        return parts._replace(path=f"/{db}").geturl()

    def start(self) -> None:
        self._wait_ready()

    def cleanup(self) -> None:
        pass  # not ours to stop


# --------------------------------------------------------------------------- selection


def _server_choice(environ: Mapping[str, str]) -> str:
    choice = environ.get(SERVERS_ENV, "").strip().lower()
    if choice not in ("", "local", "containers"):
        raise HarnessError(f"{SERVERS_ENV} must be 'local' or 'containers', not {choice!r}")
    return choice


def postgres_for_tests(environ: Mapping[str, str] = os.environ) -> PostgresServer:
    """The PostgreSQL the tests should use (not yet started); see the module docstring."""
    if environ.get(PG_DSN_ENV):
        return EnvironmentPostgres(environ[PG_DSN_ENV])
    choice = _server_choice(environ)
    problems = []
    if choice in ("", "local"):
        try:
            return LocalPostgres()
        except HarnessError as exc:
            problems.append(str(exc))
    if choice in ("", "containers"):
        reason = docker_unavailable_reason()
        if reason is None:
            return ContainerPostgres()
        problems.append(f"no Docker engine answered ({reason})")
    raise HarnessError(f"no PostgreSQL for the tests: {'; '.join(problems)}; or set {PG_DSN_ENV}")


def redis_for_tests(environ: Mapping[str, str] = os.environ) -> RedisServer:
    """The Redis the tests should use (not yet started); see the module docstring."""
    if environ.get(REDIS_URL_ENV):
        return EnvironmentRedis(environ[REDIS_URL_ENV])
    choice = _server_choice(environ)
    problems = []
    if choice in ("", "local"):
        try:
            return LocalRedis()
        except HarnessError as exc:
            problems.append(str(exc))
    if choice in ("", "containers"):
        reason = docker_unavailable_reason()
        if reason is None:
            return ContainerRedis()
        problems.append(f"no Docker engine answered ({reason})")
    raise HarnessError(f"no Redis for the tests: {'; '.join(problems)}; or set {REDIS_URL_ENV}")


# --------------------------------------------------------------------------- command line


def _persistent_servers(state: Mapping[str, Any]) -> tuple[LocalPostgres, LocalRedis]:
    return (
        LocalPostgres(
            Path(state["postgres_dir"]),
            port=int(state["postgres_port"]),
            persistent=True,
            password=state.get("postgres_password"),
        ),
        LocalRedis(
            Path(state["redis_dir"]),
            port=int(state["redis_port"]),
            persistent=True,
            password=state.get("redis_password"),
        ),
    )


def _load_state(run_dir: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((run_dir / "servers.json").read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise HarnessError(f"{run_dir / 'servers.json'} is not valid JSON: {exc}") from exc
    return state


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the state, passwords included, readable by this OS user alone."""
    path = run_dir / "servers.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    path.chmod(0o600)  # also when it existed before
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(state, indent=2) + "\n")


def up(run_dir: Path, database: str) -> dict[str, str]:
    """Start (or reuse) the persistent pair under `run_dir`; return their environment."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(run_dir)
    if "postgres_dir" not in state:
        # PostgreSQL runs as `postgres` when we are root; it must reach its data directory.
        pg_dir = run_dir / "postgres"
        if not _reachable_by(pg_dir, _postgres_os_user()):
            pg_dir = Path("/var/tmp") / f"projector-run-{_path_key(run_dir)}" / "postgres"
        state["postgres_dir"] = str(pg_dir)
        state["redis_dir"] = str(run_dir / "redis")
    state.setdefault("postgres_port", UP_POSTGRES_PORT)
    state.setdefault("redis_port", UP_REDIS_PORT)
    # Superuser and admin passwords: a .run/ of the passwordless version gets them here.
    state.setdefault("postgres_password", secrets.token_urlsafe(18))
    state.setdefault("redis_password", secrets.token_urlsafe(18))
    for attempt in range(3):
        pg, rd = _persistent_servers(state)
        if not pg.is_running() and not _port_is_free(pg.port):
            state["postgres_port"] = free_port()
        if not rd.is_running() and not _port_is_free(rd.port):
            state["redis_port"] = free_port()
        pg, rd = _persistent_servers(state)
        _save_state(run_dir, state)
        try:
            pg.start()
            rd.start()
            break
        except HarnessError:
            # Another process took a port between the check and the bind: another one.
            if attempt == 2 or (_port_is_free(pg.port) and _port_is_free(rd.port)):
                raise
    pg.create_database(database, exist_ok=True)
    print(
        f"PostgreSQL on 127.0.0.1:{pg.port} (data {pg.data_dir}), Redis on 127.0.0.1:{rd.port}; "
        f"stop them with: python scripts/servers.py down --dir {run_dir}",
        file=sys.stderr,
    )
    return {"PROJECTOR_PG_DSN": pg.dsn(database), "PROJECTOR_REDIS_URL": rd.url()}


RUN_ROLE = DEFAULT_RUN_ROLE
API_ROLE = DEFAULT_API_ROLE


def roles(run_dir: Path, owner_env: Mapping[str, str]) -> dict[str, str]:
    """Create or update the projector's and the API's roles and Redis users through the owner
    DSN and admin URL in `owner_env` (run the migrations first: grants name the tables), with
    passwords generated once and kept in `run_dir`; return the environment of processes that
    log in as them (PROJECTOR_PG_DSN, PROJECTOR_REDIS_URL and the API's own pair)."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(run_dir)
    passwords = state.setdefault("passwords", {})
    for role in (RUN_ROLE, API_ROLE):
        passwords.setdefault(role, secrets.token_urlsafe(18))
    _save_state(run_dir, state)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROJECTOR_")}
    env.update(owner_env)
    env.update(
        PROJECTOR_RUN_ROLE=RUN_ROLE,
        PROJECTOR_API_ROLE=API_ROLE,
        PROJECTOR_RUN_PASSWORD=passwords[RUN_ROLE],
        PROJECTOR_API_PASSWORD=passwords[API_ROLE],
    )
    for extra in ([], ["--redis"]):
        done = subprocess.run(
            [sys.executable, "-m", "projector", "roles", "--apply", *extra],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise HarnessError(f"projector roles --apply {' '.join(extra)}: {done.stderr.strip()}")
    pg_dsn, redis_url = owner_env["PROJECTOR_PG_DSN"], owner_env["PROJECTOR_REDIS_URL"]
    return {
        "PROJECTOR_PG_DSN": _with_login(pg_dsn, RUN_ROLE, passwords[RUN_ROLE]),
        "PROJECTOR_REDIS_URL": _with_login(redis_url, RUN_ROLE, passwords[RUN_ROLE]),
        "PROJECTOR_API_PG_DSN": _with_login(pg_dsn, API_ROLE, passwords[API_ROLE]),
        "PROJECTOR_API_REDIS_URL": _with_login(redis_url, API_ROLE, passwords[API_ROLE]),
    }


def _with_login(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{quote(user)}:{quote(password, safe='')}@{host}").geturl()


def down(run_dir: Path, *, purge: bool = False) -> None:
    """Stop the persistent pair under `run_dir`; with `purge`, delete their data too."""
    run_dir = run_dir.resolve()
    state = _load_state(run_dir)
    if not state:
        print(f"no servers recorded in {run_dir}", file=sys.stderr)
        return
    pg, rd = _persistent_servers(state)
    pg.stop("fast")
    rd.stop()
    print(f"stopped the servers under {run_dir}", file=sys.stderr)
    if purge:
        pg_dir = Path(state["postgres_dir"])
        outside = not pg_dir.is_relative_to(run_dir)  # the /var/tmp fallback of up()
        shutil.rmtree(pg_dir.parent if outside else pg_dir, ignore_errors=True)
        shutil.rmtree(pg.socket_dir, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
