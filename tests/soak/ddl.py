"""The nemesis's DDL faults: partition maintenance on `focus`, breaking migrations of `users`.

Neither changes a row in the stream's terms, so the projector learns of them from the
catalog (partitions, at its next heartbeat) or from the layout of the next change (a
renamed or retyped column). Each leaves a follow-up with the nemesis: a detached partition
attached again (the DEFAULT partition's rows of its range moved into it) or dropped, a
broken column fixed. The DDL itself is in ``schema.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from tests.soak import schema
from tests.soak.cluster import Cluster
from tests.soak.oracle import check_broken
from tests.soak.workload import USER_IDS, Instants, Workload

if TYPE_CHECKING:
    from tests.soak.nemesis import FaultRecord

# How long a mid-fault check may wait for the projector to catch up and the boards to settle.
_CHECK_DEADLINE = 30.0


class DdlFaults:
    """Injects the DDL faults; ``later(delay, action)`` schedules their follow-ups, and a
    mid-fault check that fails adds ``(kind, message)`` to ``findings``."""

    def __init__(
        self,
        cluster: Cluster,
        instants: Instants,
        later: Callable[[float, Callable[[bool], None]], None],
        findings: list[tuple[str, str]],
    ) -> None:
        self.cluster = cluster
        self.instants = instants
        self.later = later
        self.findings = findings
        self.workload: Workload | None = None

    def partition_maintenance(self, rng: random.Random, record: FaultRecord) -> None:
        """One partition of `focus` truncated, detached (attached again or dropped later),
        dropped, or a table holding rows attached: no row change in the stream says so."""
        action = rng.choice(("truncate", "detach", "attach", "drop"))
        record.detail["action"] = action
        with self._connection() as conn:
            names = schema.partitions(conn)
            quarters = [name for name in names if name != schema.FOCUS_DEFAULT]
            if action == "attach":
                self._attach_with_rows(conn, rng, record)
                return
            if action != "truncate" and not quarters:
                record.hit = False
                record.detail["why"] = "no partition but the DEFAULT one"
                return
            table = rng.choice(names if action == "truncate" else quarters)
            record.detail["partition"] = table
            record.detail["rows"] = schema.rows_in(conn, table)
            if action == "truncate":
                schema.with_retries(conn, lambda c: schema.truncate_partition(c, table))
            elif action == "drop":
                schema.with_retries(conn, lambda c: schema.drop_table(c, table))
            else:
                schema.with_retries(conn, lambda c: schema.detach_partition(c, table))
                self._later_reattach_or_drop(rng, record, schema.Quarter.named(table))

    def _attach_with_rows(
        self, conn: psycopg.Connection[Any], rng: random.Random, record: FaultRecord
    ) -> None:
        """Create a table for a quarter with no partition of its own, fill it, attach it (the
        DEFAULT partition's rows of that quarter moved into it in the same transaction)."""
        free = schema.uncovered_quarters(conn, self.instants.now)
        if not free:
            record.hit = False
            record.detail["why"] = "every quarter has a partition"
            return
        quarter = rng.choice(free)
        rows = schema.new_focus_rows(rng, quarter, rng.randint(1, 60), USER_IDS)
        schema.fill_new_partition(conn, quarter, rows)
        time.sleep(rng.uniform(0.0, 0.3))  # the workload writes on meanwhile
        moved = schema.with_retries(conn, lambda c: schema.attach_partition(c, quarter))
        record.detail.update(partition=quarter.table, rows=len(rows), moved=moved)

    def _later_reattach_or_drop(
        self, rng: random.Random, record: FaultRecord, quarter: schema.Quarter
    ) -> None:
        then = rng.choice(("attach", "drop"))
        delay = rng.uniform(0.05, 1.2)

        def finish(at_heal: bool) -> None:
            with self._connection() as conn:
                if then == "attach":
                    moved = schema.with_retries(conn, lambda c: schema.attach_partition(c, quarter))
                    record.detail["moved"] = moved
                else:
                    schema.with_retries(conn, lambda c: schema.drop_table(c, quarter.table))
            record.detail["then"] = f"{then} " + ("at heal" if at_heal else f"+{delay:.2f}s")

        self.later(delay, finish)

    def breaking_migration(self, rng: random.Random, record: FaultRecord) -> None:
        """Rename or retype `users.created_at`, which the signups board alone reads, while
        the workload writes; fix it after a random delay. Meanwhile (sometimes) a check with
        the workload held: signups unavailable and gone from Redis, every other board exact."""
        how = rng.choice(schema.BREAKING_MIGRATIONS)
        record.detail["how"] = how
        workload = self.workload
        if workload is not None:
            workload.hold()
        try:
            with self._connection() as conn:
                schema.with_retries(conn, lambda c: schema.break_signups(c, how))
                if workload is not None and how == "rename":
                    workload.use_signup_column(schema.SIGNUP_RENAMED)
                # A change of users right after it: the stream carries the new layout.
                conn.execute(
                    "INSERT INTO users (id, display_name) VALUES (%s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                    (rng.choice(USER_IDS), f"Migrated {rng.randrange(1000)}"),
                )
        finally:
            if workload is not None:
                workload.release()
        if rng.random() < 0.6:
            self._check_during(record, schema.SIGNUP_BOARD)
        delay = rng.uniform(0.05, 1.2)

        def fix(at_heal: bool) -> None:
            if workload is not None:
                workload.hold()
            try:
                with self._connection() as conn:
                    schema.with_retries(conn, lambda c: schema.fix_signups(c, how))
                if workload is not None:
                    workload.use_signup_column(schema.SIGNUP_COLUMN)
            finally:
                if workload is not None:
                    workload.release()
            record.detail["fixed"] = "at heal" if at_heal else f"+{delay:.2f}s"

        self.later(delay, fix)

    def _check_during(self, record: FaultRecord, broken: str) -> None:
        """With the workload held: ``oracle.check_broken``; a failure is a finding."""
        workload = self.workload
        if workload is not None and not workload.hold():
            workload.release()
            record.detail["check"] = "skipped: a step did not end within 5 s"
            return
        try:
            verdict = check_broken(
                self.cluster, broken, deadline=_CHECK_DEADLINE, alive=self._keep_one_running
            )
        finally:
            if workload is not None:
                workload.release()
        record.detail["check"] = "ok" if verdict.ok else verdict.failure
        if not verdict.ok:
            assert verdict.failure is not None
            self.findings.append(
                (verdict.failure, f"during {record.kind} ({broken} broken): {verdict.message}")
            )

    def _keep_one_running(self) -> None:
        """While a mid-fault check waits: a projector that quit is replaced (the runner
        reports the exit)."""
        if not self.cluster.running():
            self.cluster.spawn_projector()

    def _connection(self) -> psycopg.Connection[Any]:
        """A direct connection for the nemesis's DDL, waiting at most 10 s for a lock."""
        conn = self.cluster.connect()
        conn.execute("SET lock_timeout = '10s'")
        return conn
