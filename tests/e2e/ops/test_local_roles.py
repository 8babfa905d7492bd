"""`make run`'s servers: after migrating as the owner, `servers.py roles` makes the projector and
the API log in as least-privilege roles and Redis users, not as superusers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[3]
SERVERS = ROOT / "scripts/servers.py"


def test_servers_roles_exports_least_privilege_logins(tmp_path: Path) -> None:
    """`servers.py roles` prints DSNs and URLs of the two roles; they replicate / read only."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}

    def cli(*args: str) -> dict[str, str]:
        done = subprocess.run(
            [sys.executable, str(SERVERS), *args, "--dir", str(run_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        return {
            k.removeprefix("export "): v.strip("'") for k, v in (x.split("=", 1) for x in lines)
        }

    try:
        owner = cli("up")
        migrate = subprocess.run(
            [sys.executable, "-m", "projector", "migrate"],
            env={**env, **owner},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr
        logins = cli("roles")
        assert cli("roles") == logins  # the same passwords, kept in the run directory
        assert set(logins) == {
            "PROJECTOR_PG_DSN",
            "PROJECTOR_REDIS_URL",
            "PROJECTOR_API_PG_DSN",
            "PROJECTOR_API_REDIS_URL",
        }
        assert oct((run_dir / "servers.json").stat().st_mode & 0o777) == "0o600"
        with psycopg.connect(logins["PROJECTOR_PG_DSN"], replication="database") as conn:
            row = conn.execute("IDENTIFY_SYSTEM").fetchone()
            assert row is not None
        with psycopg.connect(logins["PROJECTOR_API_PG_DSN"], autocommit=True) as conn:
            assert conn.execute(
                "SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user"
            ).fetchone() == (False,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM pomodoros")
        with redis.Redis.from_url(logins["PROJECTOR_REDIS_URL"]) as client:
            assert client.set("pomo:probe", "1")
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.set("elsewhere", "1")
        with redis.Redis.from_url(logins["PROJECTOR_API_REDIS_URL"]) as client:
            assert client.get("pomo:probe") == b"1"
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.set("pomo:probe", "2")
        run_local = (ROOT / "scripts/run_local.py").read_text()
        assert "servers.roles(" in run_local
    finally:
        subprocess.run(
            [sys.executable, str(SERVERS), "down", "--purge", "--dir", str(run_dir)],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
