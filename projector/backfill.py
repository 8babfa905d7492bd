"""Build added or changed boards beside the live ones, while the stream goes on.

A temporary slot's snapshot (consistent point C) is loaded into base keys by a thread;
meanwhile the stream keeps the live boards current and, for transactions from C on, adds
the new boards' deltas to delta keys (kept as they are, even below zero). Both only add, so
their order does not matter. Once loaded, one atomic batch merges base and delta keys into
the boards, drops replaced or removed boards, and records the new configuration with the
watermark. A crash before that leaves the old configuration recorded: the next start
builds again.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import structlog

from projector.core.buckets import Period, expires_at
from projector.core.errors import ProjectorError, RebuildRequired
from projector.core.fingerprint import BoardChange
from projector.core.keys import Keys
from projector.core.projection import BuildSwap
from projector.rebuild import (
    RebuildProgress,
    build_boards,
    discard_stale_builds,
    mark_started,
    reporter,
    snapshot_connections,
)
from projector.settings import Settings
from projector.sink import RedisSink

log = structlog.get_logger(__name__)


class BuildRestart(ProjectorError):
    """The boards being built must be built again (from a new snapshot)."""


class Backfill:
    """One build of ``change.build`` beside the live boards (see the module docstring)."""

    def __init__(self, settings: Settings, change: BoardChange, sink: RedisSink) -> None:
        self.settings = settings
        self.change = change
        self._sink = sink
        self._build = settings.keys.build(uuid.uuid4().hex[:12])
        self._base = f"{self._build}b:"
        # The stream's deltas for the boards being built.
        self.delta_keys = Keys(f"{self._build}d:")
        self._stop = threading.Event()
        self._done = threading.Event()
        self._loaded: dict[str, int | None] = {}
        self._counts: dict[str, int] = {}
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.consistent_point = 0

    def start(self) -> int:
        """Take the snapshot (the stream waits meanwhile), load it in a thread; return its
        consistent point: the stream adds deltas of transactions from there on."""
        settings = self.settings
        discard_stale_builds(self._sink)
        state = RebuildProgress()
        slot = f"{settings.slot[:40]}_b{uuid.uuid4().hex[:8]}"
        conns, _ = snapshot_connections(
            settings, state, settings.rebuild_parallelism, temporary_slot=slot
        )
        assert state.lsn is not None
        self.consistent_point = state.lsn
        mark_started(self._sink, self._build)
        log.info(
            "building boards beside the live ones",
            boards=[b.name for b in self.change.build],
            snapshot=f"{state.lsn >> 32:X}/{state.lsn & 0xFFFFFFFF:X}",
        )
        report = reporter(self._sink, None, state, None, self._stop)
        self._thread = threading.Thread(
            target=self._load, args=(conns, state, report), name="backfill", daemon=True
        )
        self._thread.start()
        return state.lsn

    def _load(
        self,
        conns: list[psycopg.Connection[tuple[object, ...]]],
        state: RebuildProgress,
        report: Any,
    ) -> None:
        try:
            built = build_boards(
                self.settings,
                self.change.build,
                self._sink,
                conns,
                self._base,
                state,
                report,
                with_labels=False,
            )
            self._loaded = dict(built.boards)
            self._counts = built.counts
        except BaseException as exc:  # reported to the stream's thread by ``ready``
            self._error = exc
        finally:
            for conn in conns:
                conn.close()
            self._done.set()

    def ready(self) -> bool:
        """True once the snapshot is loaded; raises what the loading thread raised."""
        if not self._done.is_set():
            return False
        if isinstance(self._error, RebuildRequired):  # e.g. a table rewritten meanwhile
            raise BuildRestart(str(self._error)) from self._error
        if self._error is not None:
            raise ProjectorError(f"building boards failed: {self._error}") from self._error
        return True

    def swap(self, built_keys: set[str]) -> BuildSwap:
        """The swap of the batch that makes the built boards live (apply_batch.lua)."""
        keys = self.settings.keys
        delta_prefix = self.delta_keys.prefix
        suffixes = set(self._loaded) | {k.removeprefix(delta_prefix) for k in built_keys}
        merges = []
        for suffix in sorted(suffixes):
            expires = self._loaded.get(suffix) if suffix in self._loaded else self._expiry(suffix)
            merges.append(
                (self._base + suffix, delta_prefix + suffix, keys.prefix + suffix, expires)
            )
        keep = set(self.change.keep)
        return BuildSwap(
            started=f"{self._build}started",
            unlink=tuple(keys.board_prefix(b.name) for b in self.change.live if b.name not in keep),
            expect=tuple((self._base + s, self._counts[s]) for s in sorted(self._loaded)),
            merge=tuple(merges),
        )

    def _expiry(self, suffix: str) -> int | None:
        _, _board, period, bucket = suffix.split(":", 3)
        settings = self.settings
        return expires_at(Period(period), bucket, settings.zone, settings.retention)

    def close(self) -> None:
        """Stop loading (if still loading); its keys go with the next build or expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
