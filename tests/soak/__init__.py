"""A randomized, Jepsen-style fault soak of the projector (`make soak`, `python -m tests.soak`).

The soak drives the test-server harness and the TCP proxy of ``scripts/``: that folder goes
on the import path here, before any module of the package imports from it (under pytest,
``tests/conftest.py`` does the same; ``python -m tests.soak`` has only this).
"""

import sys
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)
