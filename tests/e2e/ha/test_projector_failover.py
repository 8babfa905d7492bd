"""The projector through Redis failovers, against real Sentinel and Cluster topologies.

The oracle workload (inserts, moves, deletes, renames in concurrent transactions) runs
while the master is failed over (SENTINEL FAILOVER, CLUSTER FAILOVER) or killed -9.
Afterwards every board equals its SQL recomputation: nothing lost, nothing counted twice.

With PROJECTOR_REDIS_MIN_REPLICAS=1 a position is confirmed to PostgreSQL only once a
replica holds it, so no failover can lose an acknowledged position: no rebuild. With 0, a
failover to a replica that missed acknowledged work leaves Redis behind the slot, and the
projector rebuilds.
"""

from __future__ import annotations

import time

import pytest

from harness.redis_topology import ClusterTopology, RedisNode, SentinelTopology
from projector.core.lsn import parse_lsn
from tests.e2e.recovery.support import Deployment, ProjectorProcess, writing

pytestmark = pytest.mark.timeout(180)

REBUILDING = "rebuilding Redis from PostgreSQL"


def _streaming(deployment: Deployment, **env: str) -> ProjectorProcess:
    process = deployment.start(**env)
    process.wait_event("streaming")
    return process


def _finish(deployment: Deployment, process: ProjectorProcess) -> None:
    deployment.wait_caught_up(timeout=90)
    deployment.assert_matches_postgres()
    process.assert_running()


def _replica(topology: SentinelTopology) -> RedisNode:
    (address,) = topology.replicas()
    return topology.node_at(address)


def _slot_confirmed(deployment: Deployment) -> int:
    row = deployment.slot_row()
    assert row is not None and row["confirmed_flush_lsn"] is not None
    return parse_lsn(str(row["confirmed_flush_lsn"]))


def _redis_lost(event: dict[str, object]) -> bool:
    return event.get("event") == "connection lost; retrying" and event.get("service") == "redis"


def _followed_the_failover(deployment: Deployment, process: ProjectorProcess) -> None:
    """Exact in the end; the projector followed the new master without a restart (it lost
    its Redis connection and went on) and lost no acknowledged work (no rebuild but the
    bootstrap)."""
    _finish(deployment, process)
    assert any(_redis_lost(e) for e in process.events()), process.log_text()[-3000:]
    assert process.count(REBUILDING) == 1, process.log_text()[-3000:]


@pytest.mark.parametrize("fault", ["sentinel-failover", "kill-9-master"])
def test_the_oracle_workload_through_a_sentinel_failover(
    sentinel_deployment: tuple[Deployment, SentinelTopology], fault: str
) -> None:
    deployment, topology = sentinel_deployment
    process = _streaming(deployment, PROJECTOR_REDIS_MIN_REPLICAS="1")
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(100)
        old = topology.master()
        if fault == "sentinel-failover":
            new = topology.failover()
        else:
            topology.kill9_master()
            new = topology.wait_for_new_master(old)
            # Back as a replica of the new master: one replica again, as MIN_REPLICAS asks.
            topology.restart_node(old)
        assert new is not old
        writer.wait_commits(100)
    _followed_the_failover(deployment, process)


def _cut_off_replica(deployment: Deployment, topology: SentinelTopology, replica: RedisNode) -> int:
    """Freeze the replica (SIGSTOP) and have the master drop its link at once: writes from
    then on never reach it. Returns the master's watermark LSN at that moment (the most the
    replica can hold). First the replica catches up (a full resync after the bootstrap's
    burst can still be loading): what it holds then is what the failover keeps."""
    topology.wait_replicas_in_sync()
    topology.pause(replica)
    topology.master().execute("CLIENT", "KILL", "TYPE", "replica")
    return _watermark_lsn(deployment)


def _watermark_lsn(deployment: Deployment) -> int:
    with deployment.redis() as client:
        return parse_lsn((client.hget(deployment.watermark_key, "lsn") or b"0/0").decode())


def test_with_min_replicas_a_failover_to_a_lagging_replica_loses_no_acknowledged_position(
    sentinel_deployment: tuple[Deployment, SentinelTopology],
) -> None:
    """The replica is cut off while changes keep coming: WAIT cannot confirm, so nothing
    more is confirmed to PostgreSQL. The master is killed; the promoted replica may miss
    batches applied since, but holds every confirmed one: the projector replays from there,
    without a rebuild."""
    deployment, topology = sentinel_deployment
    process = _streaming(
        deployment, PROJECTOR_REDIS_MIN_REPLICAS="1", PROJECTOR_REDIS_REPLICA_TIMEOUT="0.5"
    )
    replica = _replica(topology)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
        try:
            at_most_replicated = _cut_off_replica(deployment, topology, replica)
            writer.wait_commits(100)
            process.wait_event(
                "connection lost; retrying", where=lambda e: "replicas" in str(e.get("error"))
            )
            time.sleep(1.0)  # the writer goes on; PostgreSQL asks for feedback meanwhile
            # Whatever the master applied since, nothing the replica lacks is confirmed.
            held = _slot_confirmed(deployment)
            assert held <= at_most_replicated
            old = topology.kill9_master()
        finally:
            topology.resume(replica)
        topology.wait_for_new_master(old)
        assert _watermark_lsn(deployment) >= held
        topology.restart_node(old)
        writer.wait_commits(50)
    _finish(deployment, process)
    assert process.count(REBUILDING) == 1, process.log_text()[-3000:]  # the bootstrap only


def test_without_min_replicas_a_failover_that_lost_acknowledged_work_rebuilds(
    sentinel_deployment: tuple[Deployment, SentinelTopology],
) -> None:
    """N=0: positions the cut-off replica never received are confirmed to PostgreSQL; after
    the failover Redis is behind the slot, and the projector rebuilds it exactly."""
    deployment, topology = sentinel_deployment
    process = _streaming(deployment)
    replica = _replica(topology)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(50)
        try:
            at_most_replicated = _cut_off_replica(deployment, topology, replica)
            deadline = time.monotonic() + 30
            while _slot_confirmed(deployment) <= at_most_replicated:
                assert time.monotonic() < deadline, "the projector confirmed nothing new"
                time.sleep(0.05)
            old = topology.kill9_master()
        finally:
            topology.resume(replica)
        topology.wait_for_new_master(old)
        writer.wait_commits(50)
    process.wait_event("rebuild finished", after=1, timeout=60)
    reasons = [e["reason"] for e in process.events() if e.get("event") == REBUILDING]
    assert any("behind the slot" in str(reason) for reason in reasons[1:]), reasons
    _finish(deployment, process)


@pytest.mark.parametrize("fault", ["cluster-failover", "kill-9-master"])
def test_the_oracle_workload_through_a_cluster_failover(
    cluster_deployment: tuple[Deployment, ClusterTopology], fault: str
) -> None:
    deployment, topology = cluster_deployment
    process = _streaming(deployment, PROJECTOR_REDIS_MIN_REPLICAS="1")
    key = deployment.watermark_key
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(100)
        old = topology.node_for_key(key)
        if fault == "cluster-failover":
            new = topology.failover(key)
        else:
            new = topology.kill9_master_of(key)
            topology.restart_node(old)  # rejoins as the new master's replica
        assert topology.node_for_key(key) is new
        writer.wait_commits(100)
    _followed_the_failover(deployment, process)
    # Every key of the deployment lives on the one node serving the prefix's hash tag.
    with deployment.redis() as client:
        keys = [k.decode() for k in client.scan_iter(match=f"{deployment.prefix}*")]
    assert keys and all(k.startswith(deployment.prefix) for k in keys)
