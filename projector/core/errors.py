"""The few kinds of failure a caller must treat differently.

``ConnectionLost`` is retried with backoff, ``RebuildRequired`` makes the projector
rebuild Redis from a PostgreSQL snapshot, ``BoardsChanged`` starts a new session with
another set of boards (one broke, or may be built again), ``ProtocolError``,
``ConfigError`` and ``MissingPrivilege`` (a role or ACL user lacks a grant) stop it.
"""

from __future__ import annotations


class ProjectorError(Exception):
    """Base class of every error the projector raises on purpose."""


class ConfigError(ProjectorError):
    """A setting or an argument is invalid; the message names the culprit."""


class ConnectionLost(ProjectorError):
    """PostgreSQL or Redis went away; retrying later can succeed."""

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        self.service = service


class RebuildRequired(ProjectorError):
    """Redis no longer matches the replication slot; rebuild from a consistent snapshot."""

    def __init__(self, reason: str, *, slot: str | None = None, lsn: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.slot = slot
        self.lsn = lsn


class BoardsChanged(ProjectorError):
    """Which boards can be projected changed: ``broken`` maps each board that cannot be any
    more to its problem (the next session drops it, and the others stream on); with none,
    a broken board fits its table again or a partitioned table's partitions changed (the
    next session builds the board again)."""

    def __init__(self, reason: str, broken: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.broken = broken or {}


class ProtocolError(ProjectorError):
    """The replication stream holds something this projector cannot decode; fatal."""

    def __init__(self, message: str, *, offset: int | None = None, lsn: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.lsn = lsn


class MissingPrivilege(ProjectorError):
    """PostgreSQL or Redis refused for lack of a grant; the message names the grant to add."""

    def __init__(self, message: str, *, service: str, grant: str) -> None:
        super().__init__(message)
        self.service = service
        self.grant = grant
