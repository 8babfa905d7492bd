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
