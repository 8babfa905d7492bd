"""Fixtures of the Redis high-availability suite: a Sentinel topology and a Redis Cluster
of local redis-server processes (scripts/redis_topology.py), fresh for every test.

    sentinel_topology  test  SentinelTopology: a master, one replica, three Sentinels
    cluster_topology   test  ClusterTopology: three masters with a replica each

Fresh per test because failovers and kills change which node is master; starting one
takes about half a second (Sentinel) or two seconds (Cluster). Parametrize either
indirectly with a dict of constructor options, e.g. `{"password": "..."}`. Without a local
redis-server (and redis-cli, for the Cluster) the tests that use them are skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import servers  # scripts/ is on the path (tests/conftest.py)
from redis_topology import ClusterTopology, SentinelTopology


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = getattr(request, "param", {})
    return options


@pytest.fixture
def sentinel_topology(request: pytest.FixtureRequest) -> Iterator[SentinelTopology]:
    """A started master, replica and three Sentinels, for this test alone."""
    if servers.find_redis_server() is None:
        pytest.skip("needs a local redis-server")
    topology = SentinelTopology(**_options(request))
    try:
        topology.start()
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
def cluster_topology(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    """A started three-master Redis Cluster with a replica per master, for this test alone."""
    if servers.find_redis_server() is None or shutil.which("redis-cli") is None:
        pytest.skip("needs a local redis-server and redis-cli")
    topology = ClusterTopology(**_options(request))
    try:
        topology.start()
        yield topology
    finally:
        topology.cleanup()
