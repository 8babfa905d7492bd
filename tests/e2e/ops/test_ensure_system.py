"""scripts/ensure_system.sh: what `make run`, `make test` and .ci/run install when missing.

Run with a PATH of our own: real tools linked in, the server binaries left out, and a fake
apt-get that records its arguments and "installs" by linking the real binaries in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts/ensure_system.sh"
TOOLS = ("bash", "sed", "id", "python3", "make", "cat", "useradd", "chromium")


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory every user may enter (pytest's own is private to root), with the script."""
    path = Path(tempfile.mkdtemp(prefix="ensure-system-", dir="/tmp"))
    path.chmod(0o755)
    shutil.copy(SCRIPT, path / "ensure_system.sh")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _bin(tmp_path: Path, *extra: str) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    for tool in (*TOOLS, *extra):
        # The system's tools, not this test run's virtualenv.
        found = shutil.which(tool, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        if found and not (directory / tool).exists():
            (directory / tool).symlink_to(found)
    return directory


def _run(
    directory: Path, purpose: str, *, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(directory), "PROJECTOR_PG_BINDIR": "", "HOME": "/tmp"}
    return subprocess.run(
        ["bash", str(directory.parent / "ensure_system.sh"), purpose],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        user=user,
    )


def test_nothing_missing_is_silent(tmp_path: Path) -> None:
    """With every tool present the script says nothing and succeeds."""
    directory = _bin(tmp_path, "redis-server", "promtool", "initdb", "postgres")
    result = _run(directory, "test")
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_not_root_prints_the_one_command_and_fails(tmp_path: Path) -> None:
    """Without root, missing packages give one line with the exact apt-get command, exit 1."""
    directory = _bin(tmp_path, "initdb", "postgres")
    result = _run(directory, "test", user="nobody")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(
        "run: sudo apt-get update && sudo apt-get install -y --no-install-recommends "
        "redis-server prometheus"
    )
    run = _run(directory, "run", user="nobody")  # `make run` needs no promtool
    assert run.returncode == 1 and run.stderr.strip().endswith(
        "install -y --no-install-recommends redis-server"
    )
    bench = _run(directory, "bench", user="nobody")  # `make bench` needs wrk
    assert bench.returncode == 1 and bench.stderr.strip().endswith(
        "install -y --no-install-recommends redis-server wrk"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt-get path runs as root only")
def test_root_installs_what_is_missing_with_apt_get(tmp_path: Path) -> None:
    """As root the missing packages go to apt-get install, and then the tools are there."""
    directory = _bin(tmp_path, "initdb", "postgres")
    log = tmp_path / "apt.log"
    redis_server = shutil.which("redis-server")
    promtool = shutil.which("promtool") or "/bin/true"
    fake = directory / "apt-get"
    fake.write_text(
        "#!/bin/bash\n"
        f'echo "$@" >> {log}\n'
        f'[[ "$1" == install ]] && /bin/ln -sf {redis_server} {directory}/redis-server'
        f" && /bin/ln -sf {promtool} {directory}/promtool\n"
        "exit 0\n"
    )
    fake.chmod(0o755)
    result = _run(directory, "test")
    assert result.returncode == 0, result.stderr
    assert "installing redis-server prometheus" in result.stderr
    assert log.read_text().splitlines() == [
        "install -y --no-install-recommends redis-server prometheus"
    ]
    assert _run(directory, "test").stderr == ""  # second run: nothing to do


def test_ci_and_make_use_the_script() -> None:
    """.ci/run installs through the script and ends with exactly `make test`; make's run and
    test targets call it first."""
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()
    assert "bash scripts/ensure_system.sh test" in ci and ci[-1] == "exec make test"
    makefile = (ROOT / "Makefile").read_text()
    assert "test: system-test $(VENV)/.installed" in makefile
    assert "run: system-run $(VENV)/.installed" in makefile
    assert "make test" in (ROOT / "README.md").read_text()
