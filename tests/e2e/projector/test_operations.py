"""Operating the projector: idle WAL release, migrations, configuration errors and secrets."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from projector.commands.verify import verify

from .conftest import Projected
from .support import (
    current_wal_lsn,
    parse_lsn,
    projector_executable,
    projector_process,
    settings_env,
    slot_confirmed_lsn,
    watermark,
)


def run_cli(
    config: dict[str, Any], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [projector_executable(), *args],
        env=settings_env(config),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_idle_publication_still_advances_the_slot(
    db: psycopg.Connection[Any], config: dict[str, Any], projected: Projected
) -> None:
    """With writes only to unpublished tables, confirmed_flush_lsn advances within seconds."""
    db.execute("INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now())")
    projected.assert_exact()
    db.execute("CREATE TABLE audit (id bigserial PRIMARY KEY, payload text)")
    for _ in range(3):
        db.execute(
            "INSERT INTO audit (payload) SELECT repeat('x', 500) FROM generate_series(1, 200)"
        )
        target = current_wal_lsn(config["pg_dsn"])
        deadline = time.monotonic() + 10
        while (slot_confirmed_lsn(config["pg_dsn"], config["slot"]) or 0) < target:
            projected.alive and projected.alive()
            assert time.monotonic() < deadline, "the slot's confirmed position did not advance"
            time.sleep(0.05)
        assert parse_lsn(watermark(projected.client)["lsn"]) >= target
    assert projected.assert_exact().boards[("all", "all")] == {"ann": 1}


def test_migrate_twice_is_safe(pg_dsn: str, config: dict[str, Any]) -> None:
    """`projector migrate` run twice (and twice at once) applies each migration once."""
    fresh = dict(config, pg_dsn=pg_dsn)
    first = run_cli(fresh, "migrate")
    assert first.returncode == 0, first.stderr
    assert "applied 1 migration" in first.stdout or "applied" in first.stdout
    again = run_cli(fresh, "migrate")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        versions = conn.execute("SELECT count(*) FROM projector_schema_migrations").fetchone()
        tables = conn.execute(
            "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_publication_tables"
            " WHERE pubname = 'projector'"
        ).fetchone()
        conn.execute("INSERT INTO pomodoros (user_id) VALUES ('ann')")
    assert versions and versions[0] == len(list(Path("migrations").glob("*.sql")))
    assert tables and tables[0] == ["pomodoros", "users"]


def test_concurrent_migrations_are_safe(pg_dsn: str, config: dict[str, Any]) -> None:
    """Two `projector migrate` processes started together both succeed on a fresh database."""
    env = settings_env(dict(config, pg_dsn=pg_dsn))
    procs = [
        subprocess.Popen(
            [projector_executable(), "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), results


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROJECTOR_TIMEZONE", "Mars/Base"),
        ("PROJECTOR_MAX_TX_CHANGES", "abc"),
        ("PROJECTOR_MAX_TX_CHANGES", "0"),
        ("PROJECTOR_SLOT", "Bad-Slot"),
        ("PROJECTOR_REDIS_URL", "http://localhost:6379"),
        ("PROJECTOR_RETENTION_DAY_DAYS", "-1"),
    ],
)
def test_bad_setting_stops_run_with_one_line_naming_it(
    variable: str, value: str, config: dict[str, Any]
) -> None:
    """A bad setting makes `projector run` exit non-zero with one clear line naming the variable."""
    env = settings_env(config)
    env[variable] = value
    started = time.monotonic()
    result = subprocess.run(
        [projector_executable(), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 15
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert variable in lines[0]
    assert "Traceback" not in lines[0]


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def test_dsn_password_never_appears_in_status_or_logs(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """A password in the DSN or Redis URL shows in no `status` output and no `run` log."""
    secret = "Sup3rS3cretPassw0rd"
    # The harness PostgreSQL trusts local connections: the password is accepted, unused.
    with_secret = dict(config, pg_dsn=_with_password(config["pg_dsn"], secret), log_level="debug")
    proc = projector_process(with_secret, tmp_path / "run.log").start()
    try:
        deadline = time.monotonic() + 30
        while True:
            status = run_cli(with_secret, "status")
            if status.returncode == 0:
                break
            proc.check()
            assert time.monotonic() < deadline, status.stdout + status.stderr
            time.sleep(0.2)
        outputs = [status.stdout + status.stderr]
        json_status = run_cli(with_secret, "status", "--json")
        outputs.append(json_status.stdout + json_status.stderr)
    finally:
        proc.signal(15)
        proc.wait(10)
    outputs.append(proc.log_text())
    assert "***" in outputs[0], "status should show the DSN, masked"
    # Unreachable servers: connection errors must not echo the secret either.
    down = dict(
        with_secret,
        pg_dsn=f"postgresql://postgres:{secret}@127.0.0.1:1/nowhere?connect_timeout=2",
        redis_url=f"redis://:{secret}@127.0.0.1:1/0",
    )
    for args in (("status",), ("status", "--json"), ("verify",)):
        result = run_cli(down, *args)
        assert result.returncode != 0
        outputs.append(result.stdout + result.stderr)
    retrying = projector_process(down, tmp_path / "down.log").start()
    time.sleep(3)
    retrying.signal(15)
    assert retrying.wait(10) == 0
    assert "retrying" in retrying.log_text()
    outputs.append(retrying.log_text())
    keyword = dict(with_secret, pg_dsn=f"host=127.0.0.1 port=1 password={secret} connect_timeout=2")
    result = run_cli(keyword, "status")
    outputs.append(result.stdout + result.stderr)
    for output in outputs:
        assert secret not in output


def test_verify_reports_drift_it_did_not_cause(
    db: psycopg.Connection[Any], projected: Projected
) -> None:
    """verify (the crash tests' second oracle) says in sync when exact and drift when tampered."""
    db.execute(
        "INSERT INTO pomodoros (user_id, completed_at) VALUES ('ann', now()), ('bob', now())"
    )
    projected.assert_exact()
    assert verify(projected.settings).in_sync
    projected.client.zincrby("pomo:lb:pomodoros:all:all", 1, "ann")
    report = verify(projected.settings)
    assert not report.in_sync
    assert [d.key for d in report.diffs if not d.clean] == ["pomo:lb:pomodoros:all:all"]
