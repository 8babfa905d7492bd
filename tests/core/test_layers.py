"""The package tree keeps its layers: ``projector/core/`` is pure (no I/O library, no
threads, no clock), and nothing in the library imports the operator commands or the API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "projector" / "core").glob("*.py"))
# psycopg.sql only composes SQL text (queries, limits, board table names): it opens nothing.
_ALLOWED = {"psycopg.sql"}
_FORBIDDEN = ("psycopg", "redis", "socket", "threading", "time", "select", "asyncio")
_CLOCK_READS = ("datetime.now", "datetime.utcnow", "date.today", "time.time", "time.monotonic")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return (
        name not in _ALLOWED
        and name.split(".")[0] in _FORBIDDEN
        and not any(name == allowed or name.startswith(allowed + ".") for allowed in _ALLOWED)
    )


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_modules_import_no_io_threads_or_clock(path: Path) -> None:
    """A module under projector/core/ imports no psycopg (but psycopg.sql), redis, socket,
    threading or time, nothing outside the core, and reads no clock itself."""
    imported = _imports(path)
    bad = sorted(
        n for n in imported if _forbidden(n) and not (n == "psycopg" and "psycopg.sql" in imported)
    )
    assert not bad, f"{path.name} imports {bad}"
    upward = sorted(
        n
        for n in imported
        if n.startswith(("projector.", "api")) and not n.startswith("projector.core")
    )
    assert not upward, f"{path.name} imports {upward} from outside the core"
    text = path.read_text()
    reads = [call for call in _CLOCK_READS if f"{call}(" in text]
    assert not reads, f"{path.name} reads the clock: {reads}"


def test_the_library_imports_no_command_and_no_api() -> None:
    """Modules of projector/ outside commands/ import neither projector.commands nor api."""
    offenders = []
    for path in sorted((ROOT / "projector").rglob("*.py")):
        if "commands" in path.parts or path.name == "__main__.py":
            continue
        for name in _imports(path):
            if name.startswith(("projector.commands", "api.")) or name == "api":
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_the_forbidden_list_catches_what_it_names() -> None:
    """The check itself: an import of time, of psycopg or of redis is caught; psycopg.sql is not."""
    assert _forbidden("time") and _forbidden("psycopg") and _forbidden("redis.client")
    assert not _forbidden("psycopg.sql") and not _forbidden("datetime")
