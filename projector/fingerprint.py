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
