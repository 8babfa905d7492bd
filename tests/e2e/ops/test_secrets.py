"""Passwords never show: DSNs and URLs in every form are masked in settings, logs, status
output and errors, and /readyz carries no hosts or server messages."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from projector.logs import configure_logging
from projector.settings import load_settings, redact_dsn, redact_text, redact_url

from .support import serve

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=pw", "postgresql://u@h/db?password=***"),
        (
            "postgresql://h/db?sslmode=require&password=pw&user=u",
            "postgresql://h/db?sslmode=require&password=***&user=u",
        ),
        ("postgresql://u:pw@h/db?PASSWORD=pw", "postgresql://u:***@h/db?PASSWORD=***"),
        ("host=h user=u password=pw dbname=db", "host=h user=u password=*** dbname=db"),
        ("host=h password = 'p w' dbname=db", "host=h password = *** dbname=db"),
        ("host=h dbname=db", "host=h dbname=db"),
    ],
)
def test_dsns_are_masked_in_every_form(raw: str, shown: str) -> None:
    """URL userinfo, ?password= and key=value passwords are all masked."""
    assert redact_dsn(raw) == shown
    assert "pw" not in redact_dsn(raw).replace("password", "")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://h:6379/0?password=pw", "redis://h:6379/0?password=***"),
        ("rediss://h/0?username=u&password=pw&ssl_cert_reqs=none", None),
        ("unix:///tmp/redis.sock?password=pw&db=1", "unix:///tmp/redis.sock?password=***&db=1"),
    ],
)
def test_redis_urls_are_masked(raw: str, shown: str | None) -> None:
    """Redis URLs lose their password wherever it is written."""
    masked = redact_url(raw)
    assert "pw" not in masked
    if shown is not None:
        assert masked == shown


def test_free_text_is_scrubbed_of_known_and_pattern_passwords() -> None:
    """Error messages lose configured passwords, URL userinfo and password= pairs."""
    settings = load_settings(
        pg_dsn="postgresql://u:Sup3r%2Fsecret@h/db",
        redis_url="redis://h/0?password=r3dis",
        api_pg_dsn="host=h password='api pw'",
    )
    assert set(settings.secrets) >= {"Sup3r/secret", "r3dis", "api pw"}
    text = (
        "could not connect with Sup3r/secret to redis r3dis or 'api pw' "
        "via mysql://x:other@h and password=leaky"
    )
    masked = settings.redact(text)
    for secret in ("Sup3r/secret", "r3dis", "api pw", "other", "leaky"):
        assert secret not in masked
    assert redact_text("no secrets here") == "no secrets here"


def test_status_output_and_errors_hide_passwords(pg_dsn: str, redis_url: str) -> None:
    """`projector status` (text and JSON) and a failing command never print a password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    env.update(
        PROJECTOR_PG_DSN=pg_dsn + "?password=pgS3cret",
        PROJECTOR_REDIS_URL=redis_url + "?password=rdS3cret",
        PROJECTOR_SLOT="secrets",
    )
    for args in (["status"], ["status", "--json"], ["verify"]):
        result = subprocess.run(
            [sys.executable, "-m", "projector", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = result.stdout + result.stderr
        assert "S3cret" not in output, (args, output)
        if args[0] == "status":
            assert "password=***" in output, output
        if args == ["status", "--json"]:
            report = json.loads(result.stdout)
            assert report["postgres"]["dsn"].endswith("password=***")
    # The start-up log line of `run` names both servers, masked.
    run = subprocess.Popen(
        [sys.executable, "-m", "projector", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(3)
    run.send_signal(signal.SIGTERM)
    output, _ = run.communicate(timeout=60)
    assert "projector starting" in output and "password=***" in output, output
    assert "S3cret" not in output, output


def test_readyz_carries_no_hosts_or_server_text(pg_dsn: str) -> None:
    """/readyz says which store is down, never how: no host, port, user or server message."""
    settings = load_settings(
        pg_dsn="postgresql://nobody:S3cret@127.0.0.1:1/db?connect_timeout=1",
        redis_url="redis://:S3cret@127.0.0.1:1/0",
        api_access_log=False,
        api_pg_timeout=1.0,
    )
    with serve(settings) as api:
        response = api.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["redis"]["up"] is False and body["postgres"]["up"] is False
    text = response.text
    for leak in ("127.0.0.1", "S3cret", "nobody", "Connection refused", "Error", ":1"):
        assert leak not in text, (leak, text)


def test_log_events_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every string of a log event passes the settings' masking before it is written."""
    settings = load_settings(pg_dsn="postgresql://u:Hidden1@h/db")
    written = io.StringIO()
    saved = structlog.get_config()
    monkeypatch.setattr(sys, "stderr", written)
    try:
        configure_logging("info", "json", settings.redact)
        structlog.get_logger("scrub-test").warning(
            "connection lost", error="FATAL for postgresql://u:Hidden1@h/db password=other"
        )
    finally:
        structlog.configure(**saved)  # the other tests keep their logging
    text = written.getvalue()
    assert "connection lost" in text and "Hidden1" not in text and "other" not in text
