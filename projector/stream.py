"""The replication connection: slot management and the pgoutput CopyData stream.

Thin I/O around the sans-I/O frame parser in ``projector.core.replication``: it creates,
inspects and drops the slot, starts streaming, hands frames to the caller and sends
standby status updates. Connection failures surface as ``ConnectionLost``.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import psycopg.pq
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from projector.core.errors import ConnectionLost, ProjectorError, ProtocolError
from projector.core.lsn import format_lsn, parse_lsn
from projector.core.pgoutput import PG_EPOCH_UNIX_US
from projector.core.replication import (
    PrimaryKeepalive,
    XLogData,
    parse_frame,
    standby_status_update,
)
from projector.privileges import privilege_denial

# Session settings for decoding: timestamps reach us as ISO text in UTC whatever the
# server's defaults, which keeps the projection's fast path (and its cache) valid.
_SESSION_OPTIONS = "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=postgres"


def pg_now_us() -> int:
    """This machine's time in microseconds since PostgreSQL's epoch (2000-01-01 UTC)."""
    return time.time_ns() // 1000 - PG_EPOCH_UNIX_US


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """A row of ``pg_replication_slots`` for our slot."""

    name: str
    database: str | None
    active: bool
    active_pid: int | None
    wal_status: str | None
    safe_wal_size: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    retained_bytes: int | None


@dataclass(frozen=True, slots=True)
class ServerPosition:
    """IDENTIFY_SYSTEM's answer: which cluster, on which timeline, flushed how far."""

    system_id: str
    timeline: int
    flush_lsn: int


def connect(dsn: str, *, replication: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """Open an autocommit connection (a walsender one with ``replication=True``)."""
    try:
        if replication:
            return psycopg.connect(
                dsn, replication="database", autocommit=True, options=_SESSION_OPTIONS
            )
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        # A role without REPLICATION or CONNECT: retrying cannot help.
        denial = privilege_denial(exc, role=_role_of(dsn))
        if denial is not None:
            raise denial from exc
        raise ConnectionLost(f"cannot connect to PostgreSQL: {exc}", service="postgres") from exc


def _role_of(dsn: str) -> str | None:
    try:
        user = conninfo_to_dict(dsn).get("user")
    except psycopg.ProgrammingError:
        return None
    return str(user) if user else None


def system_identifier(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The cluster's system identifier: changes on restore from dump, initdb, major upgrade."""
    row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def slot_info(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> SlotInfo | None:
    """Our slot as PostgreSQL sees it, or None when it does not exist."""
    row = conn.execute(
        """
        SELECT slot_name::text, database::text, active, active_pid, wal_status, safe_wal_size,
               restart_lsn::text, confirmed_flush_lsn::text,
               pg_wal_lsn_diff(
                   CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                        ELSE pg_current_wal_lsn() END,
                   restart_lsn)::bigint
        FROM pg_replication_slots WHERE slot_name = %s
        """,
        (slot,),
    ).fetchone()
    if row is None:
        return None
    return SlotInfo(
        name=str(row[0]),
        database=row[1] if row[1] is None else str(row[1]),
        active=bool(row[2]),
        active_pid=int(row[3]) if row[3] is not None else None,  # type: ignore[call-overload]
        wal_status=str(row[4]) if row[4] is not None else None,
        safe_wal_size=int(row[5]) if row[5] is not None else None,  # type: ignore[call-overload]
        restart_lsn=parse_lsn(str(row[6])) if row[6] else None,
        confirmed_flush_lsn=parse_lsn(str(row[7])) if row[7] else None,
        retained_bytes=int(row[8]) if row[8] is not None else None,  # type: ignore[call-overload]
    )


def drop_slot(conn: psycopg.Connection[tuple[object, ...]], slot: str) -> None:
    """Drop the slot if it exists and nobody streams from it."""
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
        " WHERE slot_name = %s AND NOT active",
        (slot,),
    )


class ReplicationStream:
    """One walsender connection: create a slot with a snapshot, or stream from it."""

    def __init__(self, dsn: str, slot: str, publication: str) -> None:
        self._dsn = dsn
        self.slot = slot
        self.publication = publication
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._pgconn: psycopg.pq.abc.PGconn | None = None

    def open(self) -> None:
        self._conn = connect(self._dsn, replication=True)
        self._pgconn = self._conn.pgconn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._pgconn = None

    def __enter__(self) -> ReplicationStream:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def identify_system(self) -> ServerPosition:
        """The cluster's identity, its current timeline and WAL flush position."""
        conn = self._require()
        try:
            row = conn.execute("IDENTIFY_SYSTEM").fetchone()
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
        assert row is not None
        return ServerPosition(str(row[0]), int(str(row[1])), parse_lsn(str(row[2])))

    def create_slot(self, *, temporary: bool = False) -> tuple[int, str]:
        """Create the logical slot; return its consistent point and an exported snapshot.

        The snapshot stays importable (``SET TRANSACTION SNAPSHOT``) until this
        connection runs another command or closes. A temporary slot goes with the
        connection.
        """
        conn = self._require()
        kind = sql.SQL("TEMPORARY LOGICAL" if temporary else "LOGICAL")
        try:
            cur = conn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} {} pgoutput (SNAPSHOT 'export')").format(
                    sql.Identifier(self.slot), kind
                )
            )
            row = cur.fetchone()
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
        except psycopg.Error as exc:
            raise ProjectorError(f"cannot create replication slot {self.slot!r}: {exc}") from exc
        assert row is not None
        return parse_lsn(str(row[1])), str(row[2])

    def start(self, start_lsn: int) -> None:
        """Enter COPY_BOTH: stream the slot's changes from where it was confirmed."""
        conn = self._require()
        command = sql.SQL(
            "START_REPLICATION SLOT {} LOGICAL {} "
            "(proto_version '1', publication_names {}, messages 'true')"
        ).format(
            sql.Identifier(self.slot),
            sql.SQL(format_lsn(start_lsn)),
            sql.Literal(self.publication),
        )
        pgconn = conn.pgconn
        try:
            pgconn.send_query(command.as_bytes(conn))
            while True:
                if pgconn.flush() == 0:
                    break
            result = None
            while True:
                self._wait_readable(10.0)
                pgconn.consume_input()
                if not pgconn.is_busy():
                    result = pgconn.get_result()
                    break
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
        if result is None or result.status != psycopg.pq.ExecStatus.COPY_BOTH:
            message = (
                result.error_message.decode(errors="replace").strip()
                if result is not None
                else "no result"
            )
            raise ProjectorError(f"START_REPLICATION on slot {self.slot!r} failed: {message}")

    def frames(
        self, timeout: float, wake: int | None = None
    ) -> Iterator[XLogData | PrimaryKeepalive]:
        """Yield every frame already received; wait up to ``timeout`` when there is none.

        Ends (possibly with nothing) once the socket has no more data right now, so the
        caller learns when the stream went quiet, or when the file descriptor ``wake``
        becomes readable while waiting (the caller's other work is ready).
        """
        pgconn = self._require_pgconn()
        waited = False
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                yield parse_frame(data)
                continue
            if nbytes == 0:
                if waited:
                    return
                if not self._wait_readable(timeout, wake):
                    return
                waited = True
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as exc:
                    raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
                continue
            message = pgconn.error_message.decode(errors="replace").strip()
            if nbytes == -1:
                result = pgconn.get_result()
                if result is not None and result.error_message:
                    message = result.error_message.decode(errors="replace").strip()
            raise ConnectionLost(
                f"replication stream ended: {message or 'server closed the stream'}",
                service="postgres",
            )

    def send_status(self, flushed_lsn: int, *, reply_requested: bool = False) -> None:
        """Tell the server everything up to ``flushed_lsn`` is safely applied."""
        pgconn = self._require_pgconn()
        frame = standby_status_update(
            flushed_lsn,
            flushed_lsn,
            flushed_lsn,
            now_us=pg_now_us(),
            reply_requested=reply_requested,
        )
        try:
            if pgconn.put_copy_data(frame) != 1 or pgconn.flush() < 0:
                raise ConnectionLost(
                    f"cannot send status update: {pgconn.error_message.decode(errors='replace')}",
                    service="postgres",
                )
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc

    def end_copy(self, timeout: float = 5.0) -> None:
        """End streaming so that the server has read every status update sent before.

        Closing a socket that still holds unread WAL data resets the connection, and the
        server can then lose the last status update unread. After our CopyDone, the
        server's own CopyDone (or the end of the connection) shows it read everything.
        """
        pgconn = self._require_pgconn()
        deadline = time.monotonic() + timeout
        try:
            if pgconn.put_copy_end() != 1 or pgconn.flush() < 0:
                return
            while True:
                nbytes, _ = pgconn.get_copy_data(1)
                if nbytes < 0:
                    return  # the server ended COPY too, or the connection failed
                if nbytes == 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._wait_readable(remaining):
                        return
                    pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc

    def _wait_readable(self, timeout: float, wake: int | None = None) -> bool:
        """Wait until the server sent something (True), or ``wake`` is readable (False)."""
        pgconn = self._require_pgconn()
        sock = pgconn.socket
        watched = [sock] if wake is None else [sock, wake]
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError) as exc:
            raise ConnectionLost(f"lost PostgreSQL: {exc}", service="postgres") from exc
        return sock in ready

    def _require(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None:
            raise ProtocolError("replication connection is not open")
        return self._conn

    def _require_pgconn(self) -> psycopg.pq.abc.PGconn:
        if self._pgconn is None:
            raise ProtocolError("replication connection is not open")
        return self._pgconn
