"""`projector run` whose wall clock is driven by a test: the real clock plus the offset in
seconds written in the file ``PROJECTOR_TEST_CLOCK_FILE`` (read again at most every 50 ms).
Run as ``python -m tests.e2e.projector.clocked``; SIGTERM/SIGINT stop it like `run`."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from projector.logs import configure_logging
from projector.settings import load_settings
from projector.signals import stop_on_signals
from projector.worker import Worker


class DrivenClock:
    """Unix time shifted by the offset a test writes into a file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0.0
        self._read_at = -1.0

    def __call__(self) -> float:
        now = time.monotonic()
        if now - self._read_at >= 0.05:
            self._read_at = now
            with contextlib.suppress(OSError, ValueError):  # being rewritten: keep the last
                self._offset = float(self._path.read_text() or 0)
        return time.time() + self._offset


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.redact)
    stop = stop_on_signals("stopping: finishing the batch")
    clock = DrivenClock(Path(os.environ["PROJECTOR_TEST_CLOCK_FILE"]))
    Worker(settings, stop, clock=clock).run_forever()


if __name__ == "__main__":
    main()
