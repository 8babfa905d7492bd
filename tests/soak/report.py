"""Soak bookkeeping: what each round did and found, a run's summary, the saved results.

Recoveries are counted from the projectors' JSON logs: every "rebuilding Redis from
PostgreSQL" line by its reason (LSNs and positions blanked, so reasons group), and every
operator replay; boards built again beside the live ones (after partition maintenance, or
once a broken board fits its table again) and boards dropped as unavailable, by board.
Runs accumulate in one JSON file (`bench/results/soak.json`): each run's summary, and
totals over all of them.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.soak.nemesis import FaultRecord

RECOVERY_EVENT = "rebuilding Redis from PostgreSQL"
REPLAY_EVENT = "replay requested by operator"
RECONNECT_EVENT = "connection lost; retrying"
RESUME_EVENT = "resuming a large transaction"
CHUNK_EVENT = "applied a chunk of a large transaction"
BOARDS_BUILT_EVENT = "boards built and live"
BOARDS_DROPPED_EVENT = "boards dropped from Redis"
# Details of a fault record that tell its variants apart (counted as "kind:value").
_VARIANT_DETAILS = ("action", "how", "variant", "snapshot")

# A compare-and-set position: LSN, chunked transaction, rows applied (, fingerprint).
_POSITION = re.compile(r"\b[0-9A-F]{16}:[0-9A-F]{16}:\d+(?::[0-9a-f]+)?\b")
_LSN = re.compile(r"\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b")
_NUMBER = re.compile(r"\b\d+\b")


def recovery_cause(reason: str) -> str:
    """A rebuild reason with its positions blanked out, so that equal causes count together."""
    return _NUMBER.sub("N", _LSN.sub("X/X", _POSITION.sub("P", reason)))


@dataclass(slots=True)
class LogTally:
    """What the projectors' logs say happened."""

    recoveries: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    resumed: int = 0
    boards_built: Counter[str] = field(default_factory=Counter)
    boards_dropped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            name = event.get("event", "")
            if name == RECOVERY_EVENT:
                self.recoveries[recovery_cause(str(event.get("reason", "?")))] += 1
            elif name == REPLAY_EVENT:
                self.recoveries["replay requested by operator"] += 1
            elif name == RECONNECT_EVENT:
                self.reconnects[str(event.get("service", "?"))] += 1
            elif name == CHUNK_EVENT:
                self.chunks += 1
            elif name == RESUME_EVENT:
                self.resumed += 1
            elif name == BOARDS_BUILT_EVENT:
                self.boards_built.update(str(board) for board in event.get("boards", []))
            elif name == BOARDS_DROPPED_EVENT:
                self.boards_dropped.update(str(board) for board in event.get("boards", []))
            if event.get("level") in ("error", "critical"):
                self.errors.append(name)

    def merge(self, other: LogTally) -> None:
        self.recoveries.update(other.recoveries)
        self.reconnects.update(other.reconnects)
        self.chunks += other.chunks
        self.resumed += other.resumed
        self.boards_built.update(other.boards_built)
        self.boards_dropped.update(other.boards_dropped)
        self.errors.extend(other.errors)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a round failed: "drift", "stuck", "slot_lag", "exit" (a projector quit on its
    own) or "harness" (the soak itself broke)."""

    kind: str
    message: str


@dataclass(slots=True)
class RoundResult:
    number: int
    seed: int
    zone: str
    steps: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    tally: LogTally = field(default_factory=LogTally)
    seconds: float = 0.0
    catch_up_seconds: float = 0.0
    log_file: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def drifted(self) -> bool:
        return any(f.kind == "drift" for f in self.failures)

    def as_json(self) -> dict[str, Any]:
        return {
            "round": self.number,
            "seed": self.seed,
            "zone": self.zone,
            "seconds": round(self.seconds, 2),
            "faults": [f.as_json() for f in self.faults],
            "steps": self.steps,
            "failures": [{"kind": f.kind, "message": f.message[:4000]} for f in self.failures],
            "recoveries": dict(self.tally.recoveries),
            "log": self.log_file,
        }


class RunSummary:
    """Totals of one run of the soak, and its progress lines."""

    def __init__(self, seed: int, rounds: int, settings: dict[str, Any]) -> None:
        self.seed = seed
        self.rounds_planned = rounds
        self.settings = settings
        self.started_at = datetime.now(UTC)
        self.results: list[RoundResult] = []
        self.faults: Counter[str] = Counter()
        self.faults_missed: Counter[str] = Counter()
        self.fault_variants: Counter[str] = Counter()
        self.mid_fault_checks: Counter[str] = Counter()
        self.steps: Counter[str] = Counter()
        self.tally = LogTally()
        self.replay_exits: Counter[str] = Counter()
        self.seconds = 0.0

    def add(self, result: RoundResult) -> None:
        self.results.append(result)
        for record in result.faults:
            (self.faults if record.hit else self.faults_missed)[record.kind] += 1
            if record.hit:
                self.fault_variants.update(
                    f"{record.kind}:{record.detail[key]}"
                    for key in _VARIANT_DETAILS
                    if key in record.detail
                )
            if "check" in record.detail:
                self.mid_fault_checks[str(record.detail["check"]).split(":")[0]] += 1
            if record.kind == "replay":
                self.replay_exits[str(record.detail.get("exit", "?"))] += 1
        self.steps.update(result.steps)
        self.tally.merge(result.tally)

    @property
    def failed(self) -> list[RoundResult]:
        return [r for r in self.results if not r.ok]

    @property
    def drifts(self) -> int:
        return sum(1 for r in self.results if r.drifted)

    def progress_line(self, result: RoundResult) -> str:
        width = len(str(self.rounds_planned))
        state = "ok" if result.ok else "/".join(f.kind for f in result.failures).upper()
        faults = ", ".join(f.describe() for f in result.faults) or "none"
        rebuilds = sum(result.tally.recoveries.values())
        line = (
            f"round {result.number:>{width}}/{self.rounds_planned} seed {result.seed:<8} "
            f"{result.seconds:5.1f}s {state:<6} {result.zone:<16} steps {len(result.steps):>2} "
            f"rebuilds {rebuilds}  faults: {faults}"
        )
        if result.ok:
            return line
        details = "\n".join(
            "    " + f"{failure.kind}: {failure.message}".replace("\n", "\n    ")
            for failure in result.failures
        )
        return (
            f"{line}\n{details}\n    log: {result.log_file}\n"
            f"    replay this round alone: make soak SEED={result.seed} ROUNDS=1"
        )

    def as_json(self) -> dict[str, Any]:
        rounds = len(self.results)
        return {
            "seed": self.seed,
            "rounds": rounds,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 1),
            "seconds_per_round": round(self.seconds / rounds, 2) if rounds else None,
            "commit": _git_commit(),
            "settings": self.settings,
            "drifts": self.drifts,
            "failed_rounds": len(self.failed),
            "failures": [r.as_json() for r in self.failed],
            "faults": dict(sorted(self.faults.items())),
            "faults_missed": dict(sorted(self.faults_missed.items())),
            "fault_variants": dict(sorted(self.fault_variants.items())),
            "mid_fault_checks": dict(sorted(self.mid_fault_checks.items())),
            "recoveries": dict(self.tally.recoveries.most_common()),
            "reconnects": dict(sorted(self.tally.reconnects.items())),
            "chunks_applied": self.tally.chunks,
            "large_transactions_resumed": self.tally.resumed,
            "boards_built_beside": dict(sorted(self.tally.boards_built.items())),
            "boards_dropped": dict(sorted(self.tally.boards_dropped.items())),
            "replay_exits": dict(sorted(self.replay_exits.items())),
            "steps": dict(sorted(self.steps.items())),
        }

    def text(self) -> str:
        """The end-of-run report for a human."""
        data = self.as_json()
        lines = [
            f"soak: {data['rounds']} rounds from seed {self.seed} in {data['seconds']} s "
            f"({data['seconds_per_round']} s a round): {data['drifts']} drift(s), "
            f"{data['failed_rounds']} failed round(s)",
            "faults:      " + _counts(self.faults),
        ]
        if self.faults_missed:
            lines.append("missed:      " + _counts(self.faults_missed))
        lines.append("variants:    " + (_counts(self.fault_variants) or "none"))
        lines.append("mid-fault:   " + (_counts(self.mid_fault_checks) or "no check"))
        lines.append("recoveries:  " + (_counts(self.tally.recoveries) or "none"))
        lines.append("reconnects:  " + (_counts(self.tally.reconnects) or "none"))
        lines.append(
            f"chunks:      {self.tally.chunks} applied, "
            f"{self.tally.resumed} large transactions resumed after a restart"
        )
        lines.append(
            "boards:      built beside the live ones "
            + (_counts(self.tally.boards_built) or "none")
            + "; dropped as unavailable "
            + (_counts(self.tally.boards_dropped) or "none")
        )
        for result in self.failed:
            kinds = "/".join(f.kind for f in result.failures)
            faults = ", ".join(f.describe() for f in result.faults)
            lines.append(
                f"FAILED round {result.number} ({kinds}) seed {result.seed}: {faults}"
                f" -> make soak SEED={result.seed} ROUNDS=1"
            )
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counter.most_common())


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def save(path: Path, run: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """Add ``run`` to the runs saved in ``path`` and recompute the totals; return them."""
    try:
        saved = json.loads(path.read_text())
        runs: list[dict[str, Any]] = saved.get("runs", [])
    except (FileNotFoundError, ValueError):
        runs = []
    runs.append(run)
    totals: dict[str, Any] = {
        "runs": len(runs),
        "rounds": sum(r["rounds"] for r in runs),
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "drifts": sum(r["drifts"] for r in runs),
        "failed_rounds": sum(r["failed_rounds"] for r in runs),
        "seeds": [r["seed"] for r in runs],
        "failing_seeds": [f["seed"] for r in runs for f in r["failures"]],
    }
    for key in (
        "faults",
        "faults_missed",
        "fault_variants",
        "mid_fault_checks",
        "recoveries",
        "reconnects",
        "replay_exits",
        "boards_built_beside",
        "boards_dropped",
    ):
        total: Counter[str] = Counter()
        for r in runs:
            total.update(r.get(key, {}))
        totals[key] = dict(total.most_common())
    document = {"benchmark": "soak", "machine": machine, "totals": totals, "runs": runs}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return totals
