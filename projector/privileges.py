"""Refusals for lack of a grant: which PostgreSQL or Redis error means "a privilege is missing",
and the one line naming the grant (``MissingPrivilege``), instead of a retry or a traceback.

PostgreSQL refuses with SQLSTATE 42501, or at connection time with a FATAL message (a role
without REPLICATION or CONNECT); Redis with NOPERM, directly or from inside a script.
"""

from __future__ import annotations

import re

import psycopg
import redis

from projector.core.errors import MissingPrivilege

_PG_DENIALS = (
    (re.compile(r"permission denied for table (\S+)"), "GRANT SELECT ON TABLE {0} TO {role}"),
    (re.compile(r"permission denied for schema (\S+)"), "GRANT USAGE ON SCHEMA {0} TO {role}"),
    (
        re.compile(r'permission denied for database "?([^"\s]+)"?'),
        "GRANT CONNECT ON DATABASE {0} TO {role}",
    ),
    (
        re.compile(r"permission denied for function (\S+)"),
        "GRANT EXECUTE ON FUNCTION {0} TO {role}",
    ),
    (
        re.compile(r"(replication role|replication slot|REPLICATION attribute|walsender)"),
        "ALTER ROLE {role} REPLICATION",
    ),
)
_REDIS_COMMAND = re.compile(r"permissions to run the '([^']+)' command")


def privilege_denial(exc: BaseException, *, role: str | None) -> MissingPrivilege | None:
    """A ``MissingPrivilege`` naming the grant ``exc`` (or an error it was raised from) lacks,
    or None when it is not a refusal for lack of a grant. ``role`` is the role or user the
    process logs in as, when known."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        denial = _postgres_denial(current, role) or _redis_denial(current, role)
        if denial is not None:
            return denial
        current = current.__cause__ or current.__context__
    return None


def _postgres_denial(exc: BaseException, role: str | None) -> MissingPrivilege | None:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        text = exc.diag.message_primary or str(exc)
    elif isinstance(exc, psycopg.OperationalError) and (
        "permission denied" in str(exc) or "must be superuser or replication role" in str(exc)
    ):
        text = str(exc)
    else:
        return None
    text = " ".join(text.split())
    detail = text.rsplit("FATAL:", 1)[-1].strip()
    for pattern, grant in _PG_DENIALS:
        match = pattern.search(text)
        if match:
            needed = grant.format(*match.groups(), role=role or "<role>")
            return MissingPrivilege(
                f"PostgreSQL refused: {detail}; the role needs: {needed} (see `projector roles`)",
                service="postgres",
                grant=needed,
            )
    return MissingPrivilege(
        f"PostgreSQL refused: {detail} (see `projector roles`)", service="postgres", grant=""
    )


def _redis_denial(exc: BaseException, user: str | None) -> MissingPrivilege | None:
    # NoPermissionError for a command refused outright; a ResponseError naming NOPERM for
    # one refused inside a script.
    refused = isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError)
        and ("NOPERM" in str(exc) or "user executing the script can't" in str(exc))
    )
    if not refused:
        return None
    text = " ".join(str(exc).split())
    who = user or "<user>"
    command = _REDIS_COMMAND.search(text)
    if command:
        needed = f"ACL SETUSER {who} +{command.group(1).lower()}"
    elif "run this command" in text:
        needed = f"ACL SETUSER {who} +<the command in the script>"
    elif "channel" in text:
        needed = f"ACL SETUSER {who} &<prefix>*"
    elif "key" in text:
        needed = f"ACL SETUSER {who} ~<prefix>* (read-only users: %R~<prefix>*)"
    else:
        needed = ""
    return MissingPrivilege(
        f"Redis refused: {text}"
        + (f"; the user needs: {needed}" if needed else "")
        + " (see `projector roles --redis`)",
        service="redis",
        grant=needed,
    )
