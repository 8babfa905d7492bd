"""Shared pytest fixtures: first the test-server harness, then the project's own fixtures."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

# =============================================================================
# Test servers (harness/servers.py). Keep this section first.
#
#   postgres_server  session  servers.PostgresServer, wal_level=logical
#   redis_server     session  servers.RedisServer
#   pg_dsn           test     DSN of a fresh database, dropped afterwards with its
#                             sessions and replication slots; settings changed with
#                             postgres_server.set_config() are reset afterwards
#   redis_url        test     redis://... of a Redis flushed before the test
#   sentinel_topology test    a master, one replica and three Sentinels, fresh
#   cluster_topology test     a three-master Redis Cluster with a replica each, fresh
#
# The topologies (harness/redis_topology.py) are local redis-server processes, fresh per
# test because failovers and kills change which node is master (half a second to start a
# Sentinel one, two seconds a Cluster). Parametrize either indirectly with a dict of
# constructor options, e.g. `{"password": "..."}`.
# Servers come from PROJECTOR_TEST_PG_DSN / PROJECTOR_TEST_REDIS_URL, else local
# binaries, else testcontainers. Only local servers can stop(), restart() or kill9();
# elsewhere these raise servers.ServerControlUnsupported, which skips the test.
# A test that stops or kills a server need not start it again: the fixtures do.
# This section defines the hooks pytest_runtest_setup and pytest_runtest_call: extend
# them rather than defining them again below (a second definition would replace them).
# =============================================================================
from harness import servers
from harness.redis_topology import ClusterTopology, SentinelTopology


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    """One PostgreSQL for the whole session."""
    server = servers.postgres_for_tests()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    """One Redis for the whole session."""
    server = servers.redis_for_tests()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(
    postgres_server: servers.PostgresServer, request: pytest.FixtureRequest
) -> Iterator[str]:
    """DSN of a database made for this test alone."""
    postgres_server.start()
    name = servers.unique_database_name(request.node.name)
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.start()
    postgres_server.reset_config()
    postgres_server.drop_database(name)


@pytest.fixture
def redis_url(redis_server: servers.RedisServer) -> str:
    """URL of the session's Redis, emptied for this test."""
    redis_server.start()
    redis_server.flushall()
    return redis_server.url()


def _topology_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = getattr(request, "param", {})
    return options


@pytest.fixture
def sentinel_topology(request: pytest.FixtureRequest) -> Iterator[SentinelTopology]:
    """A started master, replica and three Sentinels, for this test alone."""
    topology = SentinelTopology(**_topology_options(request))
    try:
        topology.start()
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
def cluster_topology(request: pytest.FixtureRequest) -> Iterator[ClusterTopology]:
    """A started three-master Redis Cluster with a replica per master, for this test alone."""
    topology = ClusterTopology(**_topology_options(request))
    try:
        topology.start()
        yield topology
    finally:
        topology.cleanup()


def _skip_without_process_control() -> Generator[None, None, None]:
    try:
        yield
    except servers.ServerControlUnsupported as exc:
        pytest.skip(f"needs a local server process: {exc}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _skip_without_process_control())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    return (yield from _skip_without_process_control())


# ============================ end of test servers ============================
