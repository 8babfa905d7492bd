"""The test-server harness: servers fit for logical replication, isolation, crash control."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from harness import servers

SERVERS_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "servers.py"
# Only a machine that runs its tests on containers lacks these; never this project's CI.
needs_local_binaries = pytest.mark.skipif(
    servers.find_postgres_bindir() is None or servers.find_redis_server() is None,
    reason="no local PostgreSQL or Redis binaries (tests run on containers)",
)


def test_postgres_has_logical_wal_and_creates_logical_slots(pg_dsn: str) -> None:
    """The test PostgreSQL runs wal_level=logical and decodes changes through a pgoutput slot."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION p FOR TABLE t")
        conn.execute("SELECT pg_create_logical_replication_slot('harness_slot', 'pgoutput')")
        conn.execute("INSERT INTO t VALUES (1)")
        changes = conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes("
            "'harness_slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')"
        ).fetchone()
    assert changes is not None and changes[0] >= 3  # begin, relation, insert, commit


def test_pg_dsn_databases_are_isolated(
    pg_dsn: str, postgres_server: servers.PostgresServer
) -> None:
    """A table made through pg_dsn is invisible from another database of the same server."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE only_here (id int)")
    other = servers.unique_database_name("other")
    other_dsn = postgres_server.create_database(other)
    try:
        assert other_dsn != pg_dsn
        with psycopg.connect(other_dsn) as conn:
            found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        assert found == (None,)
    finally:
        postgres_server.drop_database(other)


def test_drop_database_ends_sessions_and_replication_slots(
    postgres_server: servers.PostgresServer,
) -> None:
    """drop_database succeeds despite open sessions, a walsender and an idle logical slot."""
    name = servers.unique_database_name("busy")
    dsn = postgres_server.create_database(name)
    session = psycopg.connect(dsn)
    walsender = psycopg.connect(dsn, replication="database")
    try:
        session.execute("SELECT pg_create_logical_replication_slot('idle_slot', 'pgoutput')")
        session.commit()
        session.execute("SELECT 1")  # leave a transaction open
        made = walsender.pgconn.exec_(b"CREATE_REPLICATION_SLOT held TEMPORARY LOGICAL pgoutput")
        assert made.status == psycopg.pq.ExecStatus.TUPLES_OK

        postgres_server.drop_database(name)

        with psycopg.connect(postgres_server.dsn()) as admin:
            assert (
                admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchall()
                == []
            )
            slots = admin.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
        assert ("idle_slot",) not in slots and ("held",) not in slots
    finally:
        session.close()
        walsender.close()


def test_set_config_applies_settings_and_reset_restores_them(
    pg_dsn: str, postgres_server: servers.PostgresServer
) -> None:
    """set_config applies reloadable and restart-only settings; reset_config undoes both."""

    def show(setting: str) -> str:
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute(f"SHOW {setting}").fetchone()
        assert row is not None
        return str(row[0])

    postgres_server.set_config(max_slot_wal_keep_size="1MB")
    assert show("max_slot_wal_keep_size") == "1MB"
    postgres_server.set_config(max_wal_senders=11)  # restart-only on a local server
    assert show("max_wal_senders") == "11"

    postgres_server.reset_config()

    assert show("max_slot_wal_keep_size") == "-1"
    assert show("max_wal_senders") == "20"


def test_postgres_kill9_then_start_recovers_committed_data(
    pg_dsn: str, postgres_server: servers.PostgresServer
) -> None:
    """After kill9 the server is gone; start() recovers it on the same port with its data."""
    port = postgres_server.port
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE survivors (id int)")
        conn.execute("INSERT INTO survivors VALUES (42)")
    with psycopg.connect(pg_dsn):  # an idle session must not hinder the crash or recovery
        postgres_server.kill9()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2)
    postgres_server.start()
    assert postgres_server.port == port
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id FROM survivors").fetchall() == [(42,)]


def test_redis_restart_comes_back_empty_on_the_same_port(
    redis_url: str, redis_server: servers.RedisServer
) -> None:
    """restart() brings Redis back on its port with no data."""
    port = redis_server.port
    with redis.Redis.from_url(redis_url) as client:
        client.set("watermark", "0/16B3748")
        assert client.dbsize() == 1

    redis_server.restart()

    assert redis_server.port == port
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_redis_kill9_then_start_answers_again(
    redis_url: str, redis_server: servers.RedisServer
) -> None:
    """After kill9 Redis refuses connections; start() brings it back."""
    redis_server.kill9()

    with pytest.raises(redis.exceptions.ConnectionError), redis.Redis.from_url(redis_url) as client:
        client.ping()
    redis_server.start()
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_environment_servers_are_used_but_never_controlled(
    postgres_server: servers.PostgresServer, redis_server: servers.RedisServer
) -> None:
    """Servers named by the environment work for databases and flushes but refuse kill9."""
    environ = {
        servers.PG_DSN_ENV: postgres_server.dsn(),
        servers.REDIS_URL_ENV: redis_server.url(3),
    }
    pg = servers.postgres_for_tests(environ)
    rd = servers.redis_for_tests(environ)
    assert isinstance(pg, servers.EnvironmentPostgres)
    assert isinstance(rd, servers.EnvironmentRedis)
    pg.start()
    rd.start()
    name = servers.unique_database_name("env")
    with psycopg.connect(pg.create_database(name)) as conn:
        assert conn.info.dbname == name
    pg.drop_database(name)
    assert rd.url(5).endswith(f":{redis_server.port}/5")
    with pytest.raises(servers.ServerControlUnsupported):
        pg.kill9()
    with pytest.raises(servers.ServerControlUnsupported):
        rd.restart()


def test_unknown_server_kind_is_one_clear_error() -> None:
    """A bad PROJECTOR_TEST_SERVERS value is rejected with the variable's name."""
    with pytest.raises(servers.HarnessError, match=servers.SERVERS_ENV):
        servers.postgres_for_tests({servers.SERVERS_ENV: "docker"})


@needs_local_binaries
def test_failed_start_reports_the_server_log(postgres_server: servers.PostgresServer) -> None:
    """Starting on a port already taken fails quickly with the log's complaint in the error."""
    clash = servers.LocalPostgres(port=postgres_server.port)
    try:
        with pytest.raises(servers.HarnessError, match="could not bind"):
            clash.start()
    finally:
        clash.cleanup()


@needs_local_binaries
def test_cli_up_reuses_its_servers_and_down_stops_them(tmp_path: Path) -> None:
    """`servers.py up` starts a persistent pair, a second `up` reuses it, `down` stops it."""
    run_dir = tmp_path / "run"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(SERVERS_SCRIPT), *args, "--dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        first = cli("up")
        exports = dict(line.removeprefix("export ").split("=", 1) for line in first.splitlines())
        assert set(exports) == {"PROJECTOR_PG_DSN", "PROJECTOR_REDIS_URL"}
        with psycopg.connect(exports["PROJECTOR_PG_DSN"].strip("'")) as conn:
            conn.execute("CREATE TABLE kept (id int)")
        assert cli("up") == first

        cli("down")

        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(exports["PROJECTOR_PG_DSN"].strip("'"), connect_timeout=2)
        with (
            pytest.raises(redis.exceptions.ConnectionError),
            redis.Redis.from_url(exports["PROJECTOR_REDIS_URL"].strip("'")) as client,
        ):
            client.ping()
        assert cli("up") == first
        with psycopg.connect(exports["PROJECTOR_PG_DSN"].strip("'")) as conn:
            assert conn.execute("SELECT to_regclass('kept')").fetchone() == ("kept",)
    finally:
        cli("down", "--purge")


def _cli(run_dir: Path, *args: str) -> dict[str, str]:
    """Run `servers.py ARGS --dir run_dir`; its `export` lines as a dict."""
    done = subprocess.run(
        [sys.executable, str(SERVERS_SCRIPT), *args, "--dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.removeprefix("export ") for line in done.stdout.splitlines()]
    return {name: value.strip("'") for name, value in (line.split("=", 1) for line in lines)}


def _assert_credentials_required(run_dir: Path, exports: dict[str, str]) -> None:
    """PostgreSQL (socket and TCP, also replication) and Redis refuse a login without the
    generated passwords and accept the ones `up` exported; the state file is 0600."""
    state = json.loads((run_dir / "servers.json").read_text())
    assert oct((run_dir / "servers.json").stat().st_mode & 0o777) == "0o600"
    pg, rd = servers._persistent_servers(state)
    no_passfile = {"passfile": str(run_dir / "no-such-passfile"), "connect_timeout": 5}
    for host in ("127.0.0.1", str(pg.socket_dir)):
        for extra in ({}, {"replication": "database"}):
            with (
                pytest.raises(psycopg.OperationalError, match="password"),
                psycopg.connect(
                    host=host, port=pg.port, user="postgres", dbname="postgres",
                    **no_passfile, **extra,
                ),
            ):  # fmt: skip
                pass
        password = state["postgres_password"]
        with psycopg.connect(
            host=host, port=pg.port, user="postgres", dbname="postgres", password=password,
            **no_passfile,
        ) as conn:  # fmt: skip
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    with psycopg.connect(exports["PROJECTOR_PG_DSN"], **no_passfile) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with (
        redis.Redis(host="127.0.0.1", port=rd.port, socket_timeout=5) as anonymous,
        pytest.raises(redis.exceptions.AuthenticationError),
    ):
        anonymous.ping()
    with redis.Redis.from_url(exports["PROJECTOR_REDIS_URL"], socket_timeout=5) as admin:
        assert admin.ping()
        pid = admin.info("server")["process_id"]
    # Not on the command line, which every local user may read.
    assert state["redis_password"].encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert oct(rd.config_path.stat().st_mode & 0o777) == "0o600"


@needs_local_binaries
def test_make_run_servers_accept_no_one_without_the_generated_credentials(
    tmp_path: Path,
) -> None:
    """`servers.py up` (what `make run` starts) on a fresh `.run/` requires SCRAM passwords of
    PostgreSQL on its socket and on TCP and a password of Redis."""
    run_dir = tmp_path / "run"
    try:
        exports = _cli(run_dir, "up")
        _assert_credentials_required(run_dir, exports)
    finally:
        _cli(run_dir, "down", "--purge")


@needs_local_binaries
@pytest.mark.parametrize("running", [True, False], ids=["left-running", "stopped"])
def test_a_run_dir_of_the_passwordless_version_is_upgraded_in_place(
    tmp_path: Path, running: bool
) -> None:
    """A `.run/` made by the version with `trust` and a passwordless Redis (its servers still
    running, or stopped: then started afresh from the files `up` wrote) is secured by the
    next `up`, its data kept."""
    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    pg_dir = run_dir / "postgres"
    if not servers._reachable_by(pg_dir, servers._postgres_os_user()):  # as `up` places it
        pg_dir = Path("/var/tmp") / f"projector-run-{servers._path_key(run_dir)}" / "postgres"
    state = {
        "postgres_dir": str(pg_dir),
        "redis_dir": str(run_dir / "redis"),
        "postgres_port": servers.free_port(),
        "redis_port": servers.free_port(),
    }
    (run_dir / "servers.json").write_text(json.dumps(state))
    old_pg, old_redis = servers._persistent_servers(state)  # no passwords: the old servers
    try:
        old_pg.start()
        old_redis.start()
        old_pg.create_database("pomodoro")
        with psycopg.connect(old_pg.dsn("pomodoro"), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int)")
        with old_redis.client() as client:
            client.set("kept", "1")
            client.execute_command("BGREWRITEAOF")
        if not running:
            old_redis.stop()
            old_pg.stop()
        exports = _cli(run_dir, "up")
        _assert_credentials_required(run_dir, exports)
        with psycopg.connect(exports["PROJECTOR_PG_DSN"]) as conn:
            assert conn.execute("SELECT to_regclass('kept')").fetchone() == ("kept",)
        with redis.Redis.from_url(exports["PROJECTOR_REDIS_URL"]) as client:
            assert client.get("kept") == b"1"
    finally:
        _cli(run_dir, "down", "--purge")
        old_pg.cleanup()
        old_redis.cleanup()
