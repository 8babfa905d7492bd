"""SIGTERM and SIGINT, taken by a thread of their own.

A Python signal handler runs in the main thread between any two bytecodes, even inside a
log call that holds the output's (non-reentrant) lock: a handler that logs, or sets an
``Event``, can deadlock the very thread it interrupts, and the process then ignores every
later signal. So the signals are blocked and a thread waits for them with ``sigwait``; it
logs and sets the event like any other thread.
"""

from __future__ import annotations

import signal
import threading

import structlog

log = structlog.get_logger()

EXIT_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def stop_on_signals(message: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT, each logged with ``message``.

    Call it before starting any other thread: a thread inherits the signal mask only from
    the thread that starts it, and one started earlier would still take the signals. A
    child process would inherit the blocked signals too: the commands using this start none.
    """
    stop = threading.Event()
    signal.pthread_sigmask(signal.SIG_BLOCK, EXIT_SIGNALS)

    def take() -> None:
        while True:
            signum = signal.sigwait(EXIT_SIGNALS)
            log.info(message, signal=signal.Signals(signum).name)
            stop.set()

    threading.Thread(target=take, name="exit-signals", daemon=True).start()
    return stop
