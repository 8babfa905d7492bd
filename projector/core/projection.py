"""The projection: decoded row changes in, a description of what Redis must do out.

``Projection`` is pure. Each Relation message becomes a per-table plan (which boards read
the table, at which column positions; which label source it is), so a row change costs a
lookup and, per board, one score delta for the member in the group of its local date (and
one in the all-time group): the date's live bucket keys share that group. Deltas aggregate
as rows arrive: memory grows with distinct (date, member) pairs, never with rows.
``take_batch`` spreads the groups over their keys, summing in C where groups meet (a week's
days), and hands the accumulated ``BatchDelta`` to the sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from projector.core import windows as _windows
from projector.core.boards import IDENTITY_NAMES, RESTORE, Board, Table, label_sources
from projector.core.buckets import (
    TIMED_PERIODS,
    Period,
    Retention,
    bucket_ids_for_date,
    expires_at,
    local_date,
)
from projector.core.condition import TYPE_NAMES, UnloggedValue, predicate, type_problem
from projector.core.errors import BoardsChanged, RebuildRequired
from projector.core.keys import Keys
from projector.core.limits import MAX_MEMBER, clean_label
from projector.core.pgoutput import (
    UNCHANGED_TOAST,
    ColumnValue,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)

_IS_KEY = 1  # Relation column flag: part of the replica identity

# One board key with its expiry (Unix seconds, None = never).
BoardSlot = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class BuildSwap:
    """The step that makes boards built beside the live ones live (``projector.backfill``):
    the build's ``started`` marker must exist and each ``expect`` key hold its member count
    (else the build lost keys); every board under an ``unlink`` prefix goes; each ``merge``
    (base, delta, board, expiry or None) becomes the board: base plus delta, scores at or
    below 0 dropped."""

    started: str
    unlink: tuple[str, ...]
    expect: tuple[tuple[str, int], ...]
    merge: tuple[tuple[str, str, str, int | None], ...]


@dataclass(slots=True)
class BatchDelta:
    """What Redis must do for a run of changes, in this order.

    1. remove every board key starting with a prefix in ``clear_boards`` (a TRUNCATE) and
       every label hash in ``clear_labels``;
    2. add ``deltas[key][member]`` to each board member (dropping members at or below 0)
       and set each touched board's expiry from ``expiry``;
    3. set or delete (``None``) each label in ``labels[hash key][member]``.
    """

    clear_boards: set[str] = field(default_factory=set)
    clear_labels: set[str] = field(default_factory=set)
    deltas: dict[str, dict[str, int]] = field(default_factory=dict)
    expiry: dict[str, int | None] = field(default_factory=dict)
    labels: dict[str, dict[str, str | None]] = field(default_factory=dict)
    # Keys of boards being built: deltas kept as they are (even at or below 0), no expiry,
    # not registered; the build's swap merges them into the boards.
    raw: set[str] = field(default_factory=set)
    # The swap that makes built boards live (see projector.backfill), applied last.
    swap: BuildSwap | None = None
    # Rolling windows moved to the day ``window_day`` after the deltas and the swap
    # (projector.core.windows); None: the windows stay where they are.
    windows: tuple[_windows.Advance, ...] = ()
    window_day: str | None = None
    row_changes: int = 0
    # Row changes by kind, and transactions ending in this batch (for the metrics).
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    truncates: int = 0
    transactions: int = 0

    def kinds(self) -> dict[str, int]:
        return {
            "insert": self.inserts,
            "update": self.updates,
            "delete": self.deletes,
            "truncate": self.truncates,
        }


_TIMESTAMPTZ = 1184
# An hour not in the cache of local dates (whose entries may be None).
_UNSEEN = object()
_INTEGER_OIDS = frozenset({20, 21, 23})  # bigint, smallint, integer


def identity_columns(boards: Iterable[Board]) -> dict[Table, tuple[str, ...]]:
    """Per table, the columns whose old values UPDATE and DELETE must carry."""
    needed: dict[Table, list[str]] = {}
    for board in boards:
        columns = needed.setdefault(board.table, [])
        columns.extend(c for c in board.columns if c not in columns)
        if board.labels is not None:
            label_columns = needed.setdefault(board.labels.table, [])
            if board.labels.key not in label_columns:
                label_columns.append(board.labels.key)
    return {table: tuple(columns) for table, columns in needed.items()}


class _Group:
    """The deltas of one batch for the members of one set of board keys: the live bucket
    keys of one local date (or the all-time key) of one board. Rows add to ``members``;
    ``Projection._spread`` moves them to each key's deltas."""

    __slots__ = ("building", "members", "slots")

    def __init__(self, slots: tuple[BoardSlot, ...], building: bool) -> None:
        self.slots = slots
        self.building = building
        self.members: dict[str, int] = {}


class _BoardPlan:
    """One board over one relation: column positions and cached delta groups per date."""

    __slots__ = (
        "all_group",
        "board",
        "building",
        "dates",
        "keys",
        "member",
        "prefix",
        "qualifies",
        "time",
        "timed",
        "value",
        "windows",
    )

    def __init__(self, board: Board, rel: Relation, keys: Keys, building: bool = False) -> None:
        self.board = board
        self.building = building
        self.keys = keys
        self.member = _column_index(rel, board.member)
        self.time = _column_index(rel, board.time)
        self.value = _column_index(rel, board.sum) if board.sum else -1
        # The board's condition on a row (None: every row counts); _plan_problem checked it.
        self.qualifies = (
            predicate(board.where, _typed_columns(rel, board.where.columns))
            if board.where is not None
            else None
        )
        self.prefix = keys.board_prefix(board.name)
        self.all_group = (
            _Group(((keys.board(board.name, Period.ALL, "all"), None),), building)
            if Period.ALL in board.periods
            else None
        )
        self.timed = tuple(p for p in TIMED_PERIODS if p in board.periods)
        self.dates: dict[date, _Group] = {}
        # A board being built gets its windows whole from its day buckets once it is live.
        self.windows = () if building else _windows.window_periods(board)


@dataclass(frozen=True, slots=True)
class _LabelPlan:
    key: int
    column: int
    hash_key: str


@dataclass(frozen=True, slots=True)
class _TablePlan:
    boards: tuple[_BoardPlan, ...]
    labels: _LabelPlan | None


def _column_index(rel: Relation, name: str) -> int:
    for index, column in enumerate(rel.columns):
        if column.name == name:
            return index
    return -1


def _typed_columns(rel: Relation, names: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Position and type name of each named column of ``rel`` (that exists)."""
    found = {}
    for name in names:
        index = _column_index(rel, name)
        if index >= 0:
            oid = rel.columns[index].type_oid
            found[name] = (index, TYPE_NAMES.get(oid, f"the type with oid {oid}"))
    return found


def _plan_problem(board: Board, rel: Relation) -> str | None:
    """Why the stream's layout of the board's table cannot be projected, with the fix."""
    table = f"{rel.namespace}.{rel.name}"
    if board.where is not None:
        types = {n: t for n, (_, t) in _typed_columns(rel, board.where.columns).items()}
        problem = type_problem(board.where, table, types)
        if problem is not None:
            return f"field 'where': {problem}; {RESTORE}"
    for field_name, column, oids, wanted in (
        ("member", board.member, None, ""),
        ("time", board.time, frozenset({_TIMESTAMPTZ}), "timestamptz"),
        ("score.sum", board.sum, _INTEGER_OIDS, "an integer"),
    ):
        if column is None:
            continue
        index = _column_index(rel, column)
        if index < 0:
            return f"field {field_name!r}: {table} has no column {column!r}; {RESTORE}"
        if oids is not None and rel.columns[index].type_oid not in oids:
            return f"field {field_name!r}: column {table}.{column} is no longer {wanted}; {RESTORE}"
    return _identity_problem(rel, board.columns, "table")


def _identity_problem(rel: Relation, needed: Iterable[str], what: str) -> str | None:
    """Whether the old rows of ``rel``'s changes carry ``needed``, else the fix."""
    keys = {column.name for column in rel.columns if column.flags & _IS_KEY}
    missing = [name for name in needed if name not in keys]
    if not missing:
        return None
    identity = IDENTITY_NAMES.get(rel.replica_identity, rel.replica_identity)
    return (
        f"{what} {rel.namespace}.{rel.name} has REPLICA IDENTITY {identity}, which does not "
        f"log the old {', '.join(missing)} of deleted or changed rows; fix it with: "
        f'ALTER TABLE "{rel.namespace}"."{rel.name}" REPLICA IDENTITY FULL'
    )


class Projection:
    """Accumulates the effect of row changes on the declared boards and their labels."""

    def __init__(
        self,
        boards: Iterable[Board],
        keys: Keys,
        tz: ZoneInfo,
        retention: Retention,
        clock: Callable[[], float],
        building: Iterable[Board] = (),
        building_keys: Keys | None = None,
        partitioned: Iterable[Table] = (),
    ) -> None:
        self._boards = tuple(boards)
        self._keys = keys
        # Boards being built beside the live ones (projector.backfill): their deltas go to
        # keys under ``building_keys``, only while ``building_on`` (transactions the build's
        # snapshot does not hold).
        self._building = tuple(building)
        self._building_keys = building_keys or keys
        self.building_on = False
        self.built_keys: set[str] = set()
        self.building_truncated = False
        self._relations: dict[int, Relation] = {}
        self._tz = tz
        self._retention = retention
        self._clock = clock
        self._identity = identity_columns(self._boards + self._building)
        self._labels = {labels.table: labels for labels in label_sources(self._boards)}
        self._plans: dict[int, _TablePlan] = {}
        # pgoutput follows the Relation of a partitioned table (published through its root)
        # with the Relation of the leaf partition whose change comes next: its flags say what
        # that partition's replica identity logs.
        self._partitioned = frozenset(partitioned)
        self._partition_of_next: Table | None = None
        self._hour_cache: dict[bytes, date | None] = {}
        self._now = clock()
        self._batch = BatchDelta()
        # Groups with deltas not yet spread over their keys (``_spread``).
        self._touched: list[_Group] = []
        # The last day of the rolling windows Redis holds (None: it holds none, or they must
        # be built whole); ``_window_from``: the day of the window keys Redis has (to remove).
        self._window_day: date | None = None
        self._window_from: date | None = None
        self._window_checked = 0.0

    # -- relations -------------------------------------------------------------------

    def on_relation(self, rel: Relation) -> None:
        """Learn a table's column layout (sent before its first change and after DDL).

        ``BoardsChanged`` names every board the layout cannot be projected with: a column
        it reads gone or retyped, or a replica identity (of the table or of the partition
        whose change follows) that does not log the old values it needs. Nothing of that
        table has been projected with the new layout then.
        """
        self._plans.pop(rel.relation_id, None)
        self._relations[rel.relation_id] = rel
        table = Table(rel.namespace, rel.name)
        root, self._partition_of_next = self._partition_of_next, None
        if table not in self._identity:
            if root is not None:
                self._check_partition(rel, root)
            return
        if table in self._partitioned:
            self._partition_of_next = table
        problems: dict[str, str] = {}
        plans: list[_BoardPlan] = []
        for board, keys, building in self._boards_of(table):
            problem = _plan_problem(board, rel)
            if problem is None:
                plans.append(_BoardPlan(board, rel, keys, building=building))
            elif not building or self.building_on:
                # (A board being built ignores a layout older than its snapshot.)
                problems[board.name] = f"board {board.name!r}: {problem}"
        labels = self._labels.get(table)
        label_plan = None
        if labels is not None:
            key, column = _column_index(rel, labels.key), _column_index(rel, labels.column)
            problem = (
                f"{table} has no column {labels.key if key < 0 else labels.column!r}"
                if key < 0 or column < 0
                else _identity_problem(rel, (labels.key,), "table")
            )
            if problem is not None:
                for board in self._boards:
                    if board.labels is not None and board.labels.table == table:
                        problems[board.name] = f"board {board.name!r}: field 'labels': {problem}"
            else:
                label_plan = _LabelPlan(key, column, self._keys.labels(labels))
        if problems:
            raise BoardsChanged("; ".join(problems.values()), problems)
        self._plans[rel.relation_id] = _TablePlan(tuple(plans), label_plan)

    def _boards_of(self, table: Table) -> Iterable[tuple[Board, Keys, bool]]:
        for board in self._boards:
            if board.table == table:
                yield board, self._keys, False
        for board in self._building:
            if board.table == table:
                yield board, self._building_keys, True

    def _check_partition(self, rel: Relation, root: Table) -> None:
        """The leaf partition of ``root`` whose change follows must log what its boards read."""
        problems = {}
        for board, _keys, building in self._boards_of(root):
            if building and not self.building_on:
                continue
            problem = _identity_problem(rel, board.columns, f"partition of {root},")
            if problem is not None:
                problems[board.name] = f"board {board.name!r}: {problem}"
        if problems:
            raise BoardsChanged("; ".join(problems.values()), problems)

    # -- row changes -----------------------------------------------------------------

    def on_change(self, msg: Insert | Update | Delete | Truncate) -> None:
        """Project one row change of any kind."""
        if type(msg) is Insert:  # the common case first, without isinstance's generality
            self.on_insert(msg)
        elif isinstance(msg, Update):
            self.on_update(msg)
        elif isinstance(msg, Delete):
            self.on_delete(msg)
        elif isinstance(msg, Truncate):
            self.on_truncate(msg)
        else:
            self.on_insert(msg)

    def on_insert(self, msg: Insert) -> None:
        """A new row: its contribution to each board, or a label set."""
        batch = self._batch
        batch.row_changes += 1
        batch.inserts += 1
        plan = self._plans.get(msg.relation_id)
        if plan is None:
            return
        new = msg.new
        for board in plan.boards:
            if board.qualifies is not None and not board.qualifies(new, None):
                continue
            value = b"1" if board.value < 0 else new[board.value]
            self._score(board, new[board.member], new[board.time], value, 1)
        if plan.labels is not None:
            self._label(plan.labels, new[plan.labels.key], new[plan.labels.column])

    def on_update(self, msg: Update) -> None:
        """A changed row: its old contribution out, its new one in; or a label changed."""
        batch = self._batch
        batch.row_changes += 1
        batch.updates += 1
        plan = self._plans.get(msg.relation_id)
        if plan is None:
            return
        old, new = msg.old, msg.new
        if old is not None:
            # Without an old tuple no identity column changed, and every column a board
            # reads is an identity column: the row's contributions stay as they were.
            for board in plan.boards:
                old_member, old_time = old[board.member], old[board.time]
                new_member, new_time = new[board.member], new[board.time]
                if new_member is UNCHANGED_TOAST:
                    new_member = old_member
                if new_time is UNCHANGED_TOAST:
                    new_time = old_time
                old_value, new_value = _value(board, old), _value(board, new)
                if new_value is UNCHANGED_TOAST:
                    new_value = old_value
                if board.qualifies is not None:
                    # Into the condition: added; out of it: removed; outside: nothing.
                    try:
                        was, now = board.qualifies(old, None), board.qualifies(new, old)
                    except UnloggedValue as exc:
                        raise self._unlogged(board, msg, exc) from None
                    if not (was and now):
                        if was:
                            self._score(board, old_member, old_time, old_value, -1)
                        if now:
                            self._score(board, new_member, new_time, new_value, 1)
                        continue
                if (old_member, old_time, old_value) == (new_member, new_time, new_value):
                    continue
                self._score(board, old_member, old_time, old_value, -1)
                self._score(board, new_member, new_time, new_value, 1)
        labels = plan.labels
        if labels is not None:
            self._relabel(msg, labels)

    def on_delete(self, msg: Delete) -> None:
        """A removed row: its contribution retracted, or a label removed."""
        batch = self._batch
        batch.row_changes += 1
        batch.deletes += 1
        plan = self._plans.get(msg.relation_id)
        if plan is None:
            return
        old = msg.old
        for board in plan.boards:
            if board.qualifies is not None and not board.qualifies(old, None):
                continue
            self._score(board, old[board.member], old[board.time], _value(board, old), -1)
        if plan.labels is not None:
            member = old[plan.labels.key]
            if isinstance(member, bytes):
                self._labels_of(plan.labels.hash_key)[member.decode()] = None

    def on_truncate(self, msg: Truncate) -> None:
        """Emptied tables: their boards, or their labels, start from nothing."""
        self._partition_of_next = None
        self._spread()  # deltas before the TRUNCATE are dropped, those after it kept
        batch = self._batch
        batch.row_changes += 1
        batch.truncates += 1
        for relation_id in msg.relation_ids:
            plan = self._plans.get(relation_id)
            if plan is None:
                continue
            for board in plan.boards:
                if board.building:
                    # Rows of the build's snapshot were truncated: the build starts again.
                    self.building_truncated |= self.building_on
                    continue
                batch.clear_boards.add(board.prefix)
                for key in [k for k in batch.deltas if k.startswith(board.prefix)]:
                    del batch.deltas[key]
                    batch.expiry.pop(key, None)
            if plan.labels is not None:
                batch.clear_labels.add(plan.labels.hash_key)
                batch.labels.pop(plan.labels.hash_key, None)

    def promote(self, boards: Iterable[Board]) -> None:
        """The built boards are live now (under the live keys) and ``boards`` is the set."""
        self._boards = tuple(boards)
        self._building = ()
        self.forget_windows()
        self.building_on = False
        self.built_keys = set()
        self._identity = identity_columns(self._boards)
        for rel in list(self._relations.values()):
            self._partition_of_next = None  # (the leaves were checked as they came)
            self.on_relation(rel)

    # -- batches ---------------------------------------------------------------------

    @property
    def pending_row_changes(self) -> int:
        return self._batch.row_changes

    def transaction_ended(self) -> None:
        """A whole transaction's changes are in the batch (for the metrics)."""
        self._batch.transactions += 1

    def take_batch(self) -> BatchDelta:
        """Return everything accumulated since the last call, and start a new batch.

        When the local date passed the rolling windows' day (or they must be built), the
        batch also moves them to today, after its own deltas (which were made for the
        windows Redis holds); later row changes count for the new windows."""
        self._spread()
        batch = self._batch
        self._batch = BatchDelta()
        self._refresh_clock()
        today = self._window_target()
        if today is not None:
            old = self._window_day if self._window_day is not None else self._window_from
            batch.windows = _windows.plan(
                self._boards,
                self._keys,
                old,
                today,
                today,
                self._retention,
                _windows.expiry(today, self._tz),
                whole=self._window_day is None,
            )
            batch.window_day = _windows.day_id(today)
            self._window_day = self._window_from = today
        return batch

    def _spread(self) -> None:
        """Add every touched group's deltas to each of its keys' deltas in the batch.

        A key's first group is taken as it is (the group's first key takes its dict, the
        others a copy); a later group is summed in (dict updates in C, a Python step only
        for members both hold). No dict in ``deltas`` is shared between keys."""
        touched = self._touched
        if not touched:
            return
        batch = self._batch
        deltas, expiry = batch.deltas, batch.expiry
        for group in touched:
            members = group.members
            group.members = {}
            given = False
            for key, expires in group.slots:
                target = deltas.get(key)
                if target is None:
                    deltas[key] = members.copy() if given else members
                    given = True
                    expiry[key] = expires
                    if group.building:
                        self._raw(key)
                    continue
                both = target.keys() & members.keys()
                if both:
                    sums = {member: target[member] + members[member] for member in both}
                    target.update(members)
                    target.update(sums)
                else:
                    target.update(members)
        touched.clear()

    # -- rolling windows -------------------------------------------------------------

    def resume_windows(self, day: date | None) -> None:
        """Redis holds the rolling windows ending on ``day`` (from the watermark; None: none)."""
        self._window_day = self._window_from = day

    def forget_windows(self) -> None:
        """The next batch builds every rolling window whole from the day buckets (boards
        built beside the live ones just went live: their windows are not in Redis yet)."""
        self._window_day = None

    def window_due(self) -> bool:
        """Whether the rolling windows must move now (an idle session sends a batch for it).
        Looks at the clock at most once a second."""
        now = self._clock()
        if now - self._window_checked < 1.0:
            return False
        self._window_checked = now
        return self._window_target(now) is not None

    def _window_target(self, now: float | None = None) -> date | None:
        """Today, when the windows must move to it; else None."""
        if not any(_windows.window_periods(b) for b in self._boards):
            return None
        moment = datetime.fromtimestamp(self._now if now is None else now, tz=UTC)
        today = local_date(moment, self._tz)
        if today is None or (self._window_day is not None and today <= self._window_day):
            return None
        return today

    def _refresh_clock(self) -> None:
        now = self._clock()
        # Entries cache expiries relative to "now"; drop them when the day may have turned.
        if int(now // 3600) != int(self._now // 3600):
            self._hour_cache.clear()
            for plan in self._plans.values():
                for board in plan.boards:
                    board.dates.clear()
        self._now = now

    # -- internals -------------------------------------------------------------------

    def _labels_of(self, hash_key: str) -> dict[str, str | None]:
        labels = self._batch.labels.get(hash_key)
        if labels is None:
            labels = self._batch.labels[hash_key] = {}
        return labels

    def _label(self, plan: _LabelPlan, member: ColumnValue, label: ColumnValue) -> None:
        if isinstance(member, bytes):
            self._labels_of(plan.hash_key)[member.decode()] = (
                clean_label(label.decode()) if isinstance(label, bytes) else None
            )

    def _relabel(self, msg: Update, plan: _LabelPlan) -> None:
        new_member = msg.new[plan.key]
        if msg.old is not None:
            old_member = msg.old[plan.key]
            if old_member != new_member and isinstance(old_member, bytes):
                self._labels_of(plan.hash_key)[old_member.decode()] = None
        label = msg.new[plan.column]
        if label is UNCHANGED_TOAST:
            if msg.old is None or msg.old[plan.key] == new_member:
                return  # label untouched and the member kept its key
            # Only a whole old row (REPLICA IDENTITY FULL) still carries the label.
            if msg.old_kind != "O" or msg.old[plan.column] is UNCHANGED_TOAST:
                # The stream does not say the label: only a snapshot does.
                rel = self._relations[msg.relation_id]
                raise RebuildRequired(
                    f"a row of {rel.namespace}.{rel.name} changed its key while its long label"
                    " was not logged; REPLICA IDENTITY FULL on that table avoids this rebuild"
                )
            label = msg.old[plan.column]
        self._label(plan, new_member, label)

    def _unlogged(self, board: _BoardPlan, msg: Update, exc: UnloggedValue) -> RebuildRequired:
        """An update whose rows do not say whether it satisfies the board's condition."""
        rel = self._relations[msg.relation_id]
        return RebuildRequired(
            f"a row of {rel.namespace}.{rel.name} changed while the long value of {exc} that"
            f" board {board.board.name!r} filters on was not logged; REPLICA IDENTITY FULL"
            " on that table avoids this rebuild"
        )

    def _score(
        self,
        board: _BoardPlan,
        member_value: ColumnValue,
        instant: ColumnValue,
        value: ColumnValue,
        sign: int,
    ) -> None:
        if not isinstance(member_value, bytes):
            return  # a NULL member is not ranked
        if board.building and not self.building_on:
            return  # the build's snapshot holds this transaction already
        if value is None:
            return  # a NULL summed value contributes nothing
        delta = sign if board.value < 0 else sign * int(value)  # type: ignore[arg-type]
        if not delta:
            return
        member = member_value.decode()
        # Bytes bound code points from above: only a long member is measured.
        if len(member_value) > MAX_MEMBER and len(member) > MAX_MEMBER:
            return  # too long to rank (projector.core.limits), like a NULL member
        group = board.all_group
        if group is not None:
            members = group.members
            if not members:
                self._touched.append(group)
            members[member] = members.get(member, 0) + delta
        if not board.timed or not isinstance(instant, bytes):
            return
        day = self._date_for(instant)
        if day is None:
            return
        if board.windows and self._window_day is not None:
            self._window(board, day, member, delta)
        group = board.dates.get(day)
        if group is None:
            group = self._group_for_date(board, day)
        members = group.members
        if not members:
            if not group.slots:
                return  # every bucket of that date has expired
            self._touched.append(group)
        members[member] = members.get(member, 0) + delta

    def _window(self, board: _BoardPlan, day: date, member: str, delta: int) -> None:
        """A row of local day ``day`` counts in each window of the board that holds it."""
        end = self._window_day
        assert end is not None
        deltas, expiry = self._batch.deltas, self._batch.expiry
        for period in board.windows:
            if not _windows.holds(period, end, day):
                continue
            key = board.keys.board(board.board.name, period, _windows.day_id(end))
            members = deltas.get(key)
            if members is None:
                members = deltas[key] = {}
                expiry[key] = _windows.expiry(end, self._tz)
            members[member] = members.get(member, 0) + delta

    def _raw(self, key: str) -> None:
        self._batch.raw.add(key)
        self.built_keys.add(key)

    def _date_for(self, text: bytes) -> date | None:
        """The local date of a timestamptz in PostgreSQL's text form; None outside 1..9999."""
        # Fast path: ISO text in UTC ("2026-11-26 13:52:32.123+00") is cached per UTC hour
        # when every instant of that hour falls on the same local date.
        if len(text) > 16 and text[10] == 32 and text[4] == 45 and text.endswith(b"+00"):
            hour = text[:13]  # ' ', '-', "+00": ASCII 32 and 45 above
            cached = self._hour_cache.get(hour, _UNSEEN)
            if isinstance(cached, date):
                return cached
            if cached is _UNSEEN:
                start = datetime.fromisoformat(hour.decode() + ":00:00+00:00")
                first = local_date(start, self._tz)
                last = local_date(start + timedelta(microseconds=3_599_999_999), self._tz)
                entry = first if first == last else None
                self._hour_cache[hour] = entry
                if entry is not None:
                    return entry
        try:
            ts = datetime.fromisoformat(text.decode())
        except ValueError:
            return None  # infinity, BC or beyond year 9999: counted in all-time only
        return local_date(ts, self._tz)

    def _group_for_date(self, board: _BoardPlan, day: date) -> _Group:
        """The group of the live keys (not yet expired) of the board's timed periods for a
        local date."""
        now = self._now
        ids = dict(zip(TIMED_PERIODS, bucket_ids_for_date(day), strict=True))
        slots: list[BoardSlot] = []
        for period in board.timed:
            bucket = ids[period]
            expires = expires_at(period, bucket, self._tz, self._retention)
            if expires is not None and expires <= now:
                continue  # the board has expired: PostgreSQL answers for it now
            slots.append((board.keys.board(board.board.name, period, bucket), expires))
        group = board.dates[day] = _Group(tuple(slots), board.building)
        return group


def _value(board: _BoardPlan, row: tuple[ColumnValue, ...]) -> ColumnValue:
    """The summed column's value of a row, or 1 for a count (never None for a count)."""
    return b"1" if board.value < 0 else row[board.value]
