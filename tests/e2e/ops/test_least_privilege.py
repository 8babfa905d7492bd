"""Least privilege: the roles and ACL users `projector roles` makes can do their job and no more,
and a missing grant is one line naming it with exit code 4."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from harness import servers
from projector import read_functions
from projector.commands.migrate import migrate
from projector.commands.roles import (
    REDIS_API_COMMANDS,
    Grantee,
    apply_postgres,
    apply_redis,
    source_tables,
)
from projector.privileges import privilege_denial
from projector.settings import Settings, load_settings
from projector.worker import Worker

from .support import ApiServer, insert_rows, serve, wait_caught_up

ROOT = Path(__file__).resolve().parents[3]
PREFIX = "lp:"


@dataclass
class Deployment:
    """A migrated database and Redis with both roles and both ACL users made by roles.py."""

    owner_dsn: str
    admin_url: str
    run_dsn: str
    api_dsn: str
    run_url: str
    api_url: str
    run: Grantee
    api: Grantee

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "pg_dsn": self.run_dsn,
            "redis_url": self.run_url,
            "api_pg_dsn": self.api_dsn,
            "api_redis_url": self.api_url,
            "slot": f"lp_{uuid.uuid4().hex[:10]}",
            "key_prefix": PREFIX,
            "reconnect_max_delay": 1.0,
            "api_access_log": False,
        }
        values.update(overrides)
        return load_settings(**values)

    def env(self, settings: Settings) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
        env.update(
            PROJECTOR_PG_DSN=settings.pg_dsn,
            PROJECTOR_REDIS_URL=settings.redis_url,
            PROJECTOR_SLOT=settings.slot,
            PROJECTOR_KEY_PREFIX=settings.key_prefix,
            PROJECTOR_LOG_LEVEL="warning",
        )
        return env


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


@pytest.fixture
def deployment(pg_dsn: str, redis_url: str) -> Iterator[Deployment]:
    """Roles and users with names of their own, removed afterwards."""
    migrate(pg_dsn, "projector")
    tag = uuid.uuid4().hex[:8]
    run = Grantee(f"lp_run_{tag}", f"run-{tag}-pw", replication=True)
    api = Grantee(f"lp_api_{tag}", f"api-{tag}-pw", replication=False)
    apply_postgres(pg_dsn, [run, api], source_tables())
    apply_postgres(pg_dsn, [run, api], source_tables())  # idempotent
    apply_redis(redis_url, PREFIX, run, api)
    try:
        yield Deployment(
            owner_dsn=pg_dsn,
            admin_url=redis_url,
            run_dsn=_with_user(pg_dsn, run.name, run.password or ""),
            api_dsn=_with_user(pg_dsn, api.name, api.password or ""),
            run_url=_with_user(redis_url, run.name, run.password or ""),
            api_url=_with_user(redis_url, api.name, api.password or ""),
            run=run,
            api=api,
        )
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for role in (run.name, api.name):
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    [role],
                )
            time.sleep(0.2)
            conn.execute(f'DROP OWNED BY "{run.name}", "{api.name}"')
            conn.execute(f'DROP ROLE "{run.name}", "{api.name}"')
        with redis.Redis.from_url(redis_url) as admin:
            admin.execute_command("ACL", "DELUSER", run.name, api.name)


class _Projector:
    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self.thread.start()

    def _run(self, settings: Settings) -> None:
        try:
            Worker(settings, self.stop).run_forever()
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, self.error


def _projector(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "projector", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_projector_role_streams_rebuilds_and_reports(deployment: Deployment) -> None:
    """As its own role and ACL user the projector builds, streams, reports status, verifies
    and replays."""
    settings = deployment.settings()
    insert_rows(deployment.owner_dsn, [("ann", None), ("bob", None)])
    projector = _Projector(settings)
    try:
        # Built from a snapshot by the role, then streamed.
        wait_caught_up(deployment.owner_dsn, deployment.admin_url, PREFIX)
        insert_rows(deployment.owner_dsn, [("ann", None)])
        wait_caught_up(deployment.owner_dsn, deployment.admin_url, PREFIX)
        env = deployment.env(settings)
        status = _projector(["status", "--json"], env)
        assert status.returncode == 0, status.stdout + status.stderr
        verify = _projector(["verify"], env)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        replay = _projector(["replay", "--timeout", "60"], env)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        insert_rows(deployment.owner_dsn, [("cy", None)])
        wait_caught_up(deployment.owner_dsn, deployment.admin_url, PREFIX)
    finally:
        projector.close()
    with redis.Redis.from_url(deployment.admin_url) as admin:
        assert admin.zscore(f"{PREFIX}lb:pomodoros:all:all", "ann") == 2


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO pomodoros (user_id) VALUES ('x')",
        "UPDATE pomodoros SET user_id = 'x'",
        "DELETE FROM users",
        "TRUNCATE pomodoros",
        "INSERT INTO users (id, display_name) VALUES ('x', 'X')",
        "CREATE TABLE public.mine (id int)",
    ],
)
@pytest.mark.parametrize("role", ["run", "api"])
def test_roles_cannot_write_tables(deployment: Deployment, role: str, statement: str) -> None:
    """Neither role may change the source tables or the schema."""
    dsn = deployment.run_dsn if role == "run" else deployment.api_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pomodoros").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_api_role_reads_but_cannot_replicate(deployment: Deployment) -> None:
    """The API's role reads the tables but may not open a replication connection."""
    with psycopg.connect(deployment.api_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() is not None
        flags = conn.execute(
            "SELECT rolreplication, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert flags == (False, False, False, False)
    with pytest.raises(psycopg.OperationalError, match="replication role"):
        psycopg.connect(deployment.api_dsn, replication="database")


def test_api_serves_from_redis_and_postgres_with_its_own_role_and_user(
    deployment: Deployment,
) -> None:
    """The read API answers from Redis as its ACL user and falls back to PostgreSQL as its
    read-only role (PROJECTOR_API_PG_DSN, PROJECTOR_API_REDIS_URL)."""
    settings = deployment.settings()
    insert_rows(deployment.owner_dsn, [("ann", None), ("ann", None), ("bob", None)])
    projector = _Projector(settings)
    try:
        wait_caught_up(deployment.owner_dsn, deployment.admin_url, PREFIX)
    finally:
        projector.close()
    api = ApiServer(settings)
    try:
        body = api.json("/v1/leaderboards/all", min_lsn="0/1")
        assert body["source"] == "redis" and body["entries"][0]["user_id"] == "ann"
        assert api.json("/v1/users/ann")["source"] == "redis"
        assert api.json("/readyz")["source"] == "redis"
    finally:
        api.close()
    unreachable = settings.model_copy(update={"api_redis_url": "redis://127.0.0.1:1/0"})
    api = ApiServer(unreachable)
    try:
        body = api.json("/v1/leaderboards/all")
        assert body["source"] == "postgres" and body["entries"][0]["score"] == 2
        assert api.json("/v1/leaderboards/day/users/bob")["source"] == "postgres"
    finally:
        api.close()


def test_projector_redis_user_stays_under_its_prefix(deployment: Deployment) -> None:
    """The projector's ACL user writes under the prefix and nowhere else, nor administers."""
    with redis.Redis.from_url(deployment.run_url) as client:
        client.set(f"{PREFIX}probe", "1")
        client.publish(f"{PREFIX}watermark", "x")
        for command in (
            ("SET", "other:key", "1"),
            ("GET", "other:key"),
            ("DEL", "other:key"),
            ("FLUSHALL",),
            ("CONFIG", "GET", "requirepass"),
            ("KEYS", "*"),
            ("ACL", "LIST"),
            ("SHUTDOWN",),
            ("PUBLISH", "other:channel", "x"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        # Inside a script, Redis checks every call against the user too.
        with pytest.raises(redis.ResponseError, match="can't access") as refused:
            client.eval("return redis.call('SET', 'other:key', '1')", 0)
        denial = privilege_denial(refused.value, role=deployment.run.name)
        assert denial is not None and f"ACL SETUSER {deployment.run.name} ~" in str(denial)
        client.eval(f"return redis.call('SET', '{PREFIX}probe', '2')", 0)


def test_api_redis_user_only_reads_and_subscribes(deployment: Deployment) -> None:
    """The API's ACL user reads under the prefix and subscribes; it cannot write (ZADD is
    NOPERM)."""
    with redis.Redis.from_url(deployment.admin_url) as admin:
        admin.zadd(f"{PREFIX}lb:all:all", {"ann": 3})
        admin.set("other:key", "1")
    with redis.Redis.from_url(deployment.api_url) as client:
        assert client.zscore(f"{PREFIX}lb:all:all", "ann") == 3
        for command in (
            ("ZADD", f"{PREFIX}lb:all:all", "1", "eve"),
            ("HSET", f"{PREFIX}watermark", "lsn", "0/0"),
            ("DEL", f"{PREFIX}lb:all:all"),
            ("GET", "other:key"),
            ("EVAL", "return 1", 0),
            ("PUBLISH", f"{PREFIX}watermark", "x"),
            ("SCRIPT", "FLUSH"),
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        pubsub = client.pubsub()
        pubsub.subscribe(f"{PREFIX}watermark")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        with redis.Redis.from_url(deployment.admin_url) as admin:
            admin.publish(f"{PREFIX}watermark", "0/1")
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == b"0/1"
        pubsub.close()
        other = client.pubsub()
        with pytest.raises(redis.exceptions.NoPermissionError):
            other.subscribe("other:channel")
            other.get_message(timeout=5)
        other.close()
    assert "zadd" not in REDIS_API_COMMANDS and "evalsha" not in REDIS_API_COMMANDS


def test_api_redis_user_runs_only_the_functions_the_projector_loaded(
    deployment: Deployment,
) -> None:
    """The projector's ACL user loads the read functions; the API's user calls them
    (FCALL_RO) and may run no code of its own: EVAL_RO, EVAL, EVALSHA(_RO), SCRIPT LOAD,
    FUNCTION LOAD/DELETE/FLUSH and FCALL are NOPERM."""
    watermark = f"{PREFIX}watermark"
    with redis.Redis.from_url(deployment.admin_url) as admin:
        admin.execute_command("FUNCTION", "FLUSH")
        admin.hset(watermark, mapping={"lsn": "0/10", "commit_time": ""})
        # Cached by someone else: EVALSHA_RO would find it, were the API allowed to run it.
        sha = admin.script_load("#!lua flags=no-writes\nreturn 1")
    with redis.Redis.from_url(deployment.run_url) as run:
        pipe = run.pipeline(transaction=False)
        read_functions.queue_load(pipe)
        assert pipe.execute() == [read_functions.LIBRARY.encode()]
        with pytest.raises(redis.exceptions.NoPermissionError):
            run.execute_command("FUNCTION", "FLUSH")
    with redis.Redis.from_url(deployment.api_url) as client:
        reply = client.execute_command("FCALL_RO", read_functions.WATERMARK, 1, watermark)
        assert reply == [b"0/10", b"", None]
        for command in (
            ("EVAL_RO", "#!lua flags=no-writes\nreturn 1", 0),
            ("EVAL", "return 1", 0),
            ("EVALSHA_RO", sha, 0),
            ("EVALSHA", sha, 0),
            ("SCRIPT", "LOAD", "return 1"),
            ("FUNCTION", "LOAD", "REPLACE", read_functions.CODE),
            ("FUNCTION", "DELETE", read_functions.LIBRARY),
            ("FUNCTION", "FLUSH"),
            ("FCALL", read_functions.WATERMARK, 1, watermark),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    with redis.Redis.from_url(deployment.admin_url) as admin:
        assert admin.execute_command("FUNCTION", "LIST", "LIBRARYNAME", read_functions.LIBRARY)


def _answers_from(api: ApiServer, source: str, timeout: float = 30.0) -> dict[str, Any]:
    """The all-time board once ``source`` answers it (the projector may still be starting)."""
    deadline = time.monotonic() + timeout
    while (body := api.json("/v1/leaderboards/all"))["source"] != source:
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    return body


def _scores(body: dict[str, Any]) -> dict[str, int]:
    return {entry["user_id"]: entry["score"] for entry in body["entries"]}


def test_api_answers_from_postgres_while_the_read_functions_are_missing(
    deployment: Deployment,
) -> None:
    """With the watermark in place but the read functions gone (FUNCTION FLUSH), the API as
    its ACL user answers every route from PostgreSQL and /readyz says so; the projector's
    next session loads them again and Redis answers."""
    settings = deployment.settings()
    insert_rows(deployment.owner_dsn, [("ann", None), ("ann", None), ("bob", None)])
    projector = _Projector(settings)
    try:
        wait_caught_up(deployment.owner_dsn, deployment.admin_url, PREFIX)
    finally:
        projector.close()
    with redis.Redis.from_url(deployment.admin_url) as admin:
        admin.execute_command("FUNCTION", "FLUSH")
        assert admin.hget(f"{PREFIX}watermark", "lsn") is not None
    with serve(settings) as api:
        body = api.json("/v1/leaderboards/all")
        assert body["source"] == "postgres" and _scores(body) == {"ann": 2, "bob": 1}
        assert api.json("/v1/leaderboards/all/users/bob")["source"] == "postgres"
        assert api.json("/v1/users/ann")["source"] == "postgres"
        ready = api.json("/readyz")
        assert ready["source"] == "postgres" and ready["redis"]["built"] is False
        projector = _Projector(settings)
        try:
            assert _scores(_answers_from(api, "redis")) == {"ann": 2, "bob": 1}
            assert api.json("/readyz")["source"] == "redis"
        finally:
            projector.close()


def test_after_redis_restarts_empty_the_api_falls_back_until_the_projector_rebuilt(
    deployment: Deployment, redis_server: servers.RedisServer
) -> None:
    """Redis restarted empty (its ACL users restored, as an aclfile would): the API answers
    from PostgreSQL until the projector has rebuilt, which loads the read functions again."""
    settings = deployment.settings()
    insert_rows(deployment.owner_dsn, [("ann", None), ("ann", None), ("bob", None)])
    projector = _Projector(settings)
    try:
        wait_caught_up(deployment.owner_dsn, deployment.admin_url, PREFIX)
    finally:
        projector.close()
    redis_server.restart()
    apply_redis(deployment.admin_url, PREFIX, deployment.run, deployment.api)
    with serve(settings) as api:
        body = api.json("/v1/leaderboards/all")
        assert body["source"] == "postgres" and _scores(body) == {"ann": 2, "bob": 1}
        projector = _Projector(settings)
        try:
            assert _scores(_answers_from(api, "redis")) == {"ann": 2, "bob": 1}
        finally:
            projector.close()
    with redis.Redis.from_url(deployment.admin_url) as admin:
        assert admin.execute_command("FUNCTION", "LIST", "LIBRARYNAME", read_functions.LIBRARY)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's own error line (log lines may come before it), and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("projector:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_role_without_replication_exits_4_naming_the_grant(deployment: Deployment) -> None:
    """`projector run` as a role without REPLICATION stops at once: exit 4, one line."""
    settings = deployment.settings(pg_dsn=deployment.api_dsn)
    result = _projector(["run"], deployment.env(settings))
    assert result.returncode == 4
    line = _one_line(result)
    assert f"ALTER ROLE {deployment.api.name} REPLICATION" in line
    assert deployment.api.password not in result.stderr  # type: ignore[operator]


def test_role_without_select_exits_4_naming_the_grant(deployment: Deployment) -> None:
    """`projector replay` as a role that may not read pomodoros: exit 4, the GRANT named."""
    with psycopg.connect(deployment.owner_dsn, autocommit=True) as conn:
        conn.execute(f'REVOKE SELECT ON pomodoros FROM "{deployment.run.name}"')
    result = _projector(["replay", "--timeout", "30"], deployment.env(deployment.settings()))
    assert result.returncode == 4, result.stderr
    line = _one_line(result)
    assert f"GRANT SELECT ON TABLE pomodoros TO {deployment.run.name}" in line


def test_redis_user_without_a_command_exits_4_naming_it(deployment: Deployment) -> None:
    """`projector clear` as the API's read-only user: exit 4, the ACL rule named."""
    settings = deployment.settings(redis_url=deployment.api_url)
    result = _projector(["clear", "--yes"], deployment.env(settings))
    assert result.returncode == 4
    line = _one_line(result)
    assert f"ACL SETUSER {deployment.api.name} +scan" in line
    assert deployment.api.password not in result.stderr  # type: ignore[operator]


def test_roles_command_prints_without_secrets_and_applies_twice(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`projector roles` prints SQL and ACL lines without passwords; --apply is repeatable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    env.update(
        PROJECTOR_PG_DSN=deployment.owner_dsn,
        PROJECTOR_REDIS_URL=deployment.admin_url,
        PROJECTOR_KEY_PREFIX=PREFIX,
        PROJECTOR_RUN_ROLE=deployment.run.name,
        PROJECTOR_API_ROLE=deployment.api.name,
        PROJECTOR_RUN_PASSWORD="s3cret-run",
        PROJECTOR_API_PASSWORD="s3cret-api",
    )
    printed = _projector(["roles"], env)
    assert printed.returncode == 0, printed.stderr
    assert f'ALTER ROLE "{deployment.run.name}" WITH LOGIN' in printed.stdout
    assert "REPLICATION" in printed.stdout and "s3cret" not in printed.stdout
    acl = _projector(["roles", "--redis"], env)
    assert acl.returncode == 0 and "s3cret" not in acl.stdout
    assert f"ACL SETUSER {deployment.api.name} reset on #" in acl.stdout
    assert f"%R~{PREFIX}*" in acl.stdout
    for args in (["roles", "--apply"], ["roles", "--apply"], ["roles", "--redis", "--apply"]):
        applied = _projector(args, env)
        assert applied.returncode == 0, applied.stderr
        assert "s3cret" not in applied.stdout + applied.stderr
    # The passwords took effect (PostgreSQL stores a SCRAM verifier, Redis a hash).
    with psycopg.connect(deployment.owner_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [deployment.run.name]
        ).fetchone()
    assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")
    with redis.Redis.from_url(
        _with_user(deployment.admin_url, deployment.api.name, "s3cret-api")
    ) as client:
        assert client.ping()
    help_text = _projector(["roles", "--help"], env)
    assert help_text.returncode == 0 and "--apply" in help_text.stdout


def test_api_role_missing_select_is_503_not_500(deployment: Deployment) -> None:
    """A fallback query refused for lack of SELECT answers 503 and logs the grant, not 500."""
    with psycopg.connect(deployment.owner_dsn, autocommit=True) as conn:
        conn.execute(f'REVOKE SELECT ON pomodoros FROM "{deployment.api.name}"')
    settings = deployment.settings(api_redis_url="redis://127.0.0.1:1/0")
    with serve(settings) as api:
        response = api.get("/v1/leaderboards/day")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
