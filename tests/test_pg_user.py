"""``pg_user``: the role a DSN logs in as, in URL and key=value form, with libpq's fallbacks."""

from __future__ import annotations

import os
import pwd

import pytest

from projector.settings import pg_user

OS_USER = pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://ann:secret@db.example:5432/pomodoro",
        "postgres://ann@db.example/pomodoro?sslmode=require",
        "postgresql://db.example/pomodoro?user=ann",
        "postgresql://%61nn@db.example/pomodoro",
        "host=db.example user=ann password=secret dbname=pomodoro",
        "host=db.example user='ann' dbname=pomodoro",
    ],
)
def test_the_dsn_user_wins_in_either_form(dsn: str) -> None:
    """A user the DSN names (URL userinfo, ``?user=``, ``user=``) is the role, PGUSER or not."""
    assert pg_user(dsn, {"PGUSER": "bob"}) == "ann"
    assert pg_user(dsn, {}) == "ann"


@pytest.mark.parametrize(
    "dsn", ["postgresql://db.example/pomodoro", "postgresql:///pomodoro", "host=db.example", ""]
)
def test_without_a_user_pguser_is_the_role(dsn: str) -> None:
    """A DSN without a user (either form) logs in as PGUSER, as libpq does."""
    assert pg_user(dsn, {"PGUSER": "bob"}) == "bob"


@pytest.mark.parametrize("dsn", ["postgresql://db.example/pomodoro", "dbname=pomodoro"])
def test_without_a_user_or_pguser_the_os_user_is_the_role(dsn: str) -> None:
    """Without a DSN user and with PGUSER unset or empty, the operating-system user is the role."""
    assert pg_user(dsn, {}) == OS_USER
    assert pg_user(dsn, {"PGUSER": ""}) == OS_USER


def test_an_empty_dsn_user_is_the_os_user_not_pguser() -> None:
    """``user=''`` is given (so PGUSER is not consulted) but empty, so libpq takes the OS user."""
    assert pg_user("host=db.example user=''", {"PGUSER": "bob"}) == OS_USER


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``environ``, PGUSER is read from the process environment."""
    monkeypatch.setenv("PGUSER", "carol")
    assert pg_user("host=db.example") == "carol"


@pytest.mark.parametrize("dsn", ["host=db.example user", "postgresql://db.example/?port=x&&="])
def test_a_dsn_that_does_not_parse_has_no_user(dsn: str) -> None:
    """A malformed DSN gives None instead of raising (it names no role to grant to)."""
    assert pg_user(dsn, {"PGUSER": "bob"}) is None
