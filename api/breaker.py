"""Remember briefly that a store is down, so requests do not each wait for it to fail.

After a failure the breaker is open for ``cooldown`` seconds: callers skip the store. Then a
single caller may probe it (half-open) while the others keep skipping it; the probe's success
closes the breaker, its failure opens it again. One event loop; no locks needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Open/half-open/closed state of one store."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._cooldown = cooldown
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self.trips = 0

    @property
    def is_closed(self) -> bool:
        """True while the store is believed up."""
        return self._open_until is None

    def allow(self) -> bool:
        """Whether to try the store now; a True while open makes the caller the probe."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        """The store answered: close."""
        self._open_until = None
        self._probing = False

    def failed(self) -> None:
        """The store did not answer: open for another cooldown."""
        if self._open_until is None or self._probing:
            self.trips += 1
        self._open_until = self._clock() + self._cooldown
        self._probing = False

    def released(self) -> None:
        """The probe ended without a verdict (the caller gave up): let another caller probe."""
        self._probing = False
