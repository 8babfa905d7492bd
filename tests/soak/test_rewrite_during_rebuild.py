"""A table rewritten after a rebuild's snapshot but before the rebuild read it (the soak's
seed 6000053): the build notices the new storage and starts again, so Redis stays exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.rewrite_during_rebuild import reproduce


@pytest.mark.parametrize("rewrite", ["add_column", "retype"])
def test_a_rewrite_during_a_rebuild_is_built_again(rewrite: str, tmp_path: Path) -> None:
    """ADD COLUMN with a volatile default, or a retype, committed while the rebuild waits
    after its snapshot: every board and label equals PostgreSQL afterwards."""
    assert reproduce(rewrite, tmp_path) is None
