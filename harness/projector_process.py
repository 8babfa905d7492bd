"""`projector run` as a child process of a test, its output in a log file.

`ProjectorProcess` starts the projector with the environment it is given (the caller builds
the settings), and lets a test stop it as an operator would (SIGTERM), kill it (`kill -9`),
pause it (SIGSTOP), start it again, and read what it logged: plain text, or the JSON lines
of `PROJECTOR_LOG_FORMAT=json`. The process dies with the test process that started it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.servers import _death_signal_setter

#: ``projector run`` with the interpreter running the caller.
RUN = (sys.executable, "-m", "projector", "run")


class ProjectorProcess:
    """``projector run`` (or ``command``) as a child process whose output goes to ``log_path``.

    What it logged is read from where the log ended when this object was made, so several
    processes may share one log file; each start writes a ``===== start N =====`` line.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        command: Sequence[str] = RUN,
        cwd: Path | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.command = list(command)
        self.cwd = cwd
        self.log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProjectorProcess:
        assert self._proc is None or self._proc.poll() is not None, "already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_death_signal_setter(signal.SIGKILL),
            )
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "the projector was not started"
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------------ what it logged

    def log_text(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def events(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines written so far."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def wait_event(
        self,
        event: str,
        *,
        after: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """The first log line named ``event`` (skipping the first ``after`` such lines)."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [e for e in self.events() if e.get("event") == event and where(e)]
            if len(matching) > after:
                return matching[after]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"projector exited ({self.proc.returncode}) before logging {event!r}:\n"
                    + self.log_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"projector did not log {event!r} within {timeout}s:\n"
                    + self.log_text()[-4000:]
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ its life

    def check(self) -> None:
        """Raise (with the log's tail) when the process exited."""
        if self._proc is not None and self._proc.poll() is not None:
            raise AssertionError(
                f"projector exited with {self._proc.returncode}:\n{self.log_tail()}"
            )

    def assert_running(self) -> None:
        assert self.proc.poll() is None, (
            f"projector exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (after SIGCONT, should it be paused), as an operator would; the exit status."""
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"projector ignored SIGTERM for {timeout}s:\n{self.log_text()[-4000:]}"
            ) from None

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        """Kill the process if it still runs (a test's cleanup)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
