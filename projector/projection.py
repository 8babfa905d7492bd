"""The projection: decoded row changes in, a description of what Redis must do out.

``Projection`` is pure. It maps ``pomodoros`` changes to count deltas per leaderboard
key and member, and ``users`` changes to display-name writes, aggregating as rows arrive
so memory grows with distinct (board, member) pairs, never with rows. ``take_batch``
hands the accumulated ``BatchDelta`` to the sink and starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from projector.buckets import (
    Period,
    Retention,
    bucket_ids_for_date,
    expires_at,
    local_date,
)
from projector.errors import ProjectorError
from projector.pgoutput import (
    UNCHANGED_TOAST,
    ColumnValue,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)

POMODOROS = "pomodoros"
USERS = "users"
SCHEMA = "public"

# Columns whose old values UPDATE and DELETE must carry (the replica identity must cover
# them), per projected table: without them a retraction or a move cannot be projected.
IDENTITY_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    (SCHEMA, POMODOROS): ("user_id", "completed_at"),
    (SCHEMA, USERS): ("id",),
}
_IS_KEY = 1  # Relation column flag: part of the replica identity

# One board key with its expiry (Unix seconds, None = never).
BoardSlot = tuple[str, int | None]


@dataclass(slots=True)
class BatchDelta:
    """What Redis must do for a run of changes, in this order.

    1. if ``clear_boards``: remove every leaderboard; if ``clear_users``: the name hash;
    2. add ``deltas[key][member]`` to each board member (dropping members at or below 0)
       and set each touched board's expiry from ``expiry``;
    3. set or delete (``None``) each display name in ``names``.
    """

    clear_boards: bool = False
    clear_users: bool = False
    deltas: dict[str, dict[str, int]] = field(default_factory=dict)
    expiry: dict[str, int | None] = field(default_factory=dict)
    names: dict[str, str | None] = field(default_factory=dict)
    row_changes: int = 0

    def is_noop(self) -> bool:
        """True when applying it would change no key (a watermark may still move)."""
        return not (
            self.clear_boards
            or self.clear_users
            or self.names
            or any(any(v for v in members.values()) for members in self.deltas.values())
        )


@dataclass(frozen=True, slots=True)
class _PomodoroColumns:
    user_id: int
    completed_at: int


@dataclass(frozen=True, slots=True)
class _UserColumns:
    id: int
    display_name: int


class SchemaError(ProjectorError):
    """A projected table lacks a column the projection needs."""


class ReplicaIdentityError(ProjectorError):
    """The stream's changes of a table lack old values the projection needs."""

    def __init__(self, table: str, missing: list[str], identity: str) -> None:
        super().__init__(
            f"changes of {table} were logged with a replica identity ({identity!r}) that does "
            f"not cover {', '.join(missing)}: deletes and moves of its rows cannot be projected"
        )
        self.table = table
        self.missing = missing


def _column_index(rel: Relation, name: str) -> int:
    for index, column in enumerate(rel.columns):
        if column.name == name:
            return index
    raise SchemaError(f"table {rel.namespace}.{rel.name} has no column {name!r}")


def board_key(prefix: str, period: Period | str, bucket: str) -> str:
    """The Redis key of one leaderboard, e.g. ``pomo:lb:week:2026-W48``."""
    return f"{prefix}lb:{period}:{bucket}"


class Projection:
    """Accumulates the effect of row changes on leaderboards and display names."""

    def __init__(
        self,
        prefix: str,
        tz: ZoneInfo,
        retention: Retention,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = prefix
        self._tz = tz
        self._retention = retention
        self._clock = clock
        self._all_key = board_key(prefix, Period.ALL, "all")
        self._pomodoros: dict[int, _PomodoroColumns] = {}
        self._users: dict[int, _UserColumns] = {}
        self._hour_cache: dict[bytes, tuple[BoardSlot, ...] | None] = {}
        self._date_cache: dict[date, tuple[BoardSlot, ...]] = {}
        self._now = clock()
        self._batch = BatchDelta()

    # -- relations -------------------------------------------------------------------

    def on_relation(self, rel: Relation) -> None:
        """Learn a table's column layout (sent before its first change and after DDL)."""
        self._pomodoros.pop(rel.relation_id, None)
        self._users.pop(rel.relation_id, None)
        if rel.namespace != SCHEMA:
            return
        needed = IDENTITY_COLUMNS.get((rel.namespace, rel.name))
        if needed:
            keys = {column.name for column in rel.columns if column.flags & _IS_KEY}
            missing = [name for name in needed if name not in keys]
            if missing:
                raise ReplicaIdentityError(
                    f"{rel.namespace}.{rel.name}", missing, rel.replica_identity
                )
        if rel.name == POMODOROS:
            self._pomodoros[rel.relation_id] = _PomodoroColumns(
                _column_index(rel, "user_id"), _column_index(rel, "completed_at")
            )
        elif rel.name == USERS:
            self._users[rel.relation_id] = _UserColumns(
                _column_index(rel, "id"), _column_index(rel, "display_name")
            )

    # -- row changes -----------------------------------------------------------------

    def on_change(self, msg: Insert | Update | Delete | Truncate) -> None:
        """Project one row change of any kind."""
        if isinstance(msg, Insert):
            self.on_insert(msg)
        elif isinstance(msg, Update):
            self.on_update(msg)
        elif isinstance(msg, Delete):
            self.on_delete(msg)
        else:
            self.on_truncate(msg)

    def on_insert(self, msg: Insert) -> None:
        """A new row: one more pomodoro, or a display name set."""
        self._batch.row_changes += 1
        cols = self._pomodoros.get(msg.relation_id)
        if cols is not None:
            self._count(msg.new[cols.user_id], msg.new[cols.completed_at], 1)
            return
        ucols = self._users.get(msg.relation_id)
        if ucols is not None:
            self._name(msg.new[ucols.id], msg.new[ucols.display_name])

    def on_update(self, msg: Update) -> None:
        """A changed row: move a pomodoro between members/buckets, or rename a user."""
        self._batch.row_changes += 1
        cols = self._pomodoros.get(msg.relation_id)
        if cols is not None:
            old = msg.old
            if old is None:
                return  # replica identity columns (user_id, completed_at, id) unchanged
            new = msg.new
            old_user, old_ts = old[cols.user_id], old[cols.completed_at]
            new_user, new_ts = new[cols.user_id], new[cols.completed_at]
            if new_user is UNCHANGED_TOAST:
                new_user = old_user
            if new_ts is UNCHANGED_TOAST:
                new_ts = old_ts
            self._count(old_user, old_ts, -1)
            self._count(new_user, new_ts, 1)
            return
        ucols = self._users.get(msg.relation_id)
        if ucols is not None:
            new_id = msg.new[ucols.id]
            if msg.old is not None:
                old_id = msg.old[ucols.id]
                if old_id != new_id and isinstance(old_id, bytes):
                    self._batch.names[old_id.decode()] = None
            name = msg.new[ucols.display_name]
            if name is UNCHANGED_TOAST:
                if msg.old is None or msg.old[ucols.id] == new_id:
                    return  # name untouched and the user kept its id
                # Only a whole old row (REPLICA IDENTITY FULL) still carries the name.
                if msg.old_kind != "O" or msg.old[ucols.display_name] is UNCHANGED_TOAST:
                    raise SchemaError(
                        "users row changed id while its display_name was an unchanged TOAST "
                        "value; set REPLICA IDENTITY FULL on users to project this"
                    )
                name = msg.old[ucols.display_name]
            self._name(new_id, name)

    def on_delete(self, msg: Delete) -> None:
        """A removed row: one pomodoro retracted, or a display name removed."""
        self._batch.row_changes += 1
        cols = self._pomodoros.get(msg.relation_id)
        if cols is not None:
            self._count(msg.old[cols.user_id], msg.old[cols.completed_at], -1)
            return
        ucols = self._users.get(msg.relation_id)
        if ucols is not None:
            user = msg.old[ucols.id]
            if isinstance(user, bytes):
                self._batch.names[user.decode()] = None

    def on_truncate(self, msg: Truncate) -> None:
        """Emptied tables: every board, or every display name, starts from nothing."""
        self._batch.row_changes += 1
        batch = self._batch
        for relation_id in msg.relation_ids:
            if relation_id in self._pomodoros:
                batch.clear_boards = True
                batch.deltas.clear()
                batch.expiry.clear()
            elif relation_id in self._users:
                batch.clear_users = True
                batch.names.clear()

    # -- batches ---------------------------------------------------------------------

    @property
    def pending_row_changes(self) -> int:
        return self._batch.row_changes

    def take_batch(self) -> BatchDelta:
        """Return everything accumulated since the last call, and start a new batch."""
        batch = self._batch
        self._batch = BatchDelta()
        self._refresh_clock()
        return batch

    def _refresh_clock(self) -> None:
        now = self._clock()
        # Entries cache expiries relative to "now"; drop them when the day may have turned.
        if int(now // 3600) != int(self._now // 3600):
            self._hour_cache.clear()
            self._date_cache.clear()
        self._now = now

    # -- internals -------------------------------------------------------------------

    def _name(self, user: ColumnValue, name: ColumnValue) -> None:
        if isinstance(user, bytes):
            self._batch.names[user.decode()] = name.decode() if isinstance(name, bytes) else None

    def _count(self, user: ColumnValue, completed_at: ColumnValue, delta: int) -> None:
        if not isinstance(user, bytes):
            return
        member = user.decode()
        deltas = self._batch.deltas
        members = deltas.get(self._all_key)
        if members is None:
            members = deltas[self._all_key] = {}
            self._batch.expiry[self._all_key] = None
        members[member] = members.get(member, 0) + delta
        if not isinstance(completed_at, bytes):
            return
        slots = self._slots_for(completed_at)
        if not slots:
            return
        expiry = self._batch.expiry
        for key, _expires in slots:
            members = deltas.get(key)
            if members is None:
                members = deltas[key] = {}
                expiry[key] = _expires
            members[member] = members.get(member, 0) + delta

    def _slots_for(self, text: bytes) -> tuple[BoardSlot, ...]:
        """Live board keys (not yet expired) of a timestamptz in PostgreSQL's text form."""
        # Fast path: ISO text in UTC ("2026-11-26 13:52:32.123+00") is cached per UTC hour
        # when every instant of that hour falls on the same local date.
        if text[-3:] == b"+00" and text[4:5] == b"-" and text[10:11] == b" ":
            hour = text[:13]
            if hour in self._hour_cache:
                cached = self._hour_cache[hour]
                if cached is not None:
                    return cached
            else:
                start = datetime.fromisoformat(hour.decode() + ":00:00+00:00")
                first = local_date(start, self._tz)
                last = local_date(start + timedelta(microseconds=3_599_999_999), self._tz)
                entry = self._slots_for_date(first) if first == last and first else None
                self._hour_cache[hour] = entry
                if entry is not None:
                    return entry
        try:
            ts = datetime.fromisoformat(text.decode())
        except ValueError:
            return ()  # infinity, BC or beyond year 9999: counted in all-time only
        day = local_date(ts, self._tz)
        return self._slots_for_date(day) if day is not None else ()

    def _slots_for_date(self, day: date) -> tuple[BoardSlot, ...]:
        cached = self._date_cache.get(day)
        if cached is not None:
            return cached
        now = self._now
        slots: list[BoardSlot] = []
        for period, bucket in zip(
            (Period.DAY, Period.WEEK, Period.MONTH, Period.YEAR),
            bucket_ids_for_date(day),
            strict=True,
        ):
            expires = expires_at(period, bucket, self._tz, self._retention)
            if expires is not None and expires <= now:
                continue  # the board has expired: PostgreSQL answers for it now
            slots.append((board_key(self._prefix, period, bucket), expires))
        entry = tuple(slots)
        self._date_cache[day] = entry
        return entry
