"""Streaming replication CopyData frames: captured from PostgreSQL 15 and round-tripped."""

from __future__ import annotations

import contextlib
import functools
import json
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector.core.errors import ProtocolError
from projector.core.lsn import parse_lsn
from projector.core.replication import (
    PrimaryKeepalive,
    XLogData,
    parse_frame,
    standby_status_update,
)
from projector.stream import pg_now_us

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "pgoutput_capture.json"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


@functools.cache
def _capture() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(CAPTURE.read_text())
    return document


def captured_frames() -> list[bytes]:
    """Every CopyData frame of every capture session."""
    return [
        bytes.fromhex(frame)
        for session in _capture()["captures"].values()
        for frame in session["frames"]
    ]


def encode_xlogdata(frame: XLogData) -> bytes:
    """Encode an XLogData frame as the walsender does (test-only)."""
    header = struct.pack("!cQQq", b"w", frame.wal_start, frame.wal_end, frame.server_time)
    return header + bytes(frame.data)


def encode_keepalive(frame: PrimaryKeepalive) -> bytes:
    """Encode a primary keepalive frame as the walsender does (test-only)."""
    return struct.pack("!cQqB", b"k", frame.wal_end, frame.server_time, frame.reply_requested)


def test_every_captured_frame_parses_as_xlogdata_or_keepalive() -> None:
    """All frames PostgreSQL sent during START_REPLICATION parse, and both kinds occur."""
    kinds = {type(parse_frame(frame)) for frame in captured_frames()}
    assert kinds == {XLogData, PrimaryKeepalive}


def test_captured_xlogdata_is_a_zero_copy_view_of_the_payload() -> None:
    """XLogData.data is a memoryview over the frame itself, holding the bytes after the header."""
    for raw in captured_frames():
        frame = parse_frame(raw)
        if isinstance(frame, XLogData):
            assert isinstance(frame.data, memoryview)
            assert frame.data.obj is raw
            assert frame.data == raw[25:]


def test_captured_keepalives_report_the_servers_wal_position_and_time() -> None:
    """Keepalives carry a WAL end at or after the slot start and a current server time."""
    started = datetime.fromisoformat(_capture()["workload_started"])
    slot_start = min(parse_lsn(lsn) for lsn in _capture()["slot_start"].values())
    keepalives = [f for f in map(parse_frame, captured_frames()) if isinstance(f, PrimaryKeepalive)]
    assert keepalives
    for keepalive in keepalives:
        assert keepalive.wal_end >= slot_start
        sent = PG_EPOCH.timestamp() + keepalive.server_time / 1e6
        assert 0 <= sent - started.timestamp() < 600


def test_captured_wal_positions_never_go_backwards() -> None:
    """Non-zero XLogData starts only grow; PostgreSQL 15 sends 0 for some (e.g. Relation)."""
    for session in _capture()["captures"].values():
        starts = [
            frame.wal_start
            for frame in (parse_frame(bytes.fromhex(raw)) for raw in session["frames"])
            if isinstance(frame, XLogData)
        ]
        non_zero = [lsn for lsn in starts if lsn]
        assert non_zero == sorted(non_zero)
        assert 0 in starts


@given(u64, u64, i64, st.binary(max_size=40))
def test_xlogdata_round_trips(wal_start: int, wal_end: int, server_time: int, data: bytes) -> None:
    """Any XLogData frame parses back to its fields, the payload as a view."""
    frame = XLogData(wal_start, wal_end, server_time, data)
    assert parse_frame(encode_xlogdata(frame)) == frame


@given(u64, i64, st.booleans())
def test_keepalive_round_trips(wal_end: int, server_time: int, reply_requested: bool) -> None:
    """Any primary keepalive frame parses back to its fields."""
    frame = PrimaryKeepalive(wal_end, server_time, reply_requested)
    assert parse_frame(encode_keepalive(frame)) == frame


@given(u64, i64, st.booleans(), st.binary(max_size=8))
def test_truncated_frames_raise_protocol_error(
    wal_end: int, server_time: int, reply: bool, data: bytes
) -> None:
    """A keepalive or an XLogData header cut at any position raises ProtocolError."""
    keepalive = encode_keepalive(PrimaryKeepalive(wal_end, server_time, reply))
    xlogdata = encode_xlogdata(XLogData(wal_end, wal_end, server_time, data))
    for frame, shortest in ((keepalive, len(keepalive)), (xlogdata, 25)):
        for cut in range(shortest):
            with pytest.raises(ProtocolError):
                parse_frame(frame[:cut])


@given(st.binary(max_size=40))
def test_random_frames_raise_only_protocol_error(raw: bytes) -> None:
    """Arbitrary bytes either parse or raise ProtocolError, nothing else."""
    with contextlib.suppress(ProtocolError):
        parse_frame(raw)


def test_keepalive_with_extra_bytes_is_a_protocol_error() -> None:
    """A keepalive longer than its fixed 18 bytes is rejected."""
    with pytest.raises(ProtocolError, match="expected 18"):
        parse_frame(encode_keepalive(PrimaryKeepalive(1, 2, False)) + b"\x00")


def test_unknown_frame_type_is_a_protocol_error_at_offset_0() -> None:
    """A frame type other than 'w' or 'k' raises ProtocolError at offset 0."""
    with pytest.raises(ProtocolError, match="unknown replication frame type b'x'") as caught:
        parse_frame(b"x" + bytes(24))
    assert caught.value.offset == 0
    with pytest.raises(ProtocolError, match="empty"):
        parse_frame(b"")


def test_parse_frame_accepts_a_memoryview() -> None:
    """A memoryview frame (as psycopg's get_copy_data returns) parses without copying."""
    raw = bytearray(encode_xlogdata(XLogData(1, 2, 3, b"payload")))
    frame = parse_frame(memoryview(raw))
    assert isinstance(frame, XLogData)
    assert frame.data == b"payload"
    raw[-1:] = b"!"
    assert frame.data == b"payloa!"


def test_standby_status_update_layout() -> None:
    """The 'r' frame holds write, flush and apply LSNs, the clock and the reply flag, big-endian."""
    frame = standby_status_update(0x1_0000_0010, 0x20, 0x30, now_us=123, reply_requested=True)
    assert frame == (
        b"r"
        + (0x1_0000_0010).to_bytes(8, "big")
        + (0x20).to_bytes(8, "big")
        + (0x30).to_bytes(8, "big")
        + (123).to_bytes(8, "big")
        + b"\x01"
    )
    assert standby_status_update(1, 1, 1, now_us=0)[-1:] == b"\x00"


def test_pg_now_us_is_the_current_time_in_the_postgres_epoch() -> None:
    """The stream's clock for status updates counts microseconds since 2000-01-01 UTC."""
    before = time.time_ns() // 1000
    now = pg_now_us()
    assert before - 946_684_800_000_000 <= now <= time.time_ns() // 1000 - 946_684_800_000_000


def test_pg_now_us_counts_from_2000_01_01_utc() -> None:
    """pg_now_us is microseconds since the PostgreSQL epoch, matching the wall clock."""
    expected = (datetime.now(UTC) - PG_EPOCH).total_seconds() * 1e6
    assert abs(pg_now_us() - expected) < 1_000_000
