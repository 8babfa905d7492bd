"""Frames of the streaming replication protocol carried in CopyData messages, without any I/O.

``parse_frame`` turns one CopyData payload from the server into an ``XLogData`` (whose ``data``
is a zero-copy view of the pgoutput message) or a ``PrimaryKeepalive``, raising ``ProtocolError``
for anything else; ``standby_status_update`` builds the feedback frame that acknowledges WAL.
Times are microseconds since 2000-01-01 UTC, the PostgreSQL epoch.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from projector.core.errors import ProtocolError

__all__ = [
    "PrimaryKeepalive",
    "XLogData",
    "parse_frame",
    "standby_status_update",
]

# Microseconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.

_XLOG_HEADER: Final = struct.Struct("!QQq")  # wal_start, wal_end, server_time
_KEEPALIVE: Final = struct.Struct("!Qq?")  # wal_end, server_time, reply_requested
_STATUS_UPDATE: Final = struct.Struct("!cQQQq?")  # 'r', write, flush, apply, clock, reply


@dataclass(frozen=True, slots=True)
class XLogData:
    """WAL data ('w'): one pgoutput message that starts at ``wal_start``."""

    wal_start: int
    wal_end: int
    server_time: int
    data: memoryview | bytes


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """Server heartbeat ('k'); ``reply_requested`` asks for a status update right away."""

    wal_end: int
    server_time: int
    reply_requested: bool


# XLogData made without its __init__ (a frozen dataclass' sets each field through
# object.__setattr__, the slowest part of a frame): the slots' own setters, bound once.
_new = object.__new__
_set_wal_start, _set_wal_end, _set_server_time, _set_data = (
    XLogData.__dict__[name].__set__ for name in ("wal_start", "wal_end", "server_time", "data")
)


def parse_frame(buf: bytes | memoryview) -> XLogData | PrimaryKeepalive:
    """Parse one CopyData payload of START_REPLICATION; raise ProtocolError if it is neither."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if not view:
        raise ProtocolError("empty replication frame", offset=0)
    kind = view[0]
    if kind == 0x77:  # 'w'
        if len(view) < 1 + _XLOG_HEADER.size:
            raise ProtocolError(
                f"XLogData frame truncated: {len(view)} bytes, header needs "
                f"{1 + _XLOG_HEADER.size}",
                offset=len(view),
            )
        wal_start, wal_end, server_time = _XLOG_HEADER.unpack_from(view, 1)
        frame = _new(XLogData)
        _set_wal_start(frame, wal_start)
        _set_wal_end(frame, wal_end)
        _set_server_time(frame, server_time)
        _set_data(frame, view[1 + _XLOG_HEADER.size :])
        return frame
    if kind == 0x6B:  # 'k'
        if len(view) != 1 + _KEEPALIVE.size:
            raise ProtocolError(
                f"primary keepalive frame has {len(view)} bytes, expected {1 + _KEEPALIVE.size}",
                offset=min(len(view), 1 + _KEEPALIVE.size),
            )
        wal_end, server_time, reply_requested = _KEEPALIVE.unpack_from(view, 1)
        return PrimaryKeepalive(wal_end, server_time, reply_requested)
    raise ProtocolError(
        f"unknown replication frame type {bytes((kind,))!r} at byte 0 "
        "(expected 'w' XLogData or 'k' keepalive)",
        offset=0,
    )


def standby_status_update(
    write_lsn: int,
    flush_lsn: int,
    apply_lsn: int,
    *,
    now_us: int,
    reply_requested: bool = False,
) -> bytes:
    """Build the 'r' frame telling the server which WAL positions this client has processed
    (``now_us``: the client's clock, in microseconds since PostgreSQL's epoch)."""
    return _STATUS_UPDATE.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_us, reply_requested)
