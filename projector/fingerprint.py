"""What decides a row's contribution to Redis, recorded with the watermark.

Boards built under one configuration (time zone, retention, key layout) are wrong under
another: the buckets, expiries or key names differ. ``ProjectionConfig`` describes that
configuration canonically; the watermark stores the description and its digest, and a
projector whose digest differs rebuilds instead of extending the old state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from projector.settings import Settings

# The Redis key layout of the boards: {prefix}lb:{period}:{bucket}. Bump it with the layout.
KEY_LAYOUT = 1


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
        return [
            f"{name} {before.get(name)!r} -> {now.get(name)!r}"
            for name in sorted(before.keys() | now.keys())
            if before.get(name) != now.get(name)
        ]
