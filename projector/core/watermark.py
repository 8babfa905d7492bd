"""The watermark: how far Redis reflects PostgreSQL, and under which configuration.

It is written in the same atomic step as the changes it covers. Its ``position`` is the
compare-and-set token of every write; it names the configuration fingerprint too, so a
writer with another configuration can never extend state built under a different one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from projector.core.lsn import format_lsn, parse_lsn


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far Redis reflects PostgreSQL.

    ``lsn`` is the end LSN of the last transaction applied in full. When a transaction
    too large to apply atomically is part-way through, ``tx_lsn`` is its commit LSN (from
    its Begin message) and ``tx_rows`` the number of its row changes already applied.
    ``timeline`` is PostgreSQL's timeline when Redis was built; ``config`` describes what
    decides a row's contribution (see ``projector.core.fingerprint``) and ``fingerprint`` is
    its digest. ``unavailable`` is a JSON object of the declared boards that cannot be
    projected now (board -> the problem and its fix): Redis holds none of their keys.
    ``window_day`` is the last local day of the rolling windows Redis holds (``YYYY-MM-DD``;
    "" when it holds none: see ``projector.core.windows``).
    """

    lsn: int
    system_id: str
    slot: str
    commit_time: datetime | None
    tx_lsn: int = 0
    tx_rows: int = 0
    timeline: int = 0
    fingerprint: str = ""
    config: str = ""
    unavailable: str = ""
    window_day: str = ""

    @property
    def position(self) -> str:
        """The compare-and-set token stored beside the fields."""
        return f"{self.lsn:016X}:{self.tx_lsn:016X}:{self.tx_rows}:{self.fingerprint}"

    def fields(self, *, now: datetime, full: bool = True) -> dict[str, str]:
        """The hash's fields; without ``full`` only those a batch moves (the cluster, slot,
        timeline and configuration stay as the rebuild or the last swap wrote them)."""
        moved = {
            "lsn": format_lsn(self.lsn),
            "commit_time": self.commit_time.isoformat() if self.commit_time else "",
            "tx_lsn": format_lsn(self.tx_lsn),
            "tx_rows": str(self.tx_rows),
            "updated_at": now.isoformat(),
            "window_day": self.window_day,
        }
        if full:
            moved.update(
                system_id=self.system_id,
                slot=self.slot,
                timeline=str(self.timeline),
                fingerprint=self.fingerprint,
                config=self.config,
                unavailable=self.unavailable,
            )
        return moved

    @classmethod
    def from_fields(cls, raw: dict[str, str]) -> Watermark | None:
        """Parse the watermark hash; None when it is absent or unreadable."""
        try:
            commit_time = raw.get("commit_time") or ""
            return cls(
                lsn=parse_lsn(raw["lsn"]),
                system_id=raw["system_id"],
                slot=raw["slot"],
                commit_time=datetime.fromisoformat(commit_time) if commit_time else None,
                tx_lsn=parse_lsn(raw.get("tx_lsn", "0/0")),
                tx_rows=int(raw.get("tx_rows", "0")),
                timeline=int(raw.get("timeline", "0")),
                fingerprint=raw.get("fingerprint", ""),
                config=raw.get("config", ""),
                unavailable=raw.get("unavailable", ""),
                window_day=raw.get("window_day", ""),
            )
        except (KeyError, ValueError):
            return None

    def unavailable_boards(self) -> dict[str, str]:
        """``unavailable`` as a mapping (empty when there is none, or it is unreadable)."""
        return unavailable_boards(self.unavailable)


def unavailable_boards(text: str) -> dict[str, str]:
    """The watermark's ``unavailable`` field as board -> problem."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def encode_unavailable(problems: Mapping[str, str]) -> str:
    """The ``unavailable`` field for ``problems`` (canonical; "" for none)."""
    if not problems:
        return ""
    return json.dumps(dict(sorted(problems.items())), separators=(",", ":"))
