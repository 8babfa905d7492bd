"""The streaming session's bookkeeping, without servers: scripted message sequences and
random ones (hypothesis) against a model of Redis (compare-and-set, atomic batches) and of
the slot (re-sends every transaction from the confirmed position after a restart).

The invariants: every committed row change counts exactly once in the end, whatever the
crashes, keepalives and batch timings; PostgreSQL is never told a position that Redis
does not hold; no compare-and-set is ever refused (there is one writer).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.core.boards import DEFAULT_BOARDS
from projector.core.buckets import Retention
from projector.core.errors import BoardsChanged, ProtocolError, RebuildRequired
from projector.core.keys import Keys
from projector.core.pgoutput import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    pg_time_to_datetime,
)
from projector.core.projection import BatchDelta, Projection
from projector.core.session import (
    MAX_IN_FLIGHT,
    Actions,
    Confirm,
    MissedTransaction,
    Receive,
    Resume,
    Seal,
    Send,
    Session,
)
from projector.core.watermark import Watermark

REL = 16_384
ALL = "pomo:lb:pomodoros:all:all"
NOW_US = 849_000_000_000_000  # 2026-11-25 in PostgreSQL microseconds since 2000
RELATION = Relation(
    xid=None,
    relation_id=REL,
    namespace="public",
    name="pomodoros",
    replica_identity="i",
    columns=(
        Column(0, "id", 20, -1),
        Column(1, "user_id", 25, -1),
        Column(1, "completed_at", 1184, -1),
    ),
)
START = Watermark(
    lsn=0x1000, system_id="42", slot="s", commit_time=None, timeline=1, fingerprint="f"
)


def insert(user: str) -> Insert:
    return Insert(None, REL, (b"1", user.encode(), b"2026-11-26 10:00:00+00"))


def delete(user: str) -> Delete:
    return Delete(None, REL, "K", (b"1", user.encode(), b"2026-11-26 10:00:00+00"))


@dataclass
class Tx:
    """A committed transaction as the server logged it."""

    final_lsn: int
    end_lsn: int
    changes: list[Insert | Delete | Truncate]

    def begin(self) -> Begin:
        return Begin(self.final_lsn, NOW_US, 7)

    def commit(self) -> Commit:
        return Commit(0, self.final_lsn, self.end_lsn, NOW_US)


def log_of(sizes: list[list[str]]) -> list[Tx]:
    """Transactions from lists of changes: a user name inserts, '-name' deletes, '!' truncates."""
    txs, lsn = [], 0x2000
    for changes in sizes:
        rows: list[Insert | Delete | Truncate] = []
        for change in changes:
            if change == "!":
                rows.append(Truncate(None, 0, (REL,)))
            elif change.startswith("-"):
                rows.append(delete(change[1:]))
            else:
                rows.append(insert(change))
        end = lsn + 0x100 + 0x10 * len(rows)
        txs.append(Tx(lsn, end, rows))
        lsn = end
    return txs


def expected_counts(txs: list[Tx]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tx in txs:
        for change in tx.changes:
            if isinstance(change, Truncate):
                counts.clear()
            elif isinstance(change, Insert):
                user = change.new[1].decode()  # type: ignore[union-attr]
                counts[user] = counts.get(user, 0) + 1
            else:
                user = change.old[1].decode()  # type: ignore[union-attr]
                counts[user] = counts.get(user, 0) - 1
    return {user: n for user, n in counts.items() if n}


@dataclass
class FakeRedis:
    """Applies batches atomically under compare-and-set on the watermark's position."""

    watermark: Watermark = START
    counts: dict[str, int] = field(default_factory=dict)
    applied_batches: int = 0

    def apply(self, send: Send) -> None:
        assert send.expected.position == self.watermark.position, (
            f"compare-and-set refused: expected {send.expected.position}, "
            f"Redis holds {self.watermark.position}"
        )
        batch: BatchDelta = send.batch
        if batch.clear_boards:
            self.counts.clear()
        for member, delta in batch.deltas.get(ALL, {}).items():
            self.counts[member] = self.counts.get(member, 0) + delta
        self.counts = {m: n for m, n in self.counts.items() if n}
        self.watermark = send.new
        self.applied_batches += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Run:
    """One projector process: a Session whose actions go to the fake Redis and slot."""

    def __init__(self, world: World, max_tx_changes: int, durability: str = "each") -> None:
        self.world = world
        # How Redis reports durability on replicas: "each" batch as it answers, "late" (one
        # answer behind), or "never" (only a Seal makes batches durable).
        self.durability = durability
        self.answered: list[int] = []
        world.replicate(world.redis.watermark.lsn)  # the claim WAITs for what Redis holds
        self.clock = Clock()
        self.session = Session(
            world.redis.watermark,
            Projection(
                DEFAULT_BOARDS,
                Keys("pomo:"),
                ZoneInfo("UTC"),
                Retention(36_500, 5_200, 1_200, 100),
                time.time,
            ),
            max_tx_changes=max_tx_changes,
            batch_changes=1_000_000,
            status_interval=10.0,
            clock=self.clock,
            now_us=lambda: NOW_US,
        )
        self.sent: deque[Send] = deque()
        self.resumed: list[Resume] = []

    def perform(self, actions: Actions) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent.append(action)
            elif isinstance(action, Receive):
                send = self.sent.popleft()
                assert action.batch.watermark == send.new  # one record per batch, in order
                self.world.redis.apply(send)
                self.answered.append(send.new.lsn)
                if self.durability == "each":
                    self.world.replicate(send.new.lsn)
                    self.session.durable(send.new.lsn)
                elif self.durability == "late" and len(self.answered) > 1:
                    self.world.replicate(self.answered[-2])
                    self.session.durable(self.answered[-2])
            elif isinstance(action, Seal):
                assert not self.sent, "sealed with batches in flight"
                self.world.replicate(self.world.redis.watermark.lsn)
            elif isinstance(action, Confirm):
                self.world.confirm(action.lsn)
            else:
                self.resumed.append(action)

    def collect(self) -> None:
        while self.session.in_flight:
            self.perform(self.session.receive())

    def feed(self, msg: object) -> None:
        self.perform(self.session.message(msg))

    def keepalive(self, wal_end: int, reply: bool = False) -> None:
        self.perform(self.session.keepalive(wal_end, reply))

    def tick(self, quiet: bool = True, advance: float = 0.2) -> None:
        self.clock.now += advance
        self.collect()
        self.perform(self.session.tick(quiet=quiet))

    def crash(self, redis_took: int) -> None:
        """kill -9: Redis ran the first ``redis_took`` batches sent and never saw the rest."""
        for _ in range(min(redis_took, len(self.sent))):
            self.world.redis.apply(self.sent.popleft())

    def stop(self) -> None:
        self.perform(self.session.stop())


@dataclass
class World:
    """The server's log, the slot's confirmed position and Redis."""

    log: list[Tx]
    redis: FakeRedis = field(default_factory=FakeRedis)
    confirmed: int = START.lsn
    # How far Redis' replicas hold the batches (PROJECTOR_REDIS_MIN_REPLICAS).
    replicated: int = START.lsn

    def confirm(self, lsn: int) -> None:
        assert lsn <= self.redis.watermark.lsn, (
            f"told PostgreSQL {lsn:X}, but Redis holds only {self.redis.watermark.lsn:X}"
        )
        assert lsn <= self.replicated, (
            f"told PostgreSQL {lsn:X}, but Redis' replicas hold only {self.replicated:X}"
        )
        self.confirmed = max(self.confirmed, lsn)

    def replicate(self, lsn: int) -> None:
        self.replicated = max(self.replicated, min(lsn, self.redis.watermark.lsn))

    def resent(self) -> list[Tx]:
        """What a new session receives: each transaction whose commit is at or after the
        confirmed position (PostgreSQL skips commits before its start point)."""
        return [tx for tx in self.log if tx.final_lsn >= self.confirmed]

    def messages(self, keepalives: bool = True) -> Iterator[tuple[str, object, int]]:
        """The stream of a new session: keepalives before each Begin up to its commit LSN
        (the server re-reads the WAL before sending a transaction), then the transaction."""
        yield "relation", RELATION, 0
        previous_end = self.confirmed
        for tx in self.resent():
            if keepalives:
                yield "keepalive", None, max(previous_end, self.confirmed)
                yield "keepalive", None, tx.final_lsn
            yield "msg", tx.begin(), 0
            for change in tx.changes:
                yield "msg", change, 0
            yield "msg", tx.commit(), 0
            previous_end = tx.end_lsn


def run_session(world: World, max_tx_changes: int, *, crash_after: int | None = None) -> Run:
    """Stream what the server sends; crash after ``crash_after`` messages (Redis got
    one batch less than sent), else stop cleanly."""
    run = Run(world, max_tx_changes)
    for n, (kind, msg, wal_end) in enumerate(world.messages()):
        if crash_after is not None and n >= crash_after:
            run.crash(redis_took=len(run.sent) - 1)
            return run
        if kind == "keepalive":
            run.keepalive(wal_end, reply=True)
        else:
            run.feed(msg)
        run.tick(quiet=False, advance=0.01)
    run.tick()
    run.stop()
    return run


# -- scripted sequences --------------------------------------------------------------------


def test_keepalive_before_the_resent_begin_keeps_the_chunk_marker() -> None:
    """A keepalive that arrives while the server re-reads a part-applied transaction (before
    its Begin) moves nothing: its chunks are skipped on resume, not applied twice."""
    world = World(log_of([["a"] * 10]))
    tx = world.log[0]
    # Before the crash, a chunk of 4 row changes was applied with its marker.
    world.redis.watermark = Watermark(
        lsn=START.lsn,
        system_id="42",
        slot="s",
        commit_time=None,
        tx_lsn=tx.final_lsn,
        tx_rows=4,
        timeline=1,
        fingerprint="f",
    )
    world.redis.counts = {"a": 4}
    # The restart: the server re-reads the WAL and reports positions up to the commit LSN.
    run = Run(world, max_tx_changes=4)
    run.feed(RELATION)
    for wal_end in (tx.final_lsn - 0x80, tx.final_lsn):
        run.keepalive(wal_end, reply=True)
        run.tick(advance=1.0)
    assert world.redis.watermark.tx_lsn == tx.final_lsn, "the marker must survive keepalives"
    assert world.redis.watermark.tx_rows == 4
    assert world.confirmed == START.lsn
    run.feed(tx.begin())
    for change in tx.changes:
        run.feed(change)
    run.feed(tx.commit())
    run.stop()
    assert run.resumed == [Resume(tx.final_lsn, 4)]
    assert world.redis.counts == {"a": 10}
    assert world.redis.watermark.lsn == tx.end_lsn and world.redis.watermark.tx_lsn == 0


def test_crash_between_chunks_then_keepalives_then_resume() -> None:
    """kill -9 between the chunks of a transaction, keepalives on restart: exactly once."""
    world = World(log_of([["b"], ["a"] * 10]))
    run_session(world, max_tx_changes=4, crash_after=1 + 2 + 3 + 2 + 9)
    applied = world.redis.watermark.tx_rows
    assert 0 < applied < 10, world.redis.watermark
    run = run_session(world, max_tx_changes=4)
    assert run.resumed == [Resume(world.log[1].final_lsn, applied)]
    assert world.redis.counts == {"a": 10, "b": 1}


def test_no_idle_advance_inside_a_transaction_being_chunked() -> None:
    """Keepalives during a chunked transaction never move the watermark past its chunks."""
    world = World(log_of([["a"] * 9]))
    run = Run(world, max_tx_changes=3)
    tx = world.log[0]
    run.feed(RELATION)
    run.feed(tx.begin())
    for change in tx.changes[:7]:
        run.feed(change)
        run.keepalive(tx.final_lsn, reply=True)
        run.tick(advance=1.0)
    assert world.redis.watermark.tx_lsn == tx.final_lsn
    assert world.redis.watermark.tx_rows == 6
    assert world.redis.watermark.lsn == START.lsn
    for change in tx.changes[7:]:
        run.feed(change)
    run.feed(tx.commit())
    run.stop()
    assert world.redis.counts == {"a": 9}
    assert world.confirmed == tx.end_lsn


def test_reconnect_mid_chunk_resumes_after_the_applied_rows() -> None:
    """A restart after some chunks skips exactly the applied row changes of the transaction."""
    world = World(log_of([["a", "b"], ["a"] * 5 + ["b"] * 5, ["c"]]))
    run_session(world, max_tx_changes=3, crash_after=1 + 2 + 4 + 2 + 8)
    assert world.redis.watermark.tx_rows in (3, 6)
    run = run_session(world, max_tx_changes=3)
    assert len(run.resumed) == 1
    assert world.redis.counts == expected_counts(world.log)
    assert world.confirmed == world.log[-1].end_lsn


def test_equal_lsns_skip_only_what_is_applied() -> None:
    """A commit LSN below the watermark is skipped; one equal to the watermark is new."""
    world = World(log_of([["a"], ["b"]]))
    first, second = world.log
    world.redis.watermark = Watermark(
        lsn=first.end_lsn, system_id="42", slot="s", commit_time=None, timeline=1, fingerprint="f"
    )
    world.redis.counts = {"a": 1}
    second.final_lsn = first.end_lsn  # the next commit record starts where the last one ended
    world.confirmed = first.final_lsn  # the slot lags: both are sent again
    run = run_session(world, max_tx_changes=100)
    assert not run.resumed
    assert world.redis.counts == {"a": 1, "b": 1}


def test_empty_transaction_moves_the_watermark() -> None:
    """A transaction without row changes still moves the watermark and the slot."""
    world = World(log_of([[], ["a"], []]))
    run_session(world, max_tx_changes=100)
    assert world.redis.counts == {"a": 1}
    assert world.redis.watermark.lsn == world.log[-1].end_lsn
    assert world.confirmed == world.log[-1].end_lsn


@pytest.mark.parametrize("crash_after", [None, 6, 9, 12])
def test_truncate_inside_a_chunked_transaction(crash_after: int | None) -> None:
    """TRUNCATE in the middle of a chunked transaction clears what came before it, once."""
    world = World(log_of([["x", "y"], ["a", "a", "b", "!", "c", "c", "a", "b"]]))
    if crash_after is not None:
        run_session(world, max_tx_changes=2, crash_after=crash_after)
    run_session(world, max_tx_changes=2)
    assert world.redis.counts == {"a": 1, "b": 1, "c": 2}


def test_keepalive_past_a_part_applied_transaction_demands_a_rebuild() -> None:
    """If the server reports positions past a part-applied transaction that it did not send
    again (its rows left the publication), only a rebuild makes Redis whole."""
    marker = Watermark(
        lsn=0x1000, system_id="42", slot="s", commit_time=None, tx_lsn=0x3000, tx_rows=5
    )
    world = World([])
    world.redis.watermark = marker
    run = Run(world, max_tx_changes=10)
    run.keepalive(0x3000)
    with pytest.raises(MissedTransaction):
        run.keepalive(0x3001)
    run = Run(world, max_tx_changes=10)
    with pytest.raises(MissedTransaction):
        run.feed(Begin(0x3100, NOW_US, 9))


def test_a_resent_transaction_with_fewer_rows_demands_a_rebuild() -> None:
    """A part-applied transaction that comes back smaller than what was applied is refused."""
    world = World(log_of([["a", "a"]]))
    tx = world.log[0]
    world.redis.watermark = Watermark(
        lsn=0x1000, system_id="42", slot="s", commit_time=None, tx_lsn=tx.final_lsn, tx_rows=5
    )
    run = Run(world, max_tx_changes=10)
    run.feed(RELATION)
    run.feed(tx.begin())
    for change in tx.changes:
        run.feed(change)
    with pytest.raises(RebuildRequired):
        run.feed(tx.commit())


def test_relation_without_old_values_breaks_the_board() -> None:
    """A Relation whose replica identity does not cover a board's columns names the board."""
    run = Run(World([]), max_tx_changes=10)
    default_identity = Relation(
        None,
        REL,
        "public",
        "pomodoros",
        "d",
        (
            Column(1, "id", 20, -1),
            Column(0, "user_id", 25, -1),
            Column(0, "completed_at", 1184, -1),
        ),
    )
    with pytest.raises(BoardsChanged, match="user_id, completed_at") as raised:
        run.feed(default_identity)
    assert set(raised.value.broken) == {"pomodoros"}


def test_idle_keepalives_move_watermark_and_slot_when_nothing_is_pending() -> None:
    """An idle stream's keepalives move Redis and then the slot, never the slot first."""
    world = World([])
    run = Run(world, max_tx_changes=10)
    run.keepalive(0x5000)
    run.tick(advance=0.05)  # too soon after start for an unrequested advance? no: first one
    run.tick(advance=0.2)
    assert world.redis.watermark.lsn == 0x5000
    assert world.confirmed <= world.redis.watermark.lsn
    run.keepalive(0x6000, reply=True)
    assert world.redis.watermark.lsn == 0x6000 and world.confirmed == 0x6000


def test_batches_in_flight_are_bounded_and_confirmed_in_order() -> None:
    """At most MAX_IN_FLIGHT batches are unanswered; each position is confirmed only after
    its batch was answered."""
    world = World(log_of([["a"]] * 6))
    run = Run(world, max_tx_changes=100)
    run.feed(RELATION)
    most = 0
    for tx in world.log:
        run.feed(tx.begin())
        for change in tx.changes:
            run.feed(change)
        run.clock.now += 0.02  # each commit is old enough to go alone
        actions = run.session.message(tx.commit())
        run.perform(actions)
        if not run.session.in_flight:
            run.perform(run.session.tick(quiet=True))  # Redis is idle: apply now
        most = max(most, run.session.in_flight)
    assert most <= MAX_IN_FLIGHT
    run.stop()
    assert world.redis.counts == {"a": 6}
    assert world.confirmed == world.log[-1].end_lsn


def test_messages_outside_a_transaction_are_protocol_errors() -> None:
    """A row change without Begin, or a Begin inside a transaction, is a protocol error."""
    run = Run(World([]), max_tx_changes=10)
    run.feed(RELATION)
    with pytest.raises(ProtocolError):
        run.feed(insert("a"))
    run.feed(Begin(0x3000, NOW_US, 1))
    with pytest.raises(ProtocolError):
        run.feed(Begin(0x3100, NOW_US, 2))


def test_logical_messages_are_ignored() -> None:
    """Non-transactional logical messages (the WAL heartbeat) change nothing."""
    world = World(log_of([["a"]]))
    run = Run(world, max_tx_changes=10)
    run.feed(LogicalMessage(None, False, 0x1800, "projector-heartbeat", b"s"))
    assert run.session.pending_end is None and not run.sent


# -- random histories ----------------------------------------------------------------------

USERS = st.sampled_from(["a", "b", "c"])
CHANGE = st.one_of(USERS, USERS.map(lambda u: "-" + u), st.just("!"))
LOGS = st.lists(st.lists(CHANGE, max_size=12), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=LOGS,
    max_tx_changes=st.integers(1, 6),
    crashes=st.lists(st.integers(0, 80), max_size=4),
    durability=st.sampled_from(["each", "late", "never"]),
    data=st.data(),
)
def test_random_histories_with_crashes_count_every_change_once(
    sizes: list[list[str]],
    max_tx_changes: int,
    crashes: list[int],
    durability: str,
    data: st.DataObject,
) -> None:
    """Whatever the crashes (Redis having run some of the batches sent), keepalives, batch
    timings and durability reports, the boards end equal to the log and the slot at its
    end, and PostgreSQL is never told a position Redis' replicas do not hold."""
    world = World(log_of(sizes))
    for crash_after in crashes:
        run = Run(world, max_tx_changes, durability)
        for n, (kind, msg, wal_end) in enumerate(world.messages()):
            if n >= crash_after:
                run.crash(redis_took=data.draw(st.integers(0, MAX_IN_FLIGHT)))
                break
            if kind == "keepalive":
                run.keepalive(wal_end, reply=data.draw(st.booleans()))
            else:
                run.feed(msg)
            if data.draw(st.booleans()):
                run.tick(
                    quiet=data.draw(st.booleans()),
                    advance=data.draw(st.sampled_from([0.001, 0.02, 2.0])),
                )
        else:
            run.stop()
    run_session(world, max_tx_changes)
    assert world.redis.counts == expected_counts(world.log)
    assert world.redis.watermark.tx_lsn == 0
    assert world.redis.watermark.lsn == world.log[-1].end_lsn
    assert world.confirmed == world.log[-1].end_lsn


def test_commit_time_of_the_watermark_is_the_last_commit() -> None:
    """The watermark carries the commit time of the last transaction it covers."""
    world = World(log_of([["a"]]))
    run_session(world, max_tx_changes=10)
    assert world.redis.watermark.commit_time == pg_time_to_datetime(NOW_US)


def test_built_boards_go_live_only_once_the_stream_passed_their_snapshot() -> None:
    """A swap waits until every transaction of the build's snapshot was received (a commit,
    keepalive or logical message at or past its consistent point), between transactions."""
    world = World(log_of([["a"], ["b"]]))
    first, second = world.log
    run = Run(world, max_tx_changes=10)
    run.session.building(second.final_lsn + 0x10)  # the snapshot's point, after first
    run.feed(RELATION)
    assert not run.session.can_swap()
    run.feed(first.begin())
    run.feed(first.changes[0])
    run.feed(first.commit())
    assert not run.session.can_swap()  # first.end_lsn is before the snapshot's point
    run.feed(LogicalMessage(None, False, second.final_lsn + 0x10, "projector-heartbeat", b"s"))
    assert run.session.can_swap()
    run.feed(second.begin())
    assert not run.session.can_swap()  # inside a transaction


def test_a_keepalive_past_the_snapshot_allows_the_swap() -> None:
    """On an idle stream a keepalive at the snapshot's point is enough."""
    run = Run(World([]), max_tx_changes=10)
    run.session.building(0x5000)
    run.keepalive(0x4FFF)
    assert not run.session.can_swap()
    run.keepalive(0x5000)
    assert run.session.can_swap()
