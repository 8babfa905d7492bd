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
from dataclasses import dataclass
from typing import Any

from projector.boards import Board, board_from_description, label_sources
from projector.settings import Settings

# The Redis key layout (projector.keys). 1: {prefix}lb:{period}:{bucket};
# 2: {prefix}lb:{board}:{period}:{bucket}. Bump it with the layout.
KEY_LAYOUT = 2


@dataclass(frozen=True, slots=True)
class ProjectionConfig:
    """A canonical description (``text``) of the projection's configuration and its digest."""

    text: str
    fingerprint: str

    @classmethod
    def of(cls, settings: Settings) -> ProjectionConfig:
        description = {
            "key_layout": KEY_LAYOUT,
            "timezone": settings.timezone,
            "retention": {
                "day_days": settings.retention_day_days,
                "week_weeks": settings.retention_week_weeks,
                "month_months": settings.retention_month_months,
                "year_years": settings.retention_year_years,
            },
            "boards": {board.name: board.description() for board in settings.boards},
        }
        text = json.dumps(description, sort_keys=True, separators=(",", ":"))
        return cls(text, hashlib.sha256(text.encode()).hexdigest()[:16])

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
    """Boards Redis was built with (``live``), and those to build beside them (``build``):
    added or changed ones. Once built they replace every ``live`` board not in ``keep``."""

    live: tuple[Board, ...]
    build: tuple[Board, ...]
    keep: tuple[str, ...]

    def describe(self) -> str:
        names = {b.name for b in self.live}
        parts = [
            f"board {b.name!r} {'changed' if b.name in names else 'added'}" for b in self.build
        ]
        new_names = set(self.keep) | {b.name for b in self.build}
        parts += [f"board {name!r} removed" for name in sorted(names - new_names)]
        return "; ".join(parts)


def board_change(
    stored_text: str, current: ProjectionConfig, boards: tuple[Board, ...]
) -> BoardChange | None:
    """When only board definitions differ (same zone, retention, layout and label sources),
    what to build while the rest streams on; None when a full rebuild is needed instead."""
    try:
        before: dict[str, Any] = json.loads(stored_text)
        old = tuple(board_from_description(d) for d in (before.get("boards") or {}).values())
    except (ValueError, KeyError, TypeError):
        return None
    now: dict[str, Any] = json.loads(current.text)
    if {k: v for k, v in before.items() if k != "boards"} != {
        k: v for k, v in now.items() if k != "boards"
    }:
        return None
    if set(label_sources(old)) != set(label_sources(boards)):
        return None  # labels are rebuilt whole: a new label source needs a full rebuild
    old_by_name = {b.name: b for b in old}
    build = tuple(b for b in boards if old_by_name.get(b.name) != b)
    keep = tuple(b.name for b in boards if old_by_name.get(b.name) == b)
    return BoardChange(old, build, keep)
