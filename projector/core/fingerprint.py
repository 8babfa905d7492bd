"""What decides a row's contribution to Redis, recorded with the watermark.

Boards built under one configuration (time zone, retention, key layout, board definitions)
are wrong under another: the buckets, expiries, key names or scores differ.
``ProjectionConfig`` describes that configuration canonically; the watermark stores the
description and its digest, and a projector whose digest differs rebuilds instead of
extending the old state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from projector.core.boards import Board, Table, board_from_description, label_sources
from projector.core.buckets import Retention
from projector.core.errors import ConfigError

# The Redis key layout (projector.core.keys). 1: {prefix}lb:{period}:{bucket};
# 2: {prefix}lb:{board}:{period}:{bucket}. Bump it with the layout.
KEY_LAYOUT = 2
# What one row may put into Redis (projector.core.limits). Absent: no limits (before them);
# 1: members up to 200 code points, labels cleaned and cut to 64. Bump it with the rules.
ROW_RULES = 1


@dataclass(frozen=True, slots=True)
class ProjectionConfig:
    """A canonical description (``text``) of the projection's configuration and its digest."""

    text: str
    fingerprint: str

    @classmethod
    def of(
        cls,
        timezone: str,
        retention: Retention,
        boards: Iterable[Board],
        partitions: Mapping[Table, str] | None = None,
    ) -> ProjectionConfig:
        """The configuration of ``boards`` under ``timezone`` and ``retention``. A board over a
        partitioned table records its partitions (``schema.partition_states``): when they
        change, by maintenance that no row change reports, the board is built again."""
        partitions = partitions or {}
        described = {}
        for board in boards:
            described[board.name] = board.description()
            if board.table in partitions:
                described[board.name]["partitions"] = partitions[board.table]
        description = {
            "key_layout": KEY_LAYOUT,
            "row_rules": ROW_RULES,
            "timezone": timezone,
            "retention": asdict(retention),
            "boards": described,
        }
        return cls._of(description)

    @classmethod
    def _of(cls, description: Mapping[str, Any]) -> ProjectionConfig:
        text = json.dumps(description, sort_keys=True, separators=(",", ":"))
        return cls(text, hashlib.sha256(text.encode()).hexdigest()[:16])

    def without(self, names: Iterable[str]) -> ProjectionConfig:
        """This configuration less the named boards (each other board recorded as it is)."""
        description: dict[str, Any] = json.loads(self.text)
        gone = set(names)
        description["boards"] = {
            name: board for name, board in description["boards"].items() if name not in gone
        }
        return self._of(description)

    def changes_since(self, stored_text: str) -> list[str]:
        """What differs from a stored description, one phrase per setting, for the log."""
        if not stored_text:
            return ["Redis was built by a version that did not record its configuration"]
        try:
            before: dict[str, Any] = json.loads(stored_text)
        except ValueError:
            return ["the recorded configuration is unreadable"]
        now: dict[str, Any] = json.loads(self.text)
        changes = [
            f"{name} {before.get(name)!r} -> {now.get(name)!r}"
            for name in sorted(before.keys() | now.keys())
            if name != "boards" and before.get(name) != now.get(name)
        ]
        old_boards, new_boards = before.get("boards") or {}, now.get("boards") or {}
        for name in sorted(old_boards.keys() | new_boards.keys()):
            if name not in new_boards:
                changes.append(f"board {name!r} removed")
            elif name not in old_boards:
                changes.append(f"board {name!r} added")
            elif old_boards[name] != new_boards[name]:
                changes.append(f"board {name!r} changed")
        return changes


@dataclass(frozen=True, slots=True)
class BoardChange:
    """How to go from the boards Redis holds to ``target``.

    ``drop`` go at once (broken, or no longer declared); ``live`` stream on meanwhile (those
    Redis holds, less ``drop``); ``build`` (added, changed, repaired, or whose partitions
    changed) are built beside them and, once built, replace every ``live`` board not in
    ``keep``. ``target`` is the configuration recorded then.
    """

    live: tuple[Board, ...]
    build: tuple[Board, ...]
    keep: tuple[str, ...]
    drop: tuple[Board, ...] = ()
    target: ProjectionConfig | None = None

    def describe(self) -> str:
        names = {b.name for b in self.live}
        parts = [
            f"board {b.name!r} {'changed' if b.name in names else 'added'}" for b in self.build
        ]
        new_names = set(self.keep) | {b.name for b in self.build}
        parts += [f"board {name!r} removed" for name in sorted(names - new_names)]
        parts += [f"board {b.name!r} dropped" for b in self.drop]
        return "; ".join(parts)


def recorded_boards(stored_text: str) -> dict[str, Board] | None:
    """The boards a stored configuration describes, by name (None when unreadable)."""
    try:
        before: dict[str, Any] = json.loads(stored_text)
        return {
            name: board_from_description(
                {k: v for k, v in d.items() if k != "partitions"}  # not part of a definition
            )
            for name, d in (before.get("boards") or {}).items()
        }
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError):
        return None  # unreadable, or a board this version cannot parse


def board_change(
    stored_text: str,
    current: ProjectionConfig,
    boards: tuple[Board, ...],
    broken: Iterable[str] = (),
) -> BoardChange | None:
    """When only board definitions (or partitions) differ (same zone, retention, layout and
    label sources), what to drop now and build while the rest streams on; None when a full
    rebuild is needed instead. ``current`` describes ``boards``, the boards that can be
    projected now; ``broken`` names recorded boards that cannot be any more, as recorded."""
    old = recorded_boards(stored_text)
    if old is None:
        return None
    if not same_layout(stored_text, current):
        return None
    before: dict[str, Any] = json.loads(stored_text)
    now: dict[str, Any] = json.loads(current.text)
    old_descriptions = before.get("boards") or {}
    new_descriptions = now["boards"]
    gone = set(broken) | (set(old) - set(new_descriptions))
    drop = tuple(board for name, board in old.items() if name in gone)
    live = tuple(board for name, board in old.items() if name not in gone)
    if set(label_sources(boards)) - set(label_sources(old.values())):
        return None  # labels are rebuilt whole: a new label source needs a full rebuild
    # A dropped board that can be projected again is built from a snapshot, like a new one.
    build = tuple(
        b
        for b in boards
        if b.name in gone or old_descriptions.get(b.name) != new_descriptions[b.name]
    )
    keep = tuple(b.name for b in boards if b not in build)
    return BoardChange(live, build, keep, drop, current)


def board_states(
    stored_text: str,
    unavailable: Mapping[str, str],
    current: ProjectionConfig,
    problems: Mapping[str, str],
) -> dict[str, dict[str, str]]:
    """Each declared board's state, for ``status``: ``live``; ``unavailable`` (its problem,
    as the projector recorded it, or as the live schema says before the projector noticed);
    ``building`` (added, changed or fixed: built beside the others) or ``rebuilding`` (its
    partitions changed since it was built: until it is built again it may differ from
    PostgreSQL). ``current`` describes the boards the live schema fits."""
    try:
        recorded: dict[str, Any] = json.loads(stored_text).get("boards") or {}
    except (ValueError, AttributeError):
        recorded = {}
    wanted: dict[str, Any] = json.loads(current.text)["boards"]
    states: dict[str, dict[str, str]] = {}
    for name in list(wanted) + [n for n in problems if n not in wanted]:
        if name in unavailable or name in problems:
            states[name] = {
                "state": "unavailable",
                "detail": unavailable.get(name) or problems[name],
            }
            continue
        have, want = recorded.get(name), wanted[name]
        if have == want:
            states[name] = {"state": "live", "detail": ""}
        elif have is not None and _without_partitions(have) == _without_partitions(want):
            states[name] = {
                "state": "rebuilding",
                "detail": f"partitions of {want['table']} were attached, detached, dropped, "
                "truncated or rewritten since it was built: it is built again, and may differ "
                "from PostgreSQL until then",
            }
        else:
            states[name] = {
                "state": "building",
                "detail": "added, changed or fixed: built beside the other boards",
            }
    return states


def _without_partitions(description: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in description.items() if k != "partitions"}


def same_layout(stored_text: str, current: ProjectionConfig) -> bool:
    """Whether everything but the boards (zone, retention, key layout) is as recorded: else
    only a full rebuild makes Redis match."""
    try:
        before: dict[str, Any] = json.loads(stored_text)
    except ValueError:
        return False
    now: dict[str, Any] = json.loads(current.text)
    return {k: v for k, v in before.items() if k != "boards"} == {
        k: v for k, v in now.items() if k != "boards"
    }
