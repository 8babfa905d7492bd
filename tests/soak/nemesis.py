"""The nemesis: faults drawn at random and injected while the workload writes.

`plan_faults` picks a round's faults from its seed; the first one cycles through every
kind with consecutive seeds (so any run of `len(FAULT_KINDS)` rounds exercises them all),
a second one is random. `Nemesis.run` injects them one after another on the soak's main
thread (projectors are started from it only); a fault may leave a follow-up for later (a
detached partition attached again or dropped, a broken column fixed), run after a random
delay while the workload still writes, else by `Nemesis.heal`, which ends every fault still
in force. Each injection is recorded with what it actually did (a kill between chunks that
found no chunk to land between is recorded as missed). A check made during a fault (the
other boards exact while one is broken) adds its failure to ``findings``.
"""

from __future__ import annotations

import functools
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from harness.tcp_proxy import TcpProxy
from tests.e2e.projector.support import parse_lsn, projector_executable, settings_env
from tests.soak.cluster import BASE_WAL_SENDER_TIMEOUT, KEYS, ZONES, Cluster, Projector
from tests.soak.ddl import DdlFaults
from tests.soak.workload import Instants, Workload, ballast, big_transaction_body

FAULT_KINDS = (
    "kill9",
    "kill9_mid_chunk",
    "sigstop",
    "pg_restart_fast",
    "pg_restart_immediate",
    "redis_restart_empty",
    "redis_restart_old_snapshot",
    "flushall",
    "pg_net_stall",
    "pg_net_cut",
    "redis_net_stall",
    "redis_net_cut",
    "short_wal_sender_timeout",
    "zombie",
    "replay",
    "timezone_change",
    "partition_maintenance",
    "breaking_migration",
)


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault to inject ``at`` seconds after the workload started."""

    kind: str
    at: float
    seed: int


@dataclass(frozen=True, slots=True)
class FaultPlan:
    faults: tuple[Fault, ...]
    # When to SAVE the Redis snapshot that redis_restart_old_snapshot restores (if planned),
    # and which kind of moment it catches.
    snapshot_at: float | None
    snapshot: str = "older"  # "older", "mid_chunk" or "mid_rebuild" (see the fault)


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a fault leaves to do ``at`` (monotonic time); ``action(at_heal)``."""

    at: float
    action: Callable[[bool], None]


@dataclass(slots=True)
class FaultRecord:
    """What an injection did: when, how long, and the details that tell it apart."""

    kind: str
    at: float
    seconds: float = 0.0
    hit: bool = True  # False: the moment it aimed at never came (recorded, not counted)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at": round(self.at, 3),
            "seconds": round(self.seconds, 3),
            "hit": self.hit,
            **self.detail,
        }

    def describe(self) -> str:
        shown = {k: v for k, v in self.detail.items() if k not in ("stderr",)}
        extra = ", ".join(f"{k}={v}" for k, v in shown.items())
        missed = " MISSED" if not self.hit else ""
        return f"{self.kind}@{self.at:.2f}s{missed}" + (f" ({extra})" if extra else "")


def plan_faults(seed: int, rng: random.Random) -> FaultPlan:
    """One or two faults; the first is ``FAULT_KINDS[seed % len(FAULT_KINDS)]``.

    A short wal_sender_timeout is a condition more than an event: it always comes with a
    second fault that makes the projector re-read the stream (a restart, a kill between
    chunks, a cut), which is when keepalives from the walsender matter most.
    """
    first = FAULT_KINDS[seed % len(FAULT_KINDS)]
    kinds = [first]
    if first == "short_wal_sender_timeout":
        companions = [kind for kind, _ in _RE_READ_WEIGHTS]
        kinds += rng.choices(companions, weights=[w for _, w in _RE_READ_WEIGHTS])
    elif rng.random() < 0.6:
        kinds.append(rng.choice([k for k in FAULT_KINDS if k != first]))
    at = rng.uniform(0.05, 0.8)
    faults = []
    for kind in kinds:
        faults.append(Fault(kind, at, rng.randrange(1 << 30)))
        at += rng.uniform(0.2, 1.0)  # injections are sequential: this is the earliest
    snapshot_at = None
    snapshot = "older"
    restore = next((f for f in faults if f.kind == "redis_restart_old_snapshot"), None)
    if restore is not None:
        snapshot = rng.choices(("older", "mid_chunk", "mid_rebuild"), weights=(4, 3, 3))[0]
        if snapshot != "mid_rebuild":  # that one saves and restores at once
            snapshot_at = rng.uniform(0.0, max(0.0, restore.at - 0.2))
    return FaultPlan(tuple(faults), snapshot_at, snapshot)


# Faults after which the projector reads the stream again from its watermark.
_RE_READ_WEIGHTS = (
    ("kill9_mid_chunk", 4),
    ("kill9", 1),
    ("sigstop", 1),
    ("pg_restart_fast", 1),
    ("pg_restart_immediate", 1),
    ("redis_restart_old_snapshot", 2),
    ("pg_net_cut", 1),
    ("redis_net_stall", 1),
)


class Nemesis:
    """Injects a round's faults into the cluster and heals them afterwards."""

    def __init__(self, cluster: Cluster, instants: Instants, workdir: Path) -> None:
        self.cluster = cluster
        self.instants = instants
        self.snapshot_path = workdir / "older.rdb"
        self.records: list[FaultRecord] = []
        self._snapshot: dict[str, str] | None = None
        self._snapshot_kind = "older"
        self._wal_sender_timeout_changed = False
        self._replay_thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._workload: Workload | None = None
        self._follow_ups: list[FollowUp] = []
        self.findings: list[tuple[str, str]] = []  # (failure kind, message)
        self.ddl = DdlFaults(cluster, instants, self._later, self.findings)

    # -- schedule --------------------------------------------------------------------

    def run(self, plan: FaultPlan, started: float, workload: Workload) -> list[FaultRecord]:
        """Inject the plan's faults at their times (relative to ``started``), in order."""
        self._t0 = started
        self._workload = workload
        self.ddl.workload = workload
        actions: list[tuple[float, Callable[[], None]]] = []
        self._snapshot_kind = plan.snapshot
        if plan.snapshot_at is not None:
            save: Callable[[], None] = self._save_snapshot
            if plan.snapshot == "mid_chunk":
                save = functools.partial(self._save_snapshot_mid_chunk, plan.faults[0].seed)
            actions.append((plan.snapshot_at, save))
        for fault in plan.faults:
            actions.append((fault.at, functools.partial(self._inject, fault)))
        actions.sort(key=lambda action: action[0])
        for at, action in actions:
            self._follow_up(until=started + at)
            delay = started + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            action()
        self._follow_up(until=None)
        if self._wal_sender_timeout_changed:
            # A condition, not an event: leave the projector a moment to live under it.
            time.sleep(random.Random(plan.faults[0].seed).uniform(0.3, 1.0))
        return self.records

    def _later(self, delay: float, action: Callable[[bool], None]) -> None:
        """Leave ``action`` to run ``delay`` seconds from now (or at the heal)."""
        self._follow_ups.append(FollowUp(time.monotonic() + delay, action))
        self._follow_ups.sort(key=lambda follow_up: follow_up.at)

    def _follow_up(self, until: float | None) -> None:
        """Run the follow-ups due before ``until``; with None, those due while the workload
        still writes (the others are left to the heal)."""
        workload = self._workload
        while self._follow_ups:
            due = self._follow_ups[0].at
            if until is not None and due > until:
                return
            while until is None and time.monotonic() < due:
                if workload is None or workload.done:
                    return
                time.sleep(0.02)
            time.sleep(max(0.0, due - time.monotonic()))
            self._follow_ups.pop(0).action(False)

    def _inject(self, fault: Fault) -> None:
        record = FaultRecord(fault.kind, time.monotonic() - self._t0)
        self.records.append(record)
        began = time.monotonic()
        getattr(self, f"_{fault.kind}")(random.Random(fault.seed), record)
        record.seconds = time.monotonic() - began

    # -- helpers ---------------------------------------------------------------------

    def _restart_projector_if_none(self, rng: random.Random) -> None:
        """Start a projector again after a short while, and let it reconnect (or begin a
        rebuild) before the next fault or the heal: recovery happens under the faults."""
        time.sleep(rng.uniform(0.0, 0.4))
        if not self.cluster.running():
            self._start_and_wait()

    def _start_and_wait(self) -> Projector:
        projector = self.cluster.spawn_projector()
        projector.wait_logged("streaming", 5.0)  # a rebuild first, if it needs one
        return projector

    def _victim(self, record: FaultRecord) -> Projector | None:
        victim = self.cluster.active()
        if victim is None:
            record.hit = False
            record.detail["why"] = "no projector running"
        return victim

    # -- the faults ------------------------------------------------------------------

    def _kill9(self, rng: random.Random, record: FaultRecord) -> None:
        victim = self._victim(record)
        if victim is not None:
            victim.kill9()
        self._restart_projector_if_none(rng)

    def _kill9_mid_chunk(self, rng: random.Random, record: FaultRecord) -> None:
        """Commit a transaction over the atomic limit and kill -9 once a chunk is applied.

        Half the time the workload holds still meanwhile: then no other commit lands
        between the large transaction's changes and its Commit, so after the restart the
        walsender decodes past the watermark for a while before that transaction's Begin.
        """
        quiet = self._workload is not None and rng.random() < 0.5
        record.detail["quiet"] = quiet
        if quiet:
            assert self._workload is not None
            self._workload.hold()
        try:
            self._kill_mid_chunk_attempts(rng, record)
        finally:
            if quiet:
                assert self._workload is not None
                self._workload.release()

    def _kill_mid_chunk_attempts(self, rng: random.Random, record: FaultRecord) -> None:
        for attempt in range(1, 4):
            victim = self._victim(record)
            if victim is None:
                break
            # Mostly right after the first chunk; sometimes a few chunks in.
            chunks = 1 if attempt > 1 else rng.choice((1, 1, 2, 3, 5))
            rows = self._between_chunks(rng, victim.kill9, victim, chunks)
            record.detail["attempts"] = attempt
            if rows:
                record.hit = True
                record.detail["tx_rows"] = rows
                break
            record.hit = False
            record.detail["why"] = "every chunk was applied before a poll saw one"
        self._restart_projector_if_none(rng)

    def _between_chunks(
        self,
        rng: random.Random,
        action: Callable[[], None],
        victim: Projector | None,
        chunks: int = 1,
    ) -> int:
        """Commit a large transaction; run ``action`` once Redis shows ``chunks`` of it applied.

        Returns the chunk marker (``tx_rows``) seen then, or 0 when every chunk was applied
        between two polls (or the victim died first). Most of these transactions come after
        one that only writes a table outside the publication, and start by writing that
        table too (see ``workload.ballast``): after a restart the walsender then reads and
        decodes for a while before the large transaction's Begin reaches the projector.
        """
        committed: list[int] = []
        failure: list[BaseException] = []
        with_ballast = rng.random() < 0.7
        rows = rng.randint(1_800, 3_000)
        tx_rng = random.Random(rng.randrange(1 << 30))

        def write() -> None:
            try:
                with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
                    if with_ballast:  # WAL the walsender reads again after a restart
                        with conn.transaction():
                            ballast(conn, tx_rng.randint(20_000, 100_000))
                    with conn.transaction():
                        if with_ballast:
                            ballast(conn, tx_rng.randint(10_000, 120_000))
                        big_transaction_body(conn, tx_rng, self.instants, rows=rows)
                    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    assert row is not None
                    committed.append(parse_lsn(row[0]))
            except BaseException as exc:
                failure.append(exc)

        writer = threading.Thread(target=write, name="big-transaction", daemon=True)
        writer.start()
        deadline = time.monotonic() + 15
        seen = 0
        enough = chunks * self.cluster.max_tx_changes
        with self.cluster.client() as client:
            key = KEYS.watermark
            while time.monotonic() < deadline and (victim is None or victim.running):
                tx_rows, lsn = client.hmget(key, "tx_rows", "lsn")
                if tx_rows is not None and int(tx_rows) >= enough:
                    action()
                    seen = int(tx_rows)
                    break
                if committed and lsn is not None and parse_lsn(as_text(lsn)) >= committed[0]:
                    break  # applied in full between two polls
                if failure:
                    break
                time.sleep(0.0003)
        writer.join(30)
        return seen

    def _sigstop(self, rng: random.Random, record: FaultRecord) -> None:
        victim = self._victim(record)
        if victim is None:
            return
        hold = self.cluster.wal_sender_timeout() + rng.uniform(0.3, 1.0)
        record.detail["stopped_for"] = round(hold, 2)
        victim.pause()
        time.sleep(hold)
        victim.resume()

    def _pg_restart_fast(self, rng: random.Random, record: FaultRecord) -> None:
        self.cluster.pg.restart("fast")

    def _pg_restart_immediate(self, rng: random.Random, record: FaultRecord) -> None:
        self.cluster.pg.restart("immediate")

    def _redis_restart_empty(self, rng: random.Random, record: FaultRecord) -> None:
        self.cluster.redis.restart_from(None)

    def _save_snapshot(self) -> None:
        """SAVE Redis now and keep the file, for redis_restart_old_snapshot to restore."""
        with self.cluster.client() as client:
            client.save()
            self._snapshot = _watermark_summary(client)
        shutil.copyfile(self.cluster.redis.rdb_path, self.snapshot_path)

    def _save_snapshot_mid_chunk(self, seed: int) -> None:
        """SAVE while a large transaction is part-applied (the snapshot holds its marker)."""
        if not self._between_chunks(random.Random(seed + 1), self._save_snapshot, None):
            self._save_snapshot()

    def _redis_restart_old_snapshot(self, rng: random.Random, record: FaultRecord) -> None:
        """Restart Redis holding an older state: a snapshot SAVEd earlier in the round (at
        any moment, or while a large transaction was part-applied), or one SAVEd while a
        rebuild was loading its boards (see ``_restore_mid_rebuild``)."""
        record.detail["snapshot"] = self._snapshot_kind
        if self._snapshot_kind == "mid_rebuild":
            self._restore_mid_rebuild(rng, record)
            return
        if self._snapshot is None:
            self._save_snapshot()  # not planned earlier (cannot happen with plan_faults)
        assert self._snapshot is not None
        older = self._snapshot.get("lsn")
        deadline = time.monotonic() + 3.0
        nudged = False
        with self.cluster.client() as client:
            # The point is an older state: if the workload wrote nothing since, write a row.
            while (now := _watermark_summary(client)).get("lsn") == older:
                if time.monotonic() > deadline:
                    break
                if not nudged and time.monotonic() > deadline - 2.5:
                    nudged = True
                    with self.cluster.connect() as conn:
                        conn.execute(
                            "INSERT INTO pomodoros (user_id, completed_at) VALUES ('u00', %s)",
                            (self.instants.pick(rng),),
                        )
                time.sleep(0.02)
        record.detail["from"] = f"{now.get('lsn', '-')}+{now.get('tx_rows', '-')}"
        record.detail["to"] = f"{older or '-'}+{self._snapshot.get('tx_rows', '-')}"
        record.hit = now.get("lsn") != older or now.get("tx_rows") != self._snapshot.get("tx_rows")
        self.cluster.redis.restart_from(self.snapshot_path)

    def _restore_mid_rebuild(self, rng: random.Random, record: FaultRecord) -> None:
        """Ask for a rebuild (as `projector replay` does), SAVE as soon as it has marked its
        build started, let it load a moment longer, then restart Redis from that snapshot
        while the projector's connections are held (so it reconnects to the older state).

        An RDB snapshot taken while a long rebuild loads is an ordinary thing to restart
        from; the boards loaded after it are gone.
        """
        cluster = self.cluster
        with cluster.client() as client:
            client.set(KEYS.replay_request, f"soak-{rng.randrange(1 << 30):x}", ex=120)
            deadline = time.monotonic() + 15
            marker = None
            while marker is None and time.monotonic() < deadline:
                marker = next(client.scan_iter(match=KEYS.build("*") + "started"), None)
                if marker is None:
                    time.sleep(0.001)
            if marker is None:
                record.hit = False
                record.detail["why"] = "no rebuild started within 15 s"
                return
            time.sleep(rng.uniform(0.0, 0.04))  # anywhere in the loading, not only its start
            client.save()
            shutil.copyfile(cluster.redis.rdb_path, self.snapshot_path)
            build_keys = sum(1 for _ in client.scan_iter(match=KEYS.builds))
        gap = rng.uniform(0.0, 0.04)
        time.sleep(gap)
        cluster.redis_proxy.stall()
        try:
            cluster.redis.restart_from(self.snapshot_path)
        finally:
            cluster.redis_proxy.resume()
        record.detail["build_keys_saved"] = build_keys
        record.detail["gap"] = round(gap, 3)

    def _flushall(self, rng: random.Random, record: FaultRecord) -> None:
        with self.cluster.client() as client:
            client.flushall()

    def _net(self, proxy: TcpProxy, how: str, rng: random.Random, record: FaultRecord) -> None:
        record.detail["connections"] = proxy.connections
        if how == "stall":
            hold = rng.uniform(0.5, 3.0)
            proxy.stall()
        else:
            hold = rng.uniform(0.2, 1.5)
            proxy.cut()
        record.detail["held"] = round(hold, 2)
        time.sleep(hold)
        proxy.heal()

    def _pg_net_stall(self, rng: random.Random, record: FaultRecord) -> None:
        self._net(self.cluster.pg_proxy, "stall", rng, record)

    def _pg_net_cut(self, rng: random.Random, record: FaultRecord) -> None:
        self._net(self.cluster.pg_proxy, "cut", rng, record)

    def _redis_net_stall(self, rng: random.Random, record: FaultRecord) -> None:
        self._net(self.cluster.redis_proxy, "stall", rng, record)

    def _redis_net_cut(self, rng: random.Random, record: FaultRecord) -> None:
        self._net(self.cluster.redis_proxy, "cut", rng, record)

    def _short_wal_sender_timeout(self, rng: random.Random, record: FaultRecord) -> None:
        """Lower wal_sender_timeout for the rest of the round (heal restores it)."""
        value = rng.choices(("250ms", "500ms", "1s", "2s"), weights=(3, 3, 2, 1))[0]
        record.detail["wal_sender_timeout"] = value
        self.cluster.set_wal_sender_timeout(value)
        self._wal_sender_timeout_changed = True

    def _zombie(self, rng: random.Random, record: FaultRecord) -> None:
        """A second `projector run` on the same slot and Redis; only one may ever write.

        standby: the second waits beside the first (which is killed, or not).
        paused: the first is frozen and cut off from PostgreSQL (losing its lock), the
        second takes over, then the first wakes up with its Redis connection intact.
        """
        first = self.cluster.active()
        variant = rng.choice(("standby", "paused"))
        record.detail["variant"] = variant
        if variant == "standby" or first is None:
            self.cluster.spawn_projector()
            time.sleep(rng.uniform(0.3, 1.2))
            if first is not None and rng.random() < 0.5:
                first.kill9()
                record.detail["first"] = "killed"
            return
        first.pause()
        self.cluster.pg_proxy.cut()
        time.sleep(0.3)
        self.cluster.pg_proxy.heal()
        self.cluster.spawn_projector()
        time.sleep(rng.uniform(1.0, 2.0))
        first.resume()
        time.sleep(0.3)

    def _replay(self, rng: random.Random, record: FaultRecord) -> None:
        """`projector replay` in the background, as an operator would run it."""
        env = settings_env(self.cluster.projector_config(self.cluster.timezone, proxied=False))

        def run() -> None:
            began = time.monotonic()
            try:
                done = subprocess.run(
                    [projector_executable(), "replay", "--timeout", "25"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=45,
                    check=False,
                )
                record.detail["exit"] = done.returncode
                if done.returncode != 0:
                    record.detail["stderr"] = done.stderr.strip().splitlines()[-1:]
            except subprocess.TimeoutExpired:
                record.detail["exit"] = "timeout"
            record.detail["took"] = round(time.monotonic() - began, 2)

        self._replay_thread = threading.Thread(target=run, name="replay", daemon=True)
        self._replay_thread.start()

    def _timezone_change(self, rng: random.Random, record: FaultRecord) -> None:
        """Restart the projector in another zone: every board's buckets move."""
        new = rng.choice([zone for zone in ZONES if zone != self.cluster.timezone])
        how = rng.choice(("sigterm", "kill9"))
        record.detail["zone"] = f"{self.cluster.timezone} -> {new}"
        record.detail["restart"] = how
        for projector in self.cluster.running():
            if how == "sigterm":
                projector.terminate()
            else:
                projector.kill9()
        self.cluster.timezone = new
        time.sleep(rng.uniform(0.0, 0.3))
        self._start_and_wait()

    def _partition_maintenance(self, rng: random.Random, record: FaultRecord) -> None:
        self.ddl.partition_maintenance(rng, record)

    def _breaking_migration(self, rng: random.Random, record: FaultRecord) -> None:
        self.ddl.breaking_migration(rng, record)

    # -- healing ---------------------------------------------------------------------

    def heal(self) -> None:
        """End every fault still in force (the projectors are the runner's business)."""
        cluster = self.cluster
        cluster.pg_proxy.heal()
        cluster.redis_proxy.heal()
        for projector in cluster.projectors:
            projector.resume()
        if not cluster.pg.is_running():
            cluster.pg.start()
        if not cluster.redis.is_running():
            cluster.redis.start()
        if self._wal_sender_timeout_changed:
            cluster.set_wal_sender_timeout(BASE_WAL_SENDER_TIMEOUT)
            self._wal_sender_timeout_changed = False
        if self._replay_thread is not None:
            self._replay_thread.join(60)
            self._replay_thread = None
        follow_ups, self._follow_ups = self._follow_ups, []
        for follow_up in follow_ups:  # a partition to attach or drop, a column to fix
            follow_up.action(True)


def _watermark_summary(client: redis.Redis) -> dict[str, str]:
    raw = client.hmget(KEYS.watermark, "lsn", "tx_rows")
    return {k: as_text(v) for k, v in zip(("lsn", "tx_rows"), raw, strict=True) if v is not None}


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
