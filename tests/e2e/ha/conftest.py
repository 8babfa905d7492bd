"""Fixtures of the high-availability suite: the recovery tests' deployment (database, slot,
prefix, projector processes) on a Redis Sentinel topology or a Redis Cluster.

    sentinel_deployment  test  (Deployment, SentinelTopology): the projector finds the
                               master through the three Sentinels
    cluster_deployment   test  (Deployment, ClusterTopology): the projector starts from
                               the Cluster's seed nodes; the prefix is a hash tag

`Deployment.redis()` follows the keys: the master the Sentinels name now, or the Cluster
node that serves the prefix's slot now.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.redis_topology import ClusterTopology, SentinelTopology
from projector.commands.migrate import migrate
from projector.settings import cluster_prefix
from tests.e2e.recovery.support import Deployment


def _deployment(pg_dsn: str, redis_url: str, tmp_path: Path, prefix: str) -> Deployment:
    tag = uuid.uuid4().hex[:10]
    migrate(pg_dsn, "projector")
    return Deployment(
        pg_dsn=pg_dsn,
        redis_url=redis_url,
        slot=f"ha_{tag}",
        prefix=prefix,
        timezone="UTC",
        workdir=tmp_path,
    )


def _nodes(addresses: list[tuple[str, int]]) -> str:
    return ",".join(f"{host}:{port}" for host, port in addresses)


@pytest.fixture
def sentinel_deployment(
    pg_dsn: str, sentinel_topology: SentinelTopology, tmp_path: Path
) -> Iterator[tuple[Deployment, SentinelTopology]]:
    topology = sentinel_topology
    deployment = _deployment(pg_dsn, topology.master().url(), tmp_path, "ha:")
    deployment.extra_env.update(
        PROJECTOR_REDIS_SENTINELS=_nodes(topology.sentinels),
        PROJECTOR_REDIS_SENTINEL_MASTER=topology.master_name,
        PROJECTOR_RECONNECT_MAX_DELAY="1",
    )

    def master() -> redis.Redis:
        return topology.master().client()

    deployment.redis_factory = master
    try:
        yield deployment, topology
    finally:
        deployment.stop_all()


@pytest.fixture
def cluster_deployment(
    pg_dsn: str, cluster_topology: ClusterTopology, tmp_path: Path
) -> Iterator[tuple[Deployment, ClusterTopology]]:
    topology = cluster_topology
    prefix = cluster_prefix("ha:")
    seed_host, seed_port = topology.startup_nodes[0]
    deployment = _deployment(pg_dsn, f"redis://{seed_host}:{seed_port}/0", tmp_path, prefix)
    deployment.extra_env.update(
        PROJECTOR_REDIS_CLUSTER_NODES=_nodes(topology.startup_nodes),
        PROJECTOR_RECONNECT_MAX_DELAY="1",
    )

    def owner_of_the_slot() -> redis.Redis:
        return topology.node_for_key(deployment.watermark_key).client()

    deployment.redis_factory = owner_of_the_slot
    try:
        yield deployment, topology
    finally:
        deployment.stop_all()
