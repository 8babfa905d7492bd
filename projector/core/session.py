"""The streaming session's bookkeeping as a pure state machine: messages in, actions out.

``Session`` decides which transactions to skip, resume or apply, when a batch or a chunk of a
large transaction goes to Redis, which watermark it carries, when keepalive positions may move
the watermark, and what may be confirmed to PostgreSQL. It does no I/O and reads time only
from the injected clocks. The caller performs the returned actions in order; if one fails, the
whole session is abandoned and a new one starts from the watermark stored in Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from projector.core import windows
from projector.core.boards import Board
from projector.core.errors import ProtocolError, RebuildRequired
from projector.core.lsn import format_lsn
from projector.core.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
    pg_time_to_datetime,
)
from projector.core.projection import BatchDelta, BuildSwap, Projection
from projector.core.watermark import Watermark

# A lone commit is applied as soon as the socket runs dry; under load a batch is applied
# at the latest this long after its first commit arrived.
MAX_BATCH_DELAY = 0.010
# A commit received this long after it happened means a backlog (see Session.behind).
BEHIND_US = 1_000_000
# Even then (or with clocks that disagree) a batch waits no longer than this.
MAX_BEHIND_BATCH_AGE = 1.0
# Keepalive positions reach the watermark this often at most (read-your-writes clients wait
# on it when other WAL follows their commit; a busy database sends many keepalives).
IDLE_ADVANCE_EVERY = 0.1
# After applying a batch, tell PostgreSQL at most this often (besides the periodic status).
STATUS_AFTER_FLUSH_EVERY = 1.0
# Batches sent before the oldest is answered: Redis never waits for the next one to be
# encoded. Two suffice; each is up to PROJECTOR_BATCH_CHANGES row changes.
MAX_IN_FLIGHT = 2


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``batch`` to Redis with watermark ``new``, if Redis still holds ``expected``."""

    batch: BatchDelta
    new: Watermark
    expected: Watermark


@dataclass(frozen=True, slots=True)
class InFlight:
    """The session's one record of a batch sent and not yet answered: the watermark it
    moves Redis to, when it was sent (the session's clock) and what it holds."""

    watermark: Watermark
    sent_at: float
    kinds: dict[str, int]
    transactions: int


@dataclass(frozen=True, slots=True)
class Receive:
    """Wait for Redis' answer to ``batch``, the oldest in flight, and feed what it says of
    durability to ``Session.durable``; a refusal ends the session."""

    batch: InFlight


@dataclass(frozen=True, slots=True)
class Seal:
    """Wait until every batch Redis applied is on the replicas durability requires
    (``PROJECTOR_REDIS_MIN_REPLICAS``); a failure ends the session."""


@dataclass(frozen=True, slots=True)
class Confirm:
    """Tell PostgreSQL (standby status update) that everything up to ``lsn`` is applied,
    and durable."""

    lsn: int


@dataclass(frozen=True, slots=True)
class Resume:
    """A transaction partly applied before a restart is being received again (for the log)."""

    tx_lsn: int
    rows_applied: int


Action = Send | Receive | Seal | Confirm | Resume
_ROW_CHANGES = (Insert, Update, Delete, Truncate)
Actions = tuple[Action, ...]
_NOTHING: Actions = ()
_SEAL = Seal()


@dataclass(slots=True)
class _Tx:
    """The transaction being received."""

    begin: Begin
    rows: int = 0  # row changes seen so far
    skip_rows: int = 0  # the first N were applied before a restart
    skip_all: bool = False  # fully applied before a restart
    chunk_rows: int = 0  # row changes projected since the last chunk was applied


class Session:
    """Bookkeeping of one streaming session that resumes from ``applied`` (Redis' watermark).

    Positions: ``applied`` is the watermark of the last batch sent (the next compare-and-set
    expects it), ``acked`` the last one Redis confirmed, ``durable`` how far every batch is
    on enough Redis replicas (fed by ``durable``), ``confirmed`` the last position told to
    PostgreSQL. Always ``confirmed <= min(acked.lsn, durable)`` (once something was
    acknowledged) and ``acked.lsn <= applied.lsn``. The session owns every field; the
    caller feeds it inputs (messages, keepalives, ticks, durability, the build's progress)
    and carries out the actions it returns.
    """

    def __init__(
        self,
        applied: Watermark,
        projection: Projection,
        *,
        max_tx_changes: int,
        batch_changes: int,
        status_interval: float,
        clock: Callable[[], float],
        now_us: Callable[[], int],
    ) -> None:
        self.applied = applied
        self.acked = applied
        self.confirmed = 0
        self.projection = projection
        self._max_tx_changes = max_tx_changes
        self._batch_changes = batch_changes
        self._status_interval = status_interval
        self._clock = clock
        self._now_us = now_us
        self._in_flight: deque[InFlight] = deque()
        # Every batch up to here is on enough Redis replicas (what Redis held at the start
        # was made so by the claim): PostgreSQL is never told more.
        self._durable = applied.lsn
        self.tx: _Tx | None = None
        # End LSN and commit time of the newest whole transaction not yet sent.
        self.pending_end: int | None = None
        self._pending_time = 0
        self._batch_started = 0.0
        # Commit LSN of a transaction applied in part and not yet received whole.
        self._open_marker = applied.tx_lsn
        # Boards being built (projector.backfill) take transactions from this LSN on.
        self.build_from: int | None = None
        # Every transaction committed before this position has been received.
        self._received = applied.lsn
        self._idle_end = 0
        self._last_idle_advance = 0.0
        self._last_status = clock()
        projection.resume_windows(windows.parse_day(applied.window_day))

    # -- queries -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Batches sent whose answer was not yet taken."""
        return len(self._in_flight)

    def behind(self) -> bool:
        """Catching up on a backlog: the newest commit received is old already.

        Then batches fill up to ``batch_changes``: fewer, larger Redis scripts aggregate
        more (one update per member and board) and cost less per row. Fresh commits are
        applied at once.
        """
        return self._now_us() - self._pending_time > BEHIND_US

    # -- inputs ------------------------------------------------------------------------

    def message(self, msg: object) -> Actions:
        """One decoded pgoutput message."""
        tx = self.tx
        if tx is not None:
            if isinstance(msg, _ROW_CHANGES):  # (a tuple: quicker than a union)
                tx.rows += 1
                if tx.skip_all or tx.rows <= tx.skip_rows:
                    return _NOTHING
                self.projection.on_change(msg)
                tx.chunk_rows += 1
                if tx.chunk_rows >= self._max_tx_changes:
                    return self._chunk(tx)
                return _NOTHING
            if isinstance(msg, Commit):
                return self._commit(tx, msg)
        if isinstance(msg, Begin):
            if tx is not None:
                raise ProtocolError("Begin inside an open transaction", lsn=msg.final_lsn)
            return self._begin(msg)
        if isinstance(msg, Relation):
            self.projection.on_relation(msg)
        elif isinstance(msg, LogicalMessage):
            if not msg.transactional and msg.lsn > self._received:
                self._received = msg.lsn
        elif isinstance(msg, Origin | Type):
            pass
        else:
            raise ProtocolError(f"unexpected message {type(msg).__name__} in the stream")
        return _NOTHING

    def keepalive(self, wal_end: int, reply_requested: bool) -> Actions:
        """A primary keepalive: the server has sent everything before ``wal_end``."""
        if wal_end > self._idle_end:
            self._idle_end = wal_end
        if self.tx is None and wal_end > self._received:
            self._received = wal_end
        marker = self._open_marker
        if marker and wal_end > marker and self.tx is None:
            # The server re-reads a part-applied transaction before anything after it, and
            # reports positions up to its commit (not past it) until it sends it again.
            raise MissedTransaction(marker, wal_end)
        if reply_requested:
            return self._advance_idle(force=True) or self._confirm()
        return _NOTHING

    def receive(self) -> Actions:
        """Redis answered the oldest batch in flight (the caller saw its reply is ready)."""
        return (self._take_answer(),)

    def durable(self, lsn: int) -> None:
        """Redis says every batch up to ``lsn`` is on the replicas durability requires."""
        if lsn > self._durable:
            self._durable = lsn

    def building(self, from_lsn: int) -> None:
        """Boards are built beside the live ones from a snapshot at ``from_lsn``: they take
        the changes of transactions from there on (``projector.backfill``)."""
        self.build_from = from_lsn

    def built(self, boards: Iterable[Board]) -> None:
        """The built boards went live (after ``swap``): ``boards`` is the set projected now."""
        self.projection.promote(boards)
        self.build_from = None

    def tick(self, *, quiet: bool) -> Actions:
        """After a pass over the frames received (``quiet``: there were none).

        Applies what is complete when Redis is idle, moves an idle watermark to the last
        keepalive position, and sends the periodic status update.
        """
        actions: Actions = _NOTHING
        if (
            not self._in_flight
            and self.tx is None
            and self.pending_end is not None
            and (
                quiet
                or not self.behind()
                or self._clock() - self._batch_started >= MAX_BEHIND_BATCH_AGE
            )
        ):
            actions = self._flush()
        actions += self._advance_idle(force=False)
        actions += self._advance_windows()
        if self._clock() - self._last_status >= self._status_interval:
            actions += self._confirm()
        return actions

    def can_swap(self) -> bool:
        """Built boards may go live: between transactions, none part-applied, and every
        transaction the build's snapshot holds received (else, live, they would count
        those a second time)."""
        return (
            self.tx is None
            and not self._open_marker
            and self.build_from is not None
            and self._received >= self.build_from
        )

    def swap(self, spec: BuildSwap, fingerprint: str, config: str) -> Actions:
        """Send whole transactions received so far with ``spec`` (the swap of built boards)
        and the new configuration, and wait for Redis' answer."""
        assert self.can_swap()
        applied = self.applied
        lsn, commit_time = applied.lsn, applied.commit_time
        if self.pending_end is not None:
            lsn, commit_time = self.pending_end, pg_time_to_datetime(self._pending_time)
        self.pending_end = None
        new = replace(
            applied,
            lsn=lsn,
            commit_time=commit_time,
            tx_lsn=0,
            tx_rows=0,
            fingerprint=fingerprint,
            config=config,
        )
        actions = self._send(new, swap=spec, forget_windows=True)
        return (*actions, *(self._take_answer() for _ in range(len(self._in_flight))))

    def stop(self) -> Actions:
        """Finish: apply whole transactions, wait for every answer, confirm the position.

        Not while a transaction is part-received: the batch holds some of its rows, and the
        slot will send it again whole.
        """
        actions: Actions = _NOTHING
        if self.pending_end is not None and self.tx is None:
            actions = self._flush()
        actions += tuple(self._take_answer() for _ in range(len(self._in_flight)))
        return (*actions, *self._confirm())

    # -- transactions ------------------------------------------------------------------

    def _begin(self, msg: Begin) -> Actions:
        applied = self.applied
        tx = self.tx = _Tx(begin=msg)
        self.projection.building_on = (
            self.build_from is not None and msg.final_lsn >= self.build_from
        )
        if applied.tx_lsn and msg.final_lsn == applied.tx_lsn:
            tx.skip_rows = applied.tx_rows
            return (Resume(msg.final_lsn, applied.tx_rows),)
        if msg.final_lsn < applied.lsn:
            tx.skip_all = True
        elif self._open_marker and msg.final_lsn > self._open_marker:
            # The partly applied transaction never came again: its remaining rows would be
            # lost and its applied ones would stay. Only a rebuild makes Redis whole.
            raise MissedTransaction(self._open_marker, msg.final_lsn)
        return _NOTHING

    def _commit(self, tx: _Tx, msg: Commit) -> Actions:
        self.tx = None
        if not tx.skip_all:
            self.projection.transaction_ended()
        if msg.end_lsn > self._received:
            self._received = msg.end_lsn
        if tx.skip_all:
            return _NOTHING
        if tx.begin.final_lsn == self._open_marker:
            self._open_marker = 0
        if tx.rows < tx.skip_rows:
            raise RebuildRequired(
                f"transaction {format_lsn(tx.begin.final_lsn)} came again with {tx.rows} row "
                f"changes, fewer than the {tx.skip_rows} applied before (publication changed?)",
                lsn=tx.begin.final_lsn,
            )
        now = self._clock()
        if self.pending_end is None:
            self._batch_started = now
        self.pending_end = msg.end_lsn
        self._pending_time = msg.commit_time
        if self.projection.pending_row_changes >= self._batch_changes:
            return self._flush()
        age = now - self._batch_started
        if not self._in_flight and (
            age >= MAX_BEHIND_BATCH_AGE or (age >= MAX_BATCH_DELAY and not self.behind())
        ):
            return self._flush()
        # While Redis still works on the previous batch this one keeps growing (the caller
        # feeds Redis' answers and ticks after each read of the stream): bigger batches
        # when Redis is the bottleneck, tiny ones when it is not.
        return _NOTHING

    def _flush(self) -> Actions:
        """Send every whole transaction received so far, with its watermark."""
        assert self.pending_end is not None
        new = replace(
            self.applied,
            lsn=self.pending_end,
            commit_time=pg_time_to_datetime(self._pending_time),
            tx_lsn=0,
            tx_rows=0,
        )
        self.pending_end = None
        actions = self._send(new)
        if self._clock() - self._last_status >= STATUS_AFTER_FLUSH_EVERY:
            actions += self._confirm()
        return actions

    def _chunk(self, tx: _Tx) -> Actions:
        """Send part of a transaction too large to apply at once, and record how far.

        The watermark keeps the last whole transaction's position and gains a marker: the
        large transaction's commit LSN (from its Begin) and how many of its row changes are
        applied. A restart re-reads the transaction and skips that many.
        """
        applied = self.applied
        lsn, commit_time = applied.lsn, applied.commit_time
        if self.pending_end is not None:
            lsn, commit_time = self.pending_end, pg_time_to_datetime(self._pending_time)
        new = replace(
            applied, lsn=lsn, commit_time=commit_time, tx_lsn=tx.begin.final_lsn, tx_rows=tx.rows
        )
        self.pending_end = None
        tx.chunk_rows = 0
        self._open_marker = tx.begin.final_lsn
        return self._send(new)

    def _send(
        self, new: Watermark, swap: BuildSwap | None = None, *, forget_windows: bool = False
    ) -> Actions:
        """Send the accumulated batch with ``new``; collect the oldest answer first if the
        most batches are in flight already. The batch records the rolling windows' day when
        it moves them; ``forget_windows``: no window is known whole after it (boards going
        live with ``swap`` have none yet), the next batch builds them."""
        actions: Actions = _NOTHING
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            actions = (self._take_answer(),)
        batch = self.projection.take_batch()
        batch.swap = swap
        if batch.window_day is not None:
            new = replace(new, window_day=batch.window_day)
        if forget_windows:
            self.projection.forget_windows()
            new = replace(new, window_day="")
        send = Send(batch, new, self.applied)
        self.applied = new
        self._in_flight.append(InFlight(new, self._clock(), batch.kinds(), batch.transactions))
        return (*actions, send)

    def _take_answer(self) -> Receive:
        oldest = self._in_flight.popleft()
        self.acked = oldest.watermark
        return Receive(oldest)

    # -- keepalives and status ---------------------------------------------------------

    def _advance_idle(self, *, force: bool) -> Actions:
        """Move the watermark to the last keepalive position when nothing is pending.

        This keeps an idle publication from retaining WAL. At most every
        ``IDLE_ADVANCE_EVERY`` unless the server asks. Never while a large transaction is
        part-applied: a keepalive sent while the server re-reads it (before its Begin) must
        not move the watermark, or the marker of its applied chunks would be lost and they
        would be applied twice.
        """
        applied = self.applied
        if (
            self.tx is not None
            or self.pending_end is not None
            or self._in_flight
            or applied.tx_lsn
            or self._idle_end <= applied.lsn
        ):
            return _NOTHING
        now = self._clock()
        if not force and now - self._last_idle_advance < IDLE_ADVANCE_EVERY:
            return _NOTHING
        self._last_idle_advance = now
        send = self._send(replace(applied, lsn=self._idle_end))
        return (*send, self._take_answer(), *self._confirm())

    def _advance_windows(self) -> Actions:
        """An idle session moves the rolling windows at midnight with a batch of its own
        (same position; the watermark records the new window day)."""
        if (
            self.tx is not None
            or self.pending_end is not None
            or self._in_flight
            or not self.projection.window_due()
        ):
            return _NOTHING
        return (*self._send(self.applied), self._take_answer())

    def _confirm(self) -> Actions:
        """Tell PostgreSQL what Redis acknowledged and holds durably, never going back; with
        nothing in flight, what is acknowledged is made durable first (``Seal``)."""
        actions: Actions = _NOTHING
        if self.acked.lsn > self._durable and not self._in_flight:
            actions = (_SEAL,)
            self._durable = self.acked.lsn  # once sealed (a failure ends the session)
        self.confirmed = max(self.confirmed, min(self.acked.lsn, self._durable))
        self._last_status = self._clock()
        return (*actions, Confirm(self.confirmed))


class MissedTransaction(RebuildRequired):
    """A transaction applied in part before a restart was not sent again (a rebuild fixes it)."""

    def __init__(self, tx_lsn: int, position: int) -> None:
        super().__init__(
            f"the stream reached {format_lsn(position)} without sending again transaction "
            f"{format_lsn(tx_lsn)}, which was applied in part (publication changed?)",
            lsn=tx_lsn,
        )
