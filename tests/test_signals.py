"""SIGTERM and SIGINT stop a busy process, whatever its main thread is doing."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# A main thread that logs without pause: a signal almost always lands inside a log call.
# A Python handler that logs there deadlocks on the output's lock (14 of 20 runs hung).
_BUSY = """
import structlog
from projector.logs import configure_logging
from projector.signals import stop_on_signals

configure_logging()
stop = stop_on_signals("stopping")
print("ready", flush=True)
log = structlog.get_logger()
while not stop.is_set():
    log.info("busy", payload="x" * 200)
log.info("done")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_log_call_stops_the_process(signum: signal.Signals) -> None:
    for _attempt in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _BUSY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            proc.send_signal(signum)
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{signum.name} did not stop a process busy logging") from None
        assert proc.returncode == 0, err[-2000:]
        lines = err.splitlines()
        assert any("stopping" in line and signum.name in line for line in lines[-5:]), lines[-5:]
        assert "done" in lines[-1], lines[-1]
