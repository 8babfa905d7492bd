"""The docs stay true to the tree: the generated configuration page, the README's layout
table and the links between the pages."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Directories whose modules (.py except __init__/__main__, and .lua) the layout table must name.
LAYOUT_DIRS = ("projector", "projector/core", "projector/commands", "api")


def _config_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_doc", ROOT / "scripts/config_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_is_generated_from_settings() -> None:
    """docs/configuration.md is exactly what scripts/config_doc.py generates from Settings."""
    generated = _config_doc().render()
    written = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    assert written == generated, (
        "docs/configuration.md differs from Settings: run python scripts/config_doc.py --write"
    )


def _layout_rows() -> list[list[str]]:
    """The paths of each row of the README's layout table (its first cell, resolved)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split(" | ", 1)[0]
        paths: list[str] = []
        folder = ""
        for name in re.findall(r"`([^`]+)`", cell):
            if "/" in name.rstrip("/"):
                path = name
            elif name.endswith("/") and not paths:
                path = name  # a top-level folder: `bench/`
            else:
                path = folder + name
            folder = path if path.endswith("/") else path.rsplit("/", 1)[0] + "/"
            paths.append(path)
        rows.append(paths)
    return rows


def test_layout_table_names_only_paths_that_exist() -> None:
    """Every path the README's layout table names exists in the tree."""
    missing = [path for row in _layout_rows() for path in row if not (ROOT / path).exists()]
    assert not missing, f"the README's layout table names paths that do not exist: {missing}"


def test_layout_table_names_every_module() -> None:
    """Every module of projector/, projector/core/, projector/commands/ and api/ has a row."""
    named = {path for row in _layout_rows() for path in row}
    modules = [
        f"{folder}/{file.name}"
        for folder in LAYOUT_DIRS
        for file in sorted((ROOT / folder).iterdir())
        if file.suffix in (".py", ".lua") and file.stem not in ("__init__", "__main__")
    ]
    unnamed = [module for module in modules if module not in named]
    assert not unnamed, f"modules without a row in the README's layout table: {unnamed}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, - for spaces."""
    anchors = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_links_between_pages_resolve() -> None:
    """Every relative link in README.md and docs/*.md names a file and heading that exist."""
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, f"broken links: {broken}"
