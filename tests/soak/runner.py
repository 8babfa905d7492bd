"""Rounds of the soak: reset, write and inject faults, heal, check; then the next round.

A round is a function of its seed (``base seed + round index``): the starting data, the
steps, the faults and their times. Each round starts from the seeded base data streamed
through the running projector; after a failed round (or when the round starts in another
time zone) the world is reset hard first: projectors killed, Redis flushed, slot dropped,
a fresh projector rebuilt from PostgreSQL. So any round replays alone by its seed
(``make soak SEED=<seed> ROUNDS=1``), up to the timing of threads and processes.
"""

from __future__ import annotations

import random
import shutil
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from tests.soak import schema
from tests.soak.cluster import BASE_WAL_SENDER_TIMEOUT, ZONES, Cluster
from tests.soak.nemesis import Nemesis, plan_faults
from tests.soak.oracle import check, settle
from tests.soak.report import Failure, LogTally, RoundResult, RunSummary
from tests.soak.workload import Instants, Workload, load_base_data, plan_steps

MAX_TX_CHANGES = 300
QUIESCENCE_DEADLINE = 60.0
_OTHER_ZONE_ROUNDS = 0.15  # rounds that start in a zone other than UTC
_WORKDIR_MARKER = ".soak-workdir"


class Soak:
    """A cluster and the rounds run against it."""

    def __init__(
        self,
        workdir: Path,
        *,
        max_tx_changes: int = MAX_TX_CHANGES,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.workdir = workdir
        self.failures_dir = workdir / "failures"
        self.echo = echo
        self.cluster = Cluster(workdir, max_tx_changes=max_tx_changes)
        self._hard_reset_due = True

    def __enter__(self) -> Soak:
        marker = self.workdir / _WORKDIR_MARKER
        if self.workdir.exists() and any(self.workdir.iterdir()):
            ours = {_WORKDIR_MARKER, "logs", "failures", "older.rdb"}
            if not {path.name for path in self.workdir.iterdir()} <= ours:
                raise RuntimeError(
                    f"{self.workdir} is not empty and is no soak work directory: not wiping it"
                )
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        marker.write_text("logs and evidence of `python -m tests.soak`; wiped by the next run\n")
        self.cluster.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cluster.close()

    @property
    def settings(self) -> dict[str, object]:
        return {
            "max_tx_changes": self.cluster.max_tx_changes,
            "wal_sender_timeout": BASE_WAL_SENDER_TIMEOUT,
            "quiescence_deadline": QUIESCENCE_DEADLINE,
        }

    # -- rounds ----------------------------------------------------------------------

    def run(self, rounds: int, seed: int) -> RunSummary:
        """Rounds with seeds ``seed``, ``seed + 1``, ...; progress echoed as they end."""
        summary = RunSummary(seed, rounds, self.settings)
        began = time.monotonic()
        try:
            for index in range(rounds):
                result = self.round(index + 1, seed + index)
                summary.add(result)
                summary.seconds = time.monotonic() - began
                self.echo(summary.progress_line(result))
        except KeyboardInterrupt:
            self.echo("soak: interrupted; the rounds so far are reported")
        summary.seconds = time.monotonic() - began
        return summary

    def round(self, number: int, seed: int) -> RoundResult:
        rng = random.Random(seed)
        zone = "UTC" if rng.random() >= _OTHER_ZONE_ROUNDS else rng.choice(ZONES[1:])
        result = RoundResult(number, seed, zone)
        began = time.monotonic()
        instants = Instants(datetime.now(UTC), ZONES)
        try:
            self._prepare(seed, zone, instants)
            steps = plan_steps(rng, rng.randint(5, 10))
            plan = plan_faults(seed, rng)
            result.steps = [step.kind for step in steps]
            workload = Workload(self.cluster.dsn, instants).start(steps, rng.randrange(1 << 30))
            nemesis = Nemesis(self.cluster, instants, self.workdir)
            try:
                result.faults = nemesis.records
                nemesis.run(plan, time.monotonic(), workload)
            finally:
                try:
                    workload.join()
                finally:
                    nemesis.heal()
                    result.failures += [Failure(kind, text) for kind, text in nemesis.findings]
            self._settle(result, rng)
            verdict = check(
                self.cluster, deadline=QUIESCENCE_DEADLINE, alive=lambda: self._revive(result)
            )
            result.catch_up_seconds = verdict.catch_up_seconds
            if not verdict.ok:
                assert verdict.failure is not None
                result.failures.append(Failure(verdict.failure, verdict.message))
        except Exception:
            result.failures.append(Failure("harness", traceback.format_exc(limit=8)))
        finally:
            self._finish(result)
            result.seconds = time.monotonic() - began
        return result

    # -- between rounds --------------------------------------------------------------

    def _prepare(self, seed: int, zone: str, instants: Instants) -> None:
        """Bring the world to the round's starting point: the soak's schema (partitions and
        columns as created), base data, every board projected and live, one projector."""
        cluster = self.cluster
        if self._hard_reset_due or cluster.timezone != zone or len(cluster.running()) != 1:
            self._hard_reset(zone)
        with cluster.connect() as conn:
            schema.restore(conn, instants.now)
            load_base_data(conn, seed, instants)
        with cluster.client() as client:
            settle(cluster, client, timeout=QUIESCENCE_DEADLINE, alive=lambda: None)
        self._drain_events()  # the soak's own resets are not the round's recoveries

    def _hard_reset(self, zone: str) -> None:
        cluster = self.cluster
        for projector in cluster.running():
            projector.kill9()
        self._drain_events()
        self._forget_exited()
        cluster.pg_proxy.heal()
        cluster.redis_proxy.heal()
        cluster.pg.start()
        cluster.redis.start()
        cluster.set_wal_sender_timeout(BASE_WAL_SENDER_TIMEOUT)
        with cluster.client() as client:
            client.flushall()
        cluster.drop_slot()
        cluster.timezone = zone
        cluster.spawn_projector()
        self._hard_reset_due = False

    def _settle(self, result: RoundResult, rng: random.Random) -> None:
        """Exactly one projector from here on: extra ones (zombies) are killed, at random."""
        self._note_exits(result)
        running = self.cluster.running()
        if len(running) > 1:
            keep = rng.choice(running)
            for projector in running:
                if projector is not keep:
                    projector.kill9()
        elif not running:
            self.cluster.spawn_projector()

    def _revive(self, result: RoundResult) -> None:
        """While waiting for quiescence: a projector that quit is a finding; start another."""
        if not self.cluster.running():
            self._note_exits(result)
            self.cluster.spawn_projector()

    def _note_exits(self, result: RoundResult) -> None:
        for projector in self.cluster.projectors:
            if projector.running or projector.ended_on_purpose:
                continue
            projector.ended_on_purpose = True  # reported once
            result.failures.append(
                Failure(
                    "exit",
                    f"projector #{projector.number} exited on its own with code "
                    f"{projector.exit_code}:\n{projector.log_tail(15)}",
                )
            )

    def _finish(self, result: RoundResult) -> None:
        """Count the round's log events; keep the evidence of a failure; forget the dead."""
        tally = LogTally()
        for projector in self.cluster.projectors:
            tally.add(projector.new_events())
        result.tally = tally
        if not result.ok:
            result.log_file = str(self._keep_evidence(result))
            self._hard_reset_due = True
        self._forget_exited()

    def _drain_events(self) -> None:
        for projector in self.cluster.projectors:
            projector.new_events()

    def _forget_exited(self) -> None:
        """Drop exited processes and their logs (a failed round copied them first)."""
        for projector in self.cluster.forget_exited():
            projector.log_path.unlink(missing_ok=True)

    def _keep_evidence(self, result: RoundResult) -> Path:
        """Copy the round's projector logs and the servers' log tails next to its failures."""
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        path = self.failures_dir / f"round-{result.number}-seed-{result.seed}.log"
        parts = [
            f"round {result.number} seed {result.seed} zone {result.zone} -> "
            f"{self.cluster.timezone}",
            "faults: " + ", ".join(f.describe() for f in result.faults),
            "steps: " + ", ".join(result.steps),
        ]
        parts += [f"{failure.kind}: {failure.message}" for failure in result.failures]
        for projector in self.cluster.projectors:
            parts.append(f"===== projector #{projector.number} ({projector.timezone}) =====")
            parts.append(_tail(projector.log_path, 400))
        parts.append("===== postgres (tail) =====")
        parts.append(_tail(self.cluster.pg.log_path, 60))
        parts.append("===== redis (tail) =====")
        parts.append(_tail(self.cluster.redis.log_path, 30))
        path.write_text("\n".join(parts) + "\n")
        return path


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run_soak(
    rounds: int,
    seed: int,
    workdir: Path,
    *,
    max_tx_changes: int = MAX_TX_CHANGES,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """Start a cluster in ``workdir``, run the rounds, stop everything; return the summary."""
    with Soak(workdir, max_tx_changes=max_tx_changes, echo=echo) as soak:
        return soak.run(rounds, seed)
