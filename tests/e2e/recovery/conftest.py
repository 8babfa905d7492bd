"""Fixtures of the recovery tests: a migrated database with its own slot and key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from projector.commands.migrate import migrate

from .support import Deployment


@pytest.fixture
def deployment(pg_dsn: str, redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """A migrated database, an empty Redis, a cluster-unique slot; projectors killed after."""
    tag = uuid.uuid4().hex[:10]
    migrate(pg_dsn, "projector")
    deployment = Deployment(
        pg_dsn=pg_dsn,
        redis_url=redis_url,
        slot=f"recovery_{tag}",
        prefix=f"rc{tag[:4]}:",
        timezone="UTC",
        workdir=tmp_path,
    )
    try:
        yield deployment
    finally:
        deployment.stop_all()
