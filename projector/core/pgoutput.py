"""Decode pgoutput logical replication messages into frozen dataclasses, without any I/O.

``Decoder.decode`` takes the payload of one XLogData frame (protocol versions 1 to 4, everything
PostgreSQL 15 sends, plus the v4 abort fields of StreamAbort) and returns one message object; its
only state is whether a streamed-transaction block is open, because row messages inside one carry
a leading xid. Column values stay raw ``bytes``; anything malformed, truncated or unknown raises
``ProtocolError`` with the byte ``offset`` where decoding failed.

The projector asks for protocol 1 today (``Decoder(1)``), so the messages of protocols 2 to 4
(streamed and two-phase transactions) never reach it. Their decoding stays, tested against a
capture of a real PostgreSQL 15 (``tests/capture_pgoutput.py``) and by round-trip properties,
because streaming (``streaming 'on'``, protocol 2) is how the projector can take a transaction
larger than ``logical_decoding_work_mem`` without the server spilling it to disk first: the
``Session`` would then apply committed stream blocks. A decoder refuses the messages of a
later protocol than its session asked for (a 'S' is a ``ProtocolError`` for ``Decoder(1)``).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeAlias

from projector.core.errors import ProtocolError

__all__ = [
    "PG_EPOCH",
    "PG_EPOCH_UNIX_US",
    "UNCHANGED_TOAST",
    "Begin",
    "BeginPrepare",
    "Column",
    "ColumnValue",
    "Commit",
    "CommitPrepared",
    "Decoder",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "Prepare",
    "Relation",
    "RollbackPrepared",
    "StreamAbort",
    "StreamCommit",
    "StreamPrepare",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "Update",
    "pg_time_to_datetime",
]

# PostgreSQL's epoch: its protocol's timestamps are microseconds since this instant.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
PG_EPOCH_UNIX_US: Final = int(PG_EPOCH.timestamp()) * 1_000_000


def pg_time_to_datetime(us: int) -> datetime:
    """Return the aware UTC datetime of a PostgreSQL timestamp (microseconds since 2000-01-01)."""
    return PG_EPOCH + timedelta(microseconds=us)


class _UnchangedToast(enum.Enum):
    """Type of the marker for a TOASTed value an UPDATE left untouched ('u' in TupleData)."""

    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast.UNCHANGED_TOAST
"""The value of a column whose TOASTed datum was not sent because it did not change."""

ColumnValue: TypeAlias = bytes | Literal[_UnchangedToast.UNCHANGED_TOAST] | None
"""Raw text (or binary) bytes of a column, ``None`` for SQL NULL, or ``UNCHANGED_TOAST``."""

Row: TypeAlias = tuple[ColumnValue, ...]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a Relation message."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """Whether the column is part of the replica identity (flag bit 1)."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a transaction ('B'); ``final_lsn`` is the LSN its Commit will carry."""

    final_lsn: int
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a transaction ('C')."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    """Replication origin of the transaction being sent ('O')."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    """Description of a table, sent before its first row change in a session ('R')."""

    xid: int | None
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """Description of a non-built-in data type used by a following Relation ('Y')."""

    xid: int | None
    type_oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row ('I')."""

    xid: int | None
    relation_id: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    """A changed row ('U'); ``old`` is the key ('K') or whole old row ('O') when sent."""

    xid: int | None
    relation_id: int
    old_kind: str | None
    old: Row | None
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    """A removed row ('D'), identified by its key ('K') or whole old row ('O')."""

    xid: int | None
    relation_id: int
    old_kind: str
    old: Row


@dataclass(frozen=True, slots=True)
class Truncate:
    """Tables emptied by one TRUNCATE ('T')."""

    xid: int | None
    options: int
    relation_ids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        """Whether TRUNCATE ... CASCADE was used."""
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        """Whether TRUNCATE ... RESTART IDENTITY was used."""
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with ``pg_logical_emit_message`` ('M')."""

    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Start of a block of changes of an in-progress transaction ('S', protocol 2+)."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """End of a block of streamed changes ('E', protocol 2+)."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """Commit of a streamed transaction ('c', protocol 2+)."""

    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Abort of a streamed (sub)transaction ('A'); the LSN and time come only with protocol 4."""

    xid: int
    subxid: int
    abort_lsn: int | None
    abort_time: int | None


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    """Start of a transaction prepared for two-phase commit ('b', protocol 3+)."""

    prepare_lsn: int
    end_lsn: int
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class Prepare:
    """End of a prepared transaction ('P', protocol 3+)."""

    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class CommitPrepared:
    """COMMIT PREPARED of a transaction sent earlier ('K', protocol 3+)."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    """ROLLBACK PREPARED of a transaction sent earlier ('r', protocol 3+)."""

    flags: int
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_time: int
    rollback_time: int
    xid: int
    gid: str


@dataclass(frozen=True, slots=True)
class StreamPrepare:
    """Prepare of a streamed transaction ('p', protocol 3+)."""

    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: int
    xid: int
    gid: str


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
    | StreamPrepare
)

# Wire layouts after the type byte (network byte order): B = Int8, H = Int16, I = Int32 xid/OID,
# Q = Int64 LSN, q = Int64 timestamp, i = Int32 type modifier.
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U32_U8: Final = struct.Struct("!IB")
_U32_U32: Final = struct.Struct("!II")
_U8_U16: Final = struct.Struct("!BH")
_U8_U64: Final = struct.Struct("!BQ")
_U64: Final = struct.Struct("!Q")
_U64_I64: Final = struct.Struct("!Qq")
_U32_I32: Final = struct.Struct("!Ii")
_BEGIN: Final = struct.Struct("!QqI")
_COMMIT: Final = struct.Struct("!BQQq")
_STREAM_COMMIT: Final = struct.Struct("!IBQQq")
_BEGIN_PREPARE: Final = struct.Struct("!QQqI")
_PREPARE: Final = struct.Struct("!BQQqI")
_ROLLBACK_PREPARED: Final = struct.Struct("!BQQqqI")

_U16_unpack_from: Final = _U16.unpack_from
_U32_unpack_from: Final = _U32.unpack_from
_U32_U8_unpack_from: Final = _U32_U8.unpack_from

# Message types whose body starts with the xid of the streamed transaction inside a stream block.
_STREAMED_XID_KINDS: Final = frozenset(b"IUDTRYM")

_NAMES: Final = {
    ord("B"): "Begin",
    ord("C"): "Commit",
    ord("O"): "Origin",
    ord("R"): "Relation",
    ord("Y"): "Type",
    ord("I"): "Insert",
    ord("U"): "Update",
    ord("D"): "Delete",
    ord("T"): "Truncate",
    ord("M"): "LogicalMessage",
    ord("S"): "StreamStart",
    ord("E"): "StreamStop",
    ord("c"): "StreamCommit",
    ord("A"): "StreamAbort",
    ord("b"): "BeginPrepare",
    ord("P"): "Prepare",
    ord("K"): "CommitPrepared",
    ord("r"): "RollbackPrepared",
    ord("p"): "StreamPrepare",
}


def _truncated(data: bytes, pos: int) -> ProtocolError:
    """Describe a field starting at ``pos`` that does not fit in the message."""
    name = _NAMES.get(data[0], "pgoutput")
    return ProtocolError(
        f"malformed {name} message: truncated, a field at byte {pos} "
        f"does not fit in {len(data)} bytes",
        offset=min(pos, len(data)),
    )


def _check_end(data: bytes, pos: int) -> None:
    """Reject a message that is shorter or longer than its fields say."""
    if pos != len(data):
        name = _NAMES.get(data[0], "pgoutput")
        if pos > len(data):
            raise ProtocolError(
                f"malformed {name} message: truncated, a value ends at byte {pos} "
                f"but the message has {len(data)} bytes",
                offset=len(data),
            )
        raise ProtocolError(
            f"malformed {name} message: {len(data) - pos} unexpected trailing bytes at byte {pos}",
            offset=pos,
        )


def _string(data: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``pos``; return it and the offset after the NUL."""
    end = data.find(0, pos)
    if end < 0:
        name = _NAMES.get(data[0], "pgoutput")
        raise ProtocolError(
            f"malformed {name} message: string starting at byte {pos} has no NUL terminator",
            offset=pos,
        )
    try:
        return data[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        name = _NAMES.get(data[0], "pgoutput")
        raise ProtocolError(
            f"malformed {name} message: string at byte {pos} is not UTF-8 "
            f"(bad byte at {pos + exc.start})",
            offset=pos + exc.start,
        ) from None


def _tuple_data(data: bytes, pos: int) -> tuple[Row, int]:
    """Read a TupleData at ``pos``; return the column values and the offset after them."""
    size = len(data)
    unpack_length = _U32_unpack_from
    column = -1
    try:
        (count,) = _U16_unpack_from(data, pos)
        pos += 2
        values: list[ColumnValue] = []
        append = values.append
        for column in range(count):
            kind = data[pos]
            if kind == 116 or kind == 98:  # 't' text, 'b' binary: Int32 length, then bytes
                (length,) = unpack_length(data, pos + 1)
                start = pos + 5
                pos = start + length
                if pos > size:
                    raise ProtocolError(
                        f"malformed {_NAMES.get(data[0], 'pgoutput')} message: column {column} "
                        f"value of {length} bytes at byte {start} runs past the end ({size} bytes)",
                        offset=size,
                    )
                append(data[start:pos])
            elif kind == 110:  # 'n' NULL
                append(None)
                pos += 1
            elif kind == 117:  # 'u' unchanged TOASTed value
                append(UNCHANGED_TOAST)
                pos += 1
            else:
                raise ProtocolError(
                    f"malformed {_NAMES.get(data[0], 'pgoutput')} message: column {column} "
                    f"has unknown kind {bytes((kind,))!r} at byte {pos}",
                    offset=pos,
                )
    except (IndexError, struct.error) as exc:
        where = f" (column {column})" if column >= 0 else ""
        raise ProtocolError(
            f"malformed {_NAMES.get(data[0], 'pgoutput')} message: tuple data truncated "
            f"at byte {min(pos, size)} of {size}{where}",
            offset=min(pos, size),
        ) from exc
    return tuple(values), pos


# Insert made without its __init__ (a frozen dataclass' sets each field through
# object.__setattr__): the slots' own setters, bound once. Inserts are most of a stream.
_new = object.__new__
_set_insert_xid, _set_insert_relation_id, _set_insert_new = (
    Insert.__dict__[name].__set__ for name in ("xid", "relation_id", "new")
)


def _insert(data: bytes, pos: int, xid: int | None) -> Insert:
    try:
        relation_id, marker = _U32_U8_unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    if marker != 78:  # 'N'
        raise ProtocolError(
            f"malformed Insert message: expected 'N' at byte {pos + 4}, got {bytes((marker,))!r}",
            offset=pos + 4,
        )
    new, pos = _tuple_data(data, pos + 5)
    if pos != len(data):
        _check_end(data, pos)
    message = _new(Insert)
    _set_insert_xid(message, xid)
    _set_insert_relation_id(message, relation_id)
    _set_insert_new(message, new)
    return message


def _update(data: bytes, pos: int, xid: int | None) -> Update:
    try:
        relation_id, marker = _U32_U8_unpack_from(data, pos)
        pos += 5
        old_kind: str | None = None
        old: Row | None = None
        if marker == 75 or marker == 79:  # 'K' key columns, 'O' whole old row
            old_kind = "K" if marker == 75 else "O"
            old, pos = _tuple_data(data, pos)
            marker = data[pos]
            pos += 1
    except (struct.error, IndexError) as exc:
        raise _truncated(data, pos) from exc
    if marker != 78:  # 'N'
        raise ProtocolError(
            f"malformed Update message: expected 'K', 'O' or 'N' at byte {pos - 1}, "
            f"got {bytes((marker,))!r}",
            offset=pos - 1,
        )
    new, pos = _tuple_data(data, pos)
    if pos != len(data):
        _check_end(data, pos)
    return Update(xid, relation_id, old_kind, old, new)


def _delete(data: bytes, pos: int, xid: int | None) -> Delete:
    try:
        relation_id, marker = _U32_U8_unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    if marker == 75:
        old_kind = "K"
    elif marker == 79:
        old_kind = "O"
    else:
        raise ProtocolError(
            f"malformed Delete message: expected 'K' or 'O' at byte {pos + 4}, "
            f"got {bytes((marker,))!r}",
            offset=pos + 4,
        )
    old, pos = _tuple_data(data, pos + 5)
    if pos != len(data):
        _check_end(data, pos)
    return Delete(xid, relation_id, old_kind, old)


def _begin(data: bytes) -> Begin:
    try:
        final_lsn, commit_time, xid = _BEGIN.unpack_from(data, 1)
    except struct.error as exc:
        raise _truncated(data, 1) from exc
    _check_end(data, 1 + _BEGIN.size)
    return Begin(final_lsn, commit_time, xid)


def _commit(data: bytes) -> Commit:
    try:
        flags, commit_lsn, end_lsn, commit_time = _COMMIT.unpack_from(data, 1)
    except struct.error as exc:
        raise _truncated(data, 1) from exc
    _check_end(data, 1 + _COMMIT.size)
    return Commit(flags, commit_lsn, end_lsn, commit_time)


def _origin(data: bytes, pos: int, xid: int | None) -> Origin:
    try:
        (commit_lsn,) = _U64.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    name, pos = _string(data, pos + 8)
    _check_end(data, pos)
    return Origin(commit_lsn, name)


def _relation(data: bytes, pos: int, xid: int | None) -> Relation:
    try:
        (relation_id,) = _U32.unpack_from(data, pos)
        namespace, pos = _string(data, pos + 4)
        name, pos = _string(data, pos)
        identity, count = _U8_U16.unpack_from(data, pos)
        pos += 3
        columns = []
        for _ in range(count):
            flags = data[pos]
            column_name, pos = _string(data, pos + 1)
            type_oid, type_modifier = _U32_I32.unpack_from(data, pos)
            pos += 8
            columns.append(Column(flags, column_name, type_oid, type_modifier))
    except (struct.error, IndexError) as exc:
        raise _truncated(data, pos) from exc
    _check_end(data, pos)
    return Relation(xid, relation_id, namespace, name, chr(identity), tuple(columns))


def _type(data: bytes, pos: int, xid: int | None) -> Type:
    try:
        (type_oid,) = _U32.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    namespace, pos = _string(data, pos + 4)
    name, pos = _string(data, pos)
    _check_end(data, pos)
    return Type(xid, type_oid, namespace, name)


def _truncate(data: bytes, pos: int, xid: int | None) -> Truncate:
    try:
        count, options = _U32_U8.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    pos += 5
    # Check the length before unpacking: a corrupt count must not build a huge format.
    _check_end(data, pos + 4 * count)
    relation_ids = struct.unpack_from(f"!{count}I", data, pos)
    return Truncate(xid, options, relation_ids)


def _logical_message(data: bytes, pos: int, xid: int | None) -> LogicalMessage:
    try:
        flags, lsn = _U8_U64.unpack_from(data, pos)
        prefix, pos = _string(data, pos + 9)
        (length,) = _U32.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    pos += 4
    _check_end(data, pos + length)
    return LogicalMessage(xid, bool(flags & 1), lsn, prefix, data[pos:])


def _stream_start(data: bytes, pos: int, xid: int | None) -> StreamStart:
    try:
        stream_xid, first_segment = _U32_U8.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    _check_end(data, pos + 5)
    return StreamStart(stream_xid, bool(first_segment))


def _stream_stop(data: bytes, pos: int, xid: int | None) -> StreamStop:
    _check_end(data, pos)
    return StreamStop()


def _stream_commit(data: bytes, pos: int, xid: int | None) -> StreamCommit:
    try:
        fields = _STREAM_COMMIT.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    _check_end(data, pos + _STREAM_COMMIT.size)
    return StreamCommit(*fields)


def _begin_prepare(data: bytes, pos: int, xid: int | None) -> BeginPrepare:
    try:
        prepare_lsn, end_lsn, prepare_time, prepared_xid = _BEGIN_PREPARE.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    gid, pos = _string(data, pos + _BEGIN_PREPARE.size)
    _check_end(data, pos)
    return BeginPrepare(prepare_lsn, end_lsn, prepare_time, prepared_xid, gid)


def _prepare_fields(data: bytes, pos: int) -> tuple[tuple[int, int, int, int, int], str]:
    """Read the layout shared by Prepare, CommitPrepared and StreamPrepare."""
    try:
        fields = _PREPARE.unpack_from(data, pos)
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    gid, pos = _string(data, pos + _PREPARE.size)
    _check_end(data, pos)
    return fields, gid


def _prepare(data: bytes, pos: int, xid: int | None) -> Prepare:
    fields, gid = _prepare_fields(data, pos)
    return Prepare(*fields, gid)


def _commit_prepared(data: bytes, pos: int, xid: int | None) -> CommitPrepared:
    fields, gid = _prepare_fields(data, pos)
    return CommitPrepared(*fields, gid)


def _stream_prepare(data: bytes, pos: int, xid: int | None) -> StreamPrepare:
    fields, gid = _prepare_fields(data, pos)
    return StreamPrepare(*fields, gid)


def _rollback_prepared(data: bytes, pos: int, xid: int | None) -> RollbackPrepared:
    try:
        flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, prepared_xid = (
            _ROLLBACK_PREPARED.unpack_from(data, pos)
        )
    except struct.error as exc:
        raise _truncated(data, pos) from exc
    gid, pos = _string(data, pos + _ROLLBACK_PREPARED.size)
    _check_end(data, pos)
    return RollbackPrepared(
        flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, prepared_xid, gid
    )


_Parser: TypeAlias = Callable[[bytes, int, int | None], Message]

# The rarer message types; Insert, Update, Delete, Begin and Commit are tested first in decode().
_PARSERS: Final[dict[int, _Parser]] = {
    ord("R"): _relation,
    ord("Y"): _type,
    ord("T"): _truncate,
    ord("M"): _logical_message,
    ord("O"): _origin,
    ord("S"): _stream_start,
    ord("E"): _stream_stop,
    ord("c"): _stream_commit,
    ord("b"): _begin_prepare,
    ord("P"): _prepare,
    ord("K"): _commit_prepared,
    ord("r"): _rollback_prepared,
    ord("p"): _stream_prepare,
}


# The protocol version that introduced each message type (the others are version 1's).
_SINCE_VERSION: Final = {
    ord("S"): 2,  # StreamStart
    ord("E"): 2,  # StreamStop
    ord("c"): 2,  # StreamCommit
    ord("A"): 2,  # StreamAbort
    ord("b"): 3,  # BeginPrepare
    ord("P"): 3,  # Prepare
    ord("K"): 3,  # CommitPrepared
    ord("r"): 3,  # RollbackPrepared
    ord("p"): 3,  # StreamPrepare
}


class Decoder:
    """Decode the pgoutput messages of one replication session, in the order received; a
    message of a later protocol version than the session asked for is a ``ProtocolError``."""

    __slots__ = ("_in_stream", "_proto_version")

    def __init__(self, proto_version: int = 1) -> None:
        if not 1 <= proto_version <= 4:
            raise ValueError(f"pgoutput proto_version must be 1 to 4, not {proto_version!r}")
        self._proto_version = proto_version
        self._in_stream = False

    @property
    def proto_version(self) -> int:
        """The pgoutput protocol version requested in START_REPLICATION."""
        return self._proto_version

    @property
    def in_stream(self) -> bool:
        """Whether a StreamStart was decoded without its StreamStop yet."""
        return self._in_stream

    def decode(self, data: bytes | memoryview) -> Message:
        """Decode one pgoutput message; raise ProtocolError if it is malformed or unknown."""
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            raise ProtocolError("empty pgoutput message", offset=0)
        kind = data[0]
        xid: int | None = None
        pos = 1
        if self._in_stream and kind in _STREAMED_XID_KINDS:
            try:
                (xid,) = _U32_unpack_from(data, 1)
            except struct.error as exc:
                raise _truncated(data, 1) from exc
            pos = 5
        if kind == 73:  # 'I'
            return _insert(data, pos, xid)
        if kind == 85:  # 'U'
            return _update(data, pos, xid)
        if kind == 68:  # 'D'
            return _delete(data, pos, xid)
        if kind == 66:  # 'B'
            return _begin(data)
        if kind == 67:  # 'C'
            return _commit(data)
        since = _SINCE_VERSION.get(kind, 1)
        if since > self._proto_version:
            raise ProtocolError(
                f"pgoutput message type {bytes((kind,))!r} comes with protocol {since}; this "
                f"session asked for protocol {self._proto_version}",
                offset=0,
            )
        if kind == 65:  # 'A'
            return self._stream_abort(data)
        parser = _PARSERS.get(kind)
        if parser is None:
            raise ProtocolError(
                f"unknown pgoutput message type {bytes((kind,))!r} at byte 0", offset=0
            )
        message = parser(data, pos, xid)
        if kind == 83:  # 'S'
            if self._in_stream:
                raise ProtocolError("StreamStart inside an open stream block", offset=0)
            self._in_stream = True
        elif kind == 69:  # 'E'
            if not self._in_stream:
                raise ProtocolError("StreamStop without a StreamStart", offset=0)
            self._in_stream = False
        return message

    def _stream_abort(self, data: bytes) -> StreamAbort:
        # Protocol 4 appends the abort LSN and time when streaming = parallel; earlier never.
        try:
            xid, subxid = _U32_U32.unpack_from(data, 1)
        except struct.error as exc:
            raise _truncated(data, 1) from exc
        if self._proto_version >= 4 and len(data) != 9:
            try:
                abort_lsn, abort_time = _U64_I64.unpack_from(data, 9)
            except struct.error as exc:
                raise _truncated(data, 9) from exc
            _check_end(data, 25)
            return StreamAbort(xid, subxid, abort_lsn, abort_time)
        _check_end(data, 9)
        return StreamAbort(xid, subxid, None, None)
