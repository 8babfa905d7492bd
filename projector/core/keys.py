"""Every Redis key name the projector and the API use, derived from the prefix and the boards.

Boards are sorted sets ``{prefix}lb:{board}:{period}:{bucket}``; labels are hashes named for
their table (``{prefix}users``); the watermark, the registry of board keys, the heartbeat,
the replay request and progress, and the build keys of a rebuild sit beside them. No other
module spells a key out.
"""

from __future__ import annotations

from dataclasses import dataclass

from projector.core.boards import Labels, label_key_name
from projector.core.buckets import Period


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names under one prefix."""

    prefix: str

    @property
    def watermark(self) -> str:
        return f"{self.prefix}watermark"

    @property
    def registry(self) -> str:
        """Sorted set of every board key, scored by its expiry (``inf``: never)."""
        return f"{self.prefix}boards"

    @property
    def heartbeat(self) -> str:
        return f"{self.prefix}projector"

    @property
    def owner(self) -> str:
        """The fencing token of the process that drives the slot (``RedisSink.claim``)."""
        return f"{self.prefix}owner"

    @property
    def standbys(self) -> str:
        """Hash of the projector processes standing by: ``host:pid`` -> last seen (unix s)."""
        return f"{self.prefix}standbys"

    @property
    def replay_request(self) -> str:
        return f"{self.prefix}replay:request"

    @property
    def replay_progress(self) -> str:
        return f"{self.prefix}replay:progress"

    @property
    def events(self) -> str:
        """The channel on which each new watermark LSN is published (swap_boards.lua spells
        it from the prefix too)."""
        return f"{self.prefix}events"

    @property
    def builds(self) -> str:
        """SCAN pattern of every rebuild's keys."""
        return f"{self.prefix}rebuild:*"

    def build(self, build_id: str) -> str:
        """The prefix under which one rebuild writes its keys before the swap."""
        return f"{self.prefix}rebuild:{build_id}:"

    def board(self, board: str, period: Period | str, bucket: str) -> str:
        """One board's key, e.g. ``pomo:lb:pomodoros:week:2026-W48``."""
        return f"{self.prefix}lb:{board}:{period}:{bucket}"

    def board_prefix(self, board: str) -> str:
        """What every key of one board starts with."""
        return f"{self.prefix}lb:{board}:"

    def labels(self, labels: Labels) -> str:
        """The hash of one label source: member -> label."""
        return f"{self.prefix}{label_key_name(labels.table)}"

    @property
    def no_labels(self) -> str:
        """A hash never written: the labels of a board without labels."""
        return f"{self.prefix}labels:none"

    def without_prefix(self, key: str) -> str:
        return key.removeprefix(self.prefix)
