"""The pgoutput decoder against bytes captured from PostgreSQL 15 and against a test-only encoder.

The capture (``tests/data/pgoutput_capture.json``) is made by ``scripts/capture_pgoutput.py``; the
values asserted here are the ones that script wrote.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import pickle
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector.core.errors import ProtocolError
from projector.core.lsn import parse_lsn
from projector.core.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    Column,
    ColumnValue,
    Commit,
    CommitPrepared,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    pg_time_to_datetime,
)
from projector.core.replication import XLogData, parse_frame

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "pgoutput_capture.json"


# --- the captured session --------------------------------------------------------------------


@functools.cache
def _capture() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(CAPTURE.read_text())
    return document


@functools.cache
def captured(name: str) -> tuple[Message, ...]:
    """Decode every XLogData payload of one capture session, in order."""
    session = _capture()["captures"][name]
    decoder = Decoder(int(session["options"]["proto_version"]))
    messages = []
    for frame_hex in session["frames"]:
        frame = parse_frame(bytes.fromhex(frame_hex))
        if isinstance(frame, XLogData):
            messages.append(decoder.decode(frame.data))
    assert not decoder.in_stream
    return tuple(messages)


def big_value(seed: str, length: int = 5000) -> bytes:
    """The incompressible text the capture script wrote into TOASTed columns."""
    out = ""
    digest = seed.encode()
    while len(out) < length:
        digest = hashlib.sha256(digest).digest()
        out += digest.hex()
    return out[:length].encode()


def relations(messages: tuple[Message, ...]) -> dict[str, Relation]:
    """The last Relation message of each table, by table name."""
    return {m.name: m for m in messages if isinstance(m, Relation)}


T = TypeVar("T")


def of_type(messages: tuple[Message, ...], cls: type[T]) -> list[T]:
    """The messages of one class, in order."""
    return [m for m in messages if isinstance(m, cls)]


def test_capture_was_made_by_postgresql_15() -> None:
    """The stored frames come from a PostgreSQL 15 server, as the decoder targets."""
    assert _capture()["server_version"] // 10000 == 15


@pytest.mark.parametrize("name", ["v1", "v1_binary", "v2_stream", "v3_two_phase"])
def test_every_captured_frame_decodes(name: str) -> None:
    """Every pgoutput payload the server sent in each session decodes without error."""
    assert captured(name)


def test_v1_session_holds_the_expected_message_kinds() -> None:
    """Phase 1 yields exactly the message kinds its workload provokes."""
    kinds = {type(m).__name__ for m in captured("v1")}
    assert kinds == {
        "Begin", "Commit", "Relation", "Type", "Insert", "Update", "Delete", "Truncate",
        "LogicalMessage", "Origin",
    }  # fmt: skip


@pytest.mark.parametrize("name", ["v1", "v1_binary", "v2_stream"])
def test_begin_and_commit_agree_and_lsns_increase(name: str) -> None:
    """Begin.final_lsn equals its Commit.commit_lsn, commit_lsn < end_lsn, and LSNs grow."""
    begin: Begin | None = None
    last_end = 0
    for message in captured(name):
        if isinstance(message, Begin):
            assert begin is None
            begin = message
        elif isinstance(message, Commit):
            assert begin is not None
            assert begin.final_lsn == message.commit_lsn
            assert begin.commit_time == message.commit_time
            assert last_end <= message.commit_lsn < message.end_lsn
            last_end = message.end_lsn
            begin = None
    assert begin is None
    assert last_end > parse_lsn(_capture()["slot_start"]["cap_main"])


def test_commit_times_are_when_the_workload_ran() -> None:
    """Commit times decode to the wall-clock time of the capture, except the origin's."""
    started = datetime.fromisoformat(_capture()["workload_started"])
    times = [pg_time_to_datetime(m.commit_time) for m in of_type(captured("v1"), Commit)]
    origin_time = datetime.fromisoformat(_capture()["origin"]["time"])
    assert origin_time in times
    for when in times:
        if when != origin_time:
            assert 0 <= (when - started).total_seconds() < 60


def test_relation_messages_describe_the_tables() -> None:
    """Relation messages carry schema, table, identity and each column's name, type and key flag."""
    tables = relations(captured("v1"))
    default = tables["cap_default"]
    assert default.namespace == "public"
    assert default.replica_identity == "d"
    assert default.columns == (
        Column(1, "id", 20, -1),
        Column(0, "user_id", 25, -1),
        Column(0, "n", 23, -1),
        Column(0, "big", 25, -1),
    )
    assert [c.is_key for c in default.columns] == [True, False, False, False]
    child = tables["cap_child"]
    assert child.namespace == "cap_other"
    assert [c.name for c in child.columns] == ["id", "parent_id"]
    full = tables["cap_full"]
    assert full.replica_identity == "f"
    assert [c.name for c in full.columns] == ["id", "mood", "note", "big"]
    # With REPLICA IDENTITY FULL every column is flagged as part of the key.
    assert all(c.is_key for c in full.columns)
    assert {m.xid for m in of_type(captured("v1"), Relation)} == {None}


def test_type_message_describes_the_enum_before_its_relation() -> None:
    """A custom enum column makes the server send a Type message right before the Relation."""
    messages = captured("v1")
    index = next(i for i, m in enumerate(messages) if isinstance(m, Type))
    enum_type = messages[index]
    assert isinstance(enum_type, Type)
    assert enum_type == Type(None, enum_type.type_oid, "public", "cap_mood")
    following = messages[index + 1]
    assert isinstance(following, Relation)
    assert following.name == "cap_full"
    assert following.columns[1].type_oid == enum_type.type_oid


def test_inserts_carry_the_written_values_as_raw_bytes() -> None:
    """Insert values are the text bytes written, None for NULL, UTF-8 left undecoded."""
    tables = relations(captured("v1"))
    default_id = tables["cap_default"].relation_id
    full_id = tables["cap_full"].relation_id
    rows = [(m.relation_id, m.new) for m in of_type(captured("v1"), Insert)]
    assert rows == [
        (default_id, (b"1", b"alice", b"1", None)),
        (default_id, (b"2", b"bob", None, big_value("bob"))),
        (default_id, (b"3", "zoë ✓".encode(), b"3", b"short")),
        (tables["cap_child"].relation_id, (b"1", b"2")),
        (full_id, (b"1", b"happy", b"first", big_value("full"))),
        (full_id, (b"2", None, None, None)),
        (default_id, (b"5", b"dave", b"5", None)),
        (default_id, (b"6", b"from-origin", b"7", None)),
    ]


def test_updates_send_unchanged_toast_and_old_keys_as_postgresql_does() -> None:
    """An untouched TOASTed value is UNCHANGED_TOAST; a key change or FULL sends the old row."""
    updates = of_type(captured("v1"), Update)
    assert [(u.old_kind, u.old, u.new) for u in updates] == [
        (None, None, (b"2", b"bob", b"2", UNCHANGED_TOAST)),
        ("K", (b"1", None, None, None), (b"4", b"alice", b"1", None)),
        (
            "O",
            (b"1", b"happy", b"first", big_value("full")),
            (b"1", b"sad", b"changed", UNCHANGED_TOAST),
        ),
    ]
    assert {u.xid for u in updates} == {None}


def test_deletes_send_the_key_or_the_whole_old_row() -> None:
    """A default-identity Delete sends the key ('K'); a FULL-identity one the whole row ('O')."""
    tables = relations(captured("v1"))
    deletes = of_type(captured("v1"), Delete)
    assert deletes == [
        Delete(None, tables["cap_full"].relation_id, "O", (b"2", None, None, None)),
        Delete(None, tables["cap_default"].relation_id, "K", (b"3", None, None, None)),
    ]


def test_truncate_options_and_cascaded_relations() -> None:
    """TRUNCATE sends its relations and options; CASCADE lists the referencing table too."""
    tables = relations(captured("v1"))
    plain, cascaded = of_type(captured("v1"), Truncate)
    assert plain.relation_ids == (tables["cap_full"].relation_id,)
    assert (plain.options, plain.cascade, plain.restart_identity) == (0, False, False)
    assert cascaded.relation_ids == (
        tables["cap_default"].relation_id,
        tables["cap_child"].relation_id,
    )
    assert (cascaded.options, cascaded.cascade, cascaded.restart_identity) == (3, True, True)


def test_logical_messages_inside_and_outside_transactions() -> None:
    """A transactional message sits inside Begin/Commit; a non-transactional one outside."""
    messages = captured("v1")
    found = [(i, m) for i, m in enumerate(messages) if isinstance(m, LogicalMessage)]
    (i_tx, tx), (i_non, non), (_, end) = found
    assert (tx.transactional, tx.prefix, tx.content) == (True, "cap", "transactional ✓".encode())
    commit = messages[i_tx + 1]
    assert isinstance(commit, Commit)
    assert tx.lsn == commit.commit_lsn
    assert (non.transactional, non.prefix, non.content) == (False, "cap", b"non-transactional")
    assert isinstance(messages[i_non - 1], Commit)
    assert isinstance(messages[i_non + 1], Begin)
    assert end.content == b"phase-1-end"
    assert tx.lsn < non.lsn < end.lsn


def test_origin_message_follows_begin_of_a_replayed_transaction() -> None:
    """A transaction written under a replication origin gets an Origin message after its Begin."""
    messages = captured("v1")
    index = next(i for i, m in enumerate(messages) if isinstance(m, Origin))
    origin = messages[index]
    begin = messages[index - 1]
    assert isinstance(begin, Begin)
    assert origin == Origin(parse_lsn(_capture()["origin"]["lsn"]), "cap_origin")
    # The origin's commit timestamp replaces the local one.
    assert pg_time_to_datetime(begin.commit_time) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_binary_mode_sends_the_same_rows_in_binary_form() -> None:
    """With binary on, values are the types' binary send form ('b'), e.g. big-endian integers."""
    text = of_type(captured("v1"), Insert)
    binary = of_type(captured("v1_binary"), Insert)
    assert [m.new[0] for m in binary[:3]] == [struct.pack("!q", i) for i in (1, 2, 3)]
    assert binary[0].new == (struct.pack("!q", 1), b"alice", struct.pack("!i", 1), None)
    assert [len(m.new) for m in binary] == [len(m.new) for m in text]
    update = of_type(captured("v1_binary"), Update)[0]
    assert update.new[3] is UNCHANGED_TOAST


def test_streamed_transactions_carry_xids_inside_stream_blocks() -> None:
    """Between StreamStart and StreamStop, row messages carry the (sub)transaction's xid."""
    messages = captured("v2_stream")
    starts = of_type(messages, StreamStart)
    assert len(starts) == len(of_type(messages, StreamStop)) >= 3
    committed, aborted = sorted({s.xid for s in starts})
    for xid in (committed, aborted):
        segments = [s.first_segment for s in starts if s.xid == xid]
        assert segments == [True] + [False] * (len(segments) - 1)
    in_stream = False
    for message in messages:
        if isinstance(message, StreamStart):
            in_stream = True
        elif isinstance(message, StreamStop):
            in_stream = False
        elif isinstance(message, Insert | Relation):
            assert (message.xid is not None) == in_stream
        else:
            assert not in_stream or isinstance(message, Type | LogicalMessage | Truncate)


def test_streamed_commit_and_aborts_let_the_consumer_keep_only_committed_rows() -> None:
    """StreamAbort names the rolled-back subtransaction; StreamCommit the whole transaction."""
    messages = captured("v2_stream")
    starts = of_type(messages, StreamStart)
    committed, aborted = sorted({s.xid for s in starts})
    commit = of_type(messages, StreamCommit)[0]
    assert commit.xid == committed
    assert commit.commit_lsn < commit.end_lsn
    sub_abort, whole_abort = of_type(messages, StreamAbort)
    assert sub_abort.xid == committed and sub_abort.subxid != committed
    assert (whole_abort.xid, whole_abort.subxid) == (aborted, aborted)
    assert (sub_abort.abort_lsn, sub_abort.abort_time) == (None, None)
    # Rows of the committed transaction minus those of its aborted subtransaction.
    xids = {committed} | {
        m.xid for m in messages if isinstance(m, Insert) and m.xid not in (None, aborted)
    }
    kept = {
        int(m.new[0])  # type: ignore[arg-type]
        for m in messages
        if isinstance(m, Insert) and m.xid in xids - {sub_abort.subxid}
    }
    assert kept == set(range(1, 501)) | {9999}


def test_two_phase_messages_tie_prepare_to_its_outcome() -> None:
    """Two-phase messages carry matching gid, xid and LSNs from BeginPrepare to the outcome."""
    messages = captured("v3_two_phase")
    begin_commit, begin_rollback = of_type(messages, BeginPrepare)
    prepare_commit, prepare_rollback = of_type(messages, Prepare)
    commit_prepared, commit_streamed = of_type(messages, CommitPrepared)
    (rollback,) = of_type(messages, RollbackPrepared)
    (stream_prepare,) = of_type(messages, StreamPrepare)
    for begin, prepare, gid in [
        (begin_commit, prepare_commit, "cap_gid_commit"),
        (begin_rollback, prepare_rollback, "cap_gid_rollback"),
    ]:
        assert (begin.gid, prepare.gid) == (gid, gid)
        assert begin.xid == prepare.xid
        assert (begin.prepare_lsn, begin.end_lsn) == (prepare.prepare_lsn, prepare.end_lsn)
        assert prepare.prepare_lsn < prepare.end_lsn
        assert begin.prepare_time == prepare.prepare_time
    assert (commit_prepared.gid, commit_prepared.xid) == ("cap_gid_commit", begin_commit.xid)
    assert prepare_commit.end_lsn <= commit_prepared.commit_lsn < commit_prepared.end_lsn
    assert (rollback.gid, rollback.xid) == ("cap_gid_rollback", begin_rollback.xid)
    assert rollback.prepare_end_lsn == prepare_rollback.end_lsn
    assert rollback.prepare_time == prepare_rollback.prepare_time
    assert rollback.prepare_end_lsn < rollback.rollback_end_lsn
    assert stream_prepare.gid == commit_streamed.gid == "cap_gid_streamed"
    assert stream_prepare.xid == commit_streamed.xid == of_type(messages, StreamStart)[0].xid
    assert stream_prepare.end_lsn <= commit_streamed.commit_lsn


# --- a test-only encoder ---------------------------------------------------------------------


def _string(text: str) -> bytes:
    return text.encode() + b"\0"


def _tuple_data(values: tuple[ColumnValue, ...], binary: bool = False) -> bytes:
    out = [struct.pack("!H", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED_TOAST:
            out.append(b"u")
        else:
            out.append((b"b" if binary else b"t") + struct.pack("!I", len(value)) + value)
    return b"".join(out)


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def _prepare_body(m: Prepare | CommitPrepared | StreamPrepare) -> bytes:
    lsn = m.prepare_lsn if isinstance(m, Prepare | StreamPrepare) else m.commit_lsn
    when = m.prepare_time if isinstance(m, Prepare | StreamPrepare) else m.commit_time
    return struct.pack("!BQQqI", m.flags, lsn, m.end_lsn, when, m.xid) + _string(m.gid)


def encode(m: Message, binary: bool = False) -> bytes:
    """Encode a message the way PostgreSQL's pgoutput does (test-only)."""
    match m:
        case Begin():
            return b"B" + struct.pack("!QqI", m.final_lsn, m.commit_time, m.xid)
        case Commit():
            return b"C" + struct.pack("!BQQq", m.flags, m.commit_lsn, m.end_lsn, m.commit_time)
        case Origin():
            return b"O" + struct.pack("!Q", m.commit_lsn) + _string(m.name)
        case Relation():
            columns = b"".join(
                struct.pack("!B", c.flags)
                + _string(c.name)
                + struct.pack("!Ii", c.type_oid, c.type_modifier)
                for c in m.columns
            )
            return (
                b"R"
                + _xid(m.xid)
                + struct.pack("!I", m.relation_id)
                + _string(m.namespace)
                + _string(m.name)
                + struct.pack("!BH", ord(m.replica_identity), len(m.columns))
                + columns
            )
        case Type():
            return (
                b"Y"
                + _xid(m.xid)
                + struct.pack("!I", m.type_oid)
                + _string(m.namespace)
                + _string(m.name)
            )
        case Insert():
            return (
                b"I" + _xid(m.xid) + struct.pack("!I", m.relation_id) + b"N"
                + _tuple_data(m.new, binary)
            )  # fmt: skip
        case Update():
            old = b"" if m.old is None else str(m.old_kind).encode() + _tuple_data(m.old, binary)
            return (
                b"U" + _xid(m.xid) + struct.pack("!I", m.relation_id) + old + b"N"
                + _tuple_data(m.new, binary)
            )  # fmt: skip
        case Delete():
            return (
                b"D" + _xid(m.xid) + struct.pack("!I", m.relation_id) + m.old_kind.encode()
                + _tuple_data(m.old, binary)
            )  # fmt: skip
        case Truncate():
            count = len(m.relation_ids)
            return (
                b"T" + _xid(m.xid) + struct.pack(f"!IB{count}I", count, m.options, *m.relation_ids)
            )
        case LogicalMessage():
            return (
                b"M"
                + _xid(m.xid)
                + struct.pack("!BQ", int(m.transactional), m.lsn)
                + _string(m.prefix)
                + struct.pack("!I", len(m.content))
                + m.content
            )
        case StreamStart():
            return b"S" + struct.pack("!IB", m.xid, int(m.first_segment))
        case StreamStop():
            return b"E"
        case StreamCommit():
            return b"c" + struct.pack(
                "!IBQQq", m.xid, m.flags, m.commit_lsn, m.end_lsn, m.commit_time
            )
        case StreamAbort():
            tail = b""
            if m.abort_lsn is not None and m.abort_time is not None:
                tail = struct.pack("!Qq", m.abort_lsn, m.abort_time)
            return b"A" + struct.pack("!II", m.xid, m.subxid) + tail
        case BeginPrepare():
            return (
                b"b"
                + struct.pack("!QQqI", m.prepare_lsn, m.end_lsn, m.prepare_time, m.xid)
                + _string(m.gid)
            )
        case Prepare():
            return b"P" + _prepare_body(m)
        case CommitPrepared():
            return b"K" + _prepare_body(m)
        case StreamPrepare():
            return b"p" + _prepare_body(m)
        case RollbackPrepared():
            return (
                b"r"
                + struct.pack(
                    "!BQQqqI",
                    m.flags,
                    m.prepare_end_lsn,
                    m.rollback_end_lsn,
                    m.prepare_time,
                    m.rollback_time,
                    m.xid,
                )
                + _string(m.gid)
            )
    raise AssertionError(f"no encoder for {m!r}")


_STREAMED_TYPES = (Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage)


def decoder_for(m: Message) -> Decoder:
    """A decoder in the state the protocol requires before ``m`` can arrive."""
    v4 = isinstance(m, StreamAbort) and m.abort_lsn is not None
    decoder = Decoder(4 if v4 else 3)
    streamed = isinstance(m, _STREAMED_TYPES) and m.xid is not None
    if streamed or isinstance(m, StreamStop):
        decoder.decode(b"S" + struct.pack("!IB", 7, 1))
    return decoder


# --- hypothesis strategies -------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
opt_xid = st.none() | u32
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
values: st.SearchStrategy[ColumnValue] = st.one_of(
    st.binary(max_size=12), st.none(), st.just(UNCHANGED_TOAST)
)
rows = st.lists(values, max_size=5).map(tuple)


@st.composite
def updates(draw: st.DrawFn) -> Update:
    old_kind = draw(st.sampled_from([None, "K", "O"]))
    old = None if old_kind is None else draw(rows)
    return Update(draw(opt_xid), draw(u32), old_kind, old, draw(rows))


@st.composite
def stream_aborts(draw: st.DrawFn) -> StreamAbort:
    if draw(st.booleans()):
        return StreamAbort(draw(u32), draw(u32), draw(u64), draw(i64))
    return StreamAbort(draw(u32), draw(u32), None, None)


columns = st.builds(Column, u8, names, u32, i32)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Begin, u64, i64, u32),
    st.builds(Commit, u8, u64, u64, i64),
    st.builds(Origin, u64, names),
    st.builds(
        Relation,
        opt_xid,
        u32,
        names,
        names,
        st.sampled_from("dnfi"),
        st.lists(columns, max_size=4).map(tuple),
    ),
    st.builds(Type, opt_xid, u32, names, names),
    st.builds(Insert, opt_xid, u32, rows),
    updates(),
    st.builds(Delete, opt_xid, u32, st.sampled_from(["K", "O"]), rows),
    st.builds(Truncate, opt_xid, u8, st.lists(u32, max_size=4).map(tuple)),
    st.builds(LogicalMessage, opt_xid, st.booleans(), u64, names, st.binary(max_size=16)),
    st.builds(StreamStart, u32, st.booleans()),
    st.just(StreamStop()),
    st.builds(StreamCommit, u32, u8, u64, u64, i64),
    stream_aborts(),
    st.builds(BeginPrepare, u64, u64, i64, u32, names),
    st.builds(Prepare, u8, u64, u64, i64, u32, names),
    st.builds(CommitPrepared, u8, u64, u64, i64, u32, names),
    st.builds(RollbackPrepared, u8, u64, u64, i64, i64, u32, names),
    st.builds(StreamPrepare, u8, u64, u64, i64, u32, names),
)


@given(messages, st.booleans())
def test_encoded_messages_decode_to_themselves(message: Message, binary: bool) -> None:
    """Any message, encoded as pgoutput does (text or binary values), decodes back to itself."""
    assert decoder_for(message).decode(encode(message, binary)) == message


@given(messages)
def test_decoding_a_memoryview_equals_decoding_bytes(message: Message) -> None:
    """The decoder accepts a memoryview (as parse_frame gives) with the same result."""
    data = encode(message)
    assert decoder_for(message).decode(memoryview(b"xx" + data)[2:]) == message


@given(messages)
def test_every_truncation_raises_protocol_error(message: Message) -> None:
    """A valid message cut short at any position raises ProtocolError, never another error."""
    data = encode(message)
    for cut in range(len(data)):
        if isinstance(message, StreamAbort) and message.abort_lsn is not None and cut == 9:
            continue  # the protocol-4 StreamAbort without its optional abort LSN and time
        with pytest.raises(ProtocolError) as caught:
            decoder_for(message).decode(data[:cut])
        assert caught.value.offset is not None
        assert 0 <= caught.value.offset <= cut


@given(messages)
def test_trailing_bytes_raise_protocol_error(message: Message) -> None:
    """Bytes after the last field of a message are an error at the offset where they start."""
    data = encode(message)
    with pytest.raises(ProtocolError) as caught:
        decoder_for(message).decode(data + b"\x00")
    assert caught.value.offset == len(data)


@given(
    st.sampled_from(b"BCORYIUDTMSEcAbPKrpZ\x00"),
    st.binary(max_size=64),
    st.booleans(),
    st.sampled_from([1, 2, 3, 4]),
)
def test_random_bytes_raise_only_protocol_error(
    kind: int, body: bytes, in_stream: bool, proto_version: int
) -> None:
    """Arbitrary bytes either decode or raise ProtocolError, whatever the decoder's state."""
    decoder = Decoder(proto_version)
    if in_stream and proto_version >= 2:  # streaming exists from protocol 2
        decoder.decode(b"S\x00\x00\x00\x07\x01")
    try:
        decoder.decode(bytes((kind,)) + body)
    except ProtocolError as error:
        assert error.offset is not None


@given(messages, st.data())
def test_corrupted_messages_raise_only_protocol_error(
    message: Message, data: st.DataObject
) -> None:
    """A valid message with bytes overwritten either decodes or raises ProtocolError."""
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(u8)
    with contextlib.suppress(ProtocolError):
        decoder_for(message).decode(bytes(encoded))


# --- errors and small contracts --------------------------------------------------------------


def test_unknown_message_type_is_a_protocol_error_at_offset_0() -> None:
    """An unknown first byte raises ProtocolError naming the type, at offset 0."""
    with pytest.raises(ProtocolError, match=r"unknown pgoutput message type b'Z'") as caught:
        Decoder().decode(b"Z\x00\x00")
    assert caught.value.offset == 0


def test_empty_message_is_a_protocol_error() -> None:
    """An empty payload raises ProtocolError."""
    with pytest.raises(ProtocolError, match="empty"):
        Decoder().decode(b"")


def test_unknown_column_kind_names_column_and_offset() -> None:
    """A tuple column of unknown kind raises ProtocolError naming the column and its offset."""
    data = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!H", 2) + b"n" + b"x"
    with pytest.raises(ProtocolError, match=r"Insert message: column 1 has unknown kind b'x'") as e:
        Decoder().decode(data)
    assert e.value.offset == len(data) - 1


def test_value_longer_than_the_message_is_a_protocol_error() -> None:
    """A column length running past the end of the message raises ProtocolError."""
    data = b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!HcI", 1, b"t", 10) + b"abc"
    with pytest.raises(ProtocolError, match="runs past the end"):
        Decoder().decode(data)


def test_string_without_nul_or_with_bad_utf8_is_a_protocol_error() -> None:
    """A string missing its NUL, or not UTF-8, raises ProtocolError at the string's offset."""
    with pytest.raises(ProtocolError, match="no NUL terminator") as caught:
        Decoder().decode(b"O" + struct.pack("!Q", 1) + b"abc")
    assert caught.value.offset == 9
    with pytest.raises(ProtocolError, match="not UTF-8") as caught:
        Decoder().decode(b"O" + struct.pack("!Q", 1) + b"ab\xff\x00")
    assert caught.value.offset == 11


def test_update_with_bad_tuple_marker_is_a_protocol_error() -> None:
    """An Update whose marker is not K, O or N raises ProtocolError at the marker."""
    with pytest.raises(ProtocolError, match="expected 'K', 'O' or 'N'") as caught:
        Decoder().decode(b"U" + struct.pack("!I", 1) + b"X" + struct.pack("!H", 0))
    assert caught.value.offset == 5


def test_stream_blocks_must_nest_properly() -> None:
    """StreamStop without StreamStart, or a second StreamStart, raises ProtocolError."""
    decoder = Decoder(2)
    with pytest.raises(ProtocolError, match="without a StreamStart"):
        decoder.decode(b"E")
    decoder.decode(encode(StreamStart(5, True)))
    assert decoder.in_stream
    with pytest.raises(ProtocolError, match="inside an open stream"):
        decoder.decode(encode(StreamStart(6, True)))
    decoder.decode(b"E")
    assert not decoder.in_stream


def test_row_messages_carry_xid_only_inside_a_stream_block() -> None:
    """The same Insert bytes are read with a leading xid only between StreamStart and StreamStop."""
    decoder = Decoder(2)
    plain = Insert(None, 16384, (b"1",))
    assert decoder.decode(encode(plain)) == plain
    decoder.decode(encode(StreamStart(42, False)))
    streamed = Insert(42, 16384, (b"1",))
    assert decoder.decode(encode(streamed)) == streamed
    decoder.decode(b"E")
    assert decoder.decode(encode(plain)) == plain


def test_stream_abort_fields_of_protocol_4_only_with_protocol_4() -> None:
    """StreamAbort's abort LSN and time are decoded with protocol 4 and rejected before it."""
    long_form = encode(StreamAbort(1, 2, 3, 4))
    assert Decoder(4).decode(long_form) == StreamAbort(1, 2, 3, 4)
    assert Decoder(4).decode(long_form[:9]) == StreamAbort(1, 2, None, None)
    with pytest.raises(ProtocolError, match="trailing"):
        Decoder(2).decode(long_form)


@pytest.mark.parametrize(
    ("message", "since"),
    [
        (StreamStart(42, False), 2),
        (StreamAbort(1, 2, None, None), 2),
        (BeginPrepare(1, 2, 3, 4, "gid"), 3),
    ],
)
def test_a_message_of_a_later_protocol_than_asked_is_refused(message: Message, since: int) -> None:
    """A session that asked for protocol N refuses the message types of later versions."""
    with pytest.raises(ProtocolError, match=f"comes with protocol {since}"):
        Decoder(since - 1).decode(encode(message))
    assert Decoder(since).decode(encode(message)) == message


def test_decoder_rejects_unknown_protocol_versions() -> None:
    """Only pgoutput protocol versions 1 to 4 are accepted."""
    with pytest.raises(ValueError, match="proto_version"):
        Decoder(5)
    assert Decoder(3).proto_version == 3


def test_unchanged_toast_is_a_singleton_with_a_readable_repr() -> None:
    """UNCHANGED_TOAST reprs as its name and survives copy and pickle as the same object."""
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert repr(Insert(None, 1, (UNCHANGED_TOAST,))) == (
        "Insert(xid=None, relation_id=1, new=(UNCHANGED_TOAST,))"
    )


def test_messages_are_frozen_and_slotted() -> None:
    """Decoded messages cannot be changed and carry no per-instance dict."""
    message = Decoder().decode(encode(Insert(None, 1, (b"a",))))
    assert isinstance(message, Insert)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.relation_id = 2  # type: ignore[misc]
    assert not hasattr(message, "__dict__")


def test_pg_time_to_datetime_uses_the_postgresql_epoch() -> None:
    """Zero is 2000-01-01 UTC and the result is timezone-aware."""
    assert pg_time_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_time_to_datetime(86_400_000_001) == datetime(2000, 1, 2, 0, 0, 0, 1, tzinfo=UTC)
    assert pg_time_to_datetime(-1).year == 1999


def test_column_and_truncate_flag_properties() -> None:
    """Column.is_key reads bit 1; Truncate.cascade bit 1 and restart_identity bit 2."""
    assert Column(1, "id", 23, -1).is_key
    assert not Column(0, "n", 23, -1).is_key
    truncates = [Truncate(None, options, ()) for options in range(4)]
    assert [(t.cascade, t.restart_identity) for t in truncates] == [
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    ]


def test_binary_and_text_values_decode_alike() -> None:
    """'b' (binary) column values decode to raw bytes exactly like 't' (text) ones."""
    message = Insert(None, 1, (b"\x00\x01", None, UNCHANGED_TOAST))
    assert Decoder().decode(encode(message, binary=True)) == message
