"""The Redis HA harness against real servers: redis-py's Sentinel and Cluster clients find
the master, keep writing across failovers and kills, and WAIT sees a paused replica."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from harness.redis_topology import ClusterTopology, SentinelTopology

pytestmark = pytest.mark.timeout(120)

TAG = "{pomo:}"


@contextmanager
def sentinel_master(topology: SentinelTopology) -> Iterator[redis.Redis]:
    """A redis-py client of the master that redis-py's Sentinel support finds."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        topology.sentinels,
        sentinel_kwargs={"password": topology.sentinel_password, "socket_timeout": 2},
        password=topology.password,
        socket_timeout=2,
    )
    master = sentinel.master_for(topology.master_name)  # type: ignore[no-untyped-call]
    try:
        yield master
    finally:
        master.close()
        for client in sentinel.sentinels:
            client.close()


@contextmanager
def cluster_client(topology: ClusterTopology) -> Iterator[RedisCluster]:
    """A redis-py cluster client started from the topology's nodes."""
    client = RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in topology.startup_nodes
        ],
        password=topology.password,
        socket_timeout=2,
    )
    try:
        yield client
    finally:
        client.close()


def anonymous_client(host: str, port: int) -> redis.Redis:
    """A client that does not log in, and does not retry the refusal it gets."""
    return redis.Redis(host=host, port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def write_and_wait(client: redis.Redis, key: str, replicas: int, timeout_ms: int) -> int:
    """SET `key`, then WAIT on the same connection; how many replicas acknowledged it."""
    pipe = client.pipeline(transaction=False)
    pipe.set(key, "1")
    pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
    acknowledged: int = pipe.execute()[1]
    return acknowledged


# --------------------------------------------------------------------------- Sentinel


def test_sentinel_client_finds_the_master(sentinel_topology: SentinelTopology) -> None:
    """Sentinel.master_for reaches the data node the topology calls master, which writes."""
    master = sentinel_topology.master()
    with sentinel_master(sentinel_topology) as client:
        client.set("k", "v")
        assert client.info("server")["tcp_port"] == master.port
    assert master.info("replication")["role"] == "master"
    assert sentinel_topology.replicas() == [sentinel_topology.data_nodes[1].address]


def test_writes_continue_after_failover(sentinel_topology: SentinelTopology) -> None:
    """After failover() the same Sentinel client writes to the new master and keeps old keys."""
    old = sentinel_topology.master()
    with sentinel_master(sentinel_topology) as client:
        assert write_and_wait(client, "before", 1, 5000) == 1
        new = sentinel_topology.failover()
        client.set("after", "1")
        assert client.mget("before", "after") == [b"1", b"1"]
        assert client.info("server")["tcp_port"] == new.port
    assert new is not old
    assert sentinel_topology.master_address() == new.address
    assert old.info("replication")["role"] == "slave"  # demoted, so it takes no more writes


def test_writes_continue_after_master_is_killed_and_it_rejoins_as_replica(
    sentinel_topology: SentinelTopology,
) -> None:
    """After kill -9 of the master a replica is promoted and the client writes to it;
    restart_node brings the killed one back as an in-sync replica of its successor."""
    with sentinel_master(sentinel_topology) as client:
        assert write_and_wait(client, "before", 1, 5000) == 1
        killed = sentinel_topology.kill9_master()
        new = sentinel_topology.wait_for_new_master(killed)
        client.set("after", "1")
        assert client.mget("before", "after") == [b"1", b"1"]
    assert not killed.is_running()
    assert new is not killed
    sentinel_topology.restart_node(killed)
    replication = killed.info("replication")
    assert (replication["role"], replication["master_port"]) == ("slave", str(new.port))
    assert sentinel_topology.replicas() == [killed.address]


def test_wait_sees_the_replica_only_while_it_runs(sentinel_topology: SentinelTopology) -> None:
    """WAIT 1 1000 counts the replica on a healthy pair, not while it is SIGSTOPped."""
    replica = sentinel_topology.node_at(sentinel_topology.replicas()[0])
    with sentinel_topology.master().client() as client:
        assert write_and_wait(client, "healthy", 1, 1000) == 1
        sentinel_topology.pause(replica)
        assert write_and_wait(client, "lagging", 1, 1000) == 0
        sentinel_topology.resume(replica)
        assert write_and_wait(client, "caught-up", 1, 5000) == 1
    sentinel_topology.wait_replicas_in_sync()


@pytest.mark.parametrize(
    "sentinel_topology",
    [{"password": 'data "pass" word', "sentinel_password": "sentinel pass"}],
    indirect=True,
)
def test_sentinel_topology_requires_its_passwords(sentinel_topology: SentinelTopology) -> None:
    """With passwords set, data nodes and Sentinels refuse clients that do not log in."""
    with sentinel_master(sentinel_topology) as client:
        client.set("k", "v")
    master_host, master_port = sentinel_topology.master_address()
    sentinel_host, sentinel_port = sentinel_topology.sentinels[0]
    for host, port in ((master_host, master_port), (sentinel_host, sentinel_port)):
        with (
            anonymous_client(host, port) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()


# --------------------------------------------------------------------------- Cluster


def test_cluster_keeps_a_hash_tag_on_one_node(cluster_topology: ClusterTopology) -> None:
    """RedisCluster reads back keys tagged {pomo:}, which all live on the tag's master."""
    keys = [f"{TAG}{index}" for index in range(20)]
    with cluster_client(cluster_topology) as client:
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    owner = cluster_topology.node_for_key(f"{TAG}x")
    assert {cluster_topology.node_for_key(key) for key in keys} == {owner}
    for master in cluster_topology.masters():
        with master.client() as node_client:
            assert node_client.dbsize() == (len(keys) if master is owner else 0)
    replica = cluster_topology.replica_of(owner)
    assert replica.info("replication")["master_port"] == str(owner.port)


def test_cluster_writes_continue_after_failover(cluster_topology: ClusterTopology) -> None:
    """After failover(key) the replica serves the slot and RedisCluster writes to it."""
    key = f"{TAG}x"
    old = cluster_topology.node_for_key(key)
    replica = cluster_topology.replica_of(old)
    with cluster_client(cluster_topology) as client:
        client.set(key, "before")
        new = cluster_topology.failover(key)
        client.set(f"{TAG}y", "after")
        assert client.mget(key, f"{TAG}y") == [b"before", b"after"]
    assert new is replica
    assert cluster_topology.node_for_key(key) is new
    assert cluster_topology.replica_of(new) is old


def test_cluster_writes_continue_after_master_is_killed_and_it_rejoins_as_replica(
    cluster_topology: ClusterTopology,
) -> None:
    """After kill9_master_of(key) the replica serves the slot and RedisCluster writes to it;
    restart_node brings the killed master back as a replica of its successor."""
    key = f"{TAG}x"
    old = cluster_topology.node_for_key(key)
    replica = cluster_topology.replica_of(old)
    with cluster_client(cluster_topology) as client:
        client.set(key, "before")
        new = cluster_topology.kill9_master_of(key)
        client.set(f"{TAG}y", "after")
        assert client.get(f"{TAG}y") == b"after"
    assert new is replica
    assert not old.is_running()
    assert cluster_topology.node_for_key(key) is new
    cluster_topology.restart_node(old)
    assert cluster_topology.replica_of(new) is old
    assert old.info("replication")["master_link_status"] == "up"


@pytest.mark.parametrize("cluster_topology", [{"password": "cluster pass"}], indirect=True)
def test_cluster_topology_requires_its_password(cluster_topology: ClusterTopology) -> None:
    """With a password set, RedisCluster works with it and a node refuses a client without."""
    with cluster_client(cluster_topology) as client:
        client.set(f"{TAG}x", "1")
        assert client.get(f"{TAG}x") == b"1"
    host, port = cluster_topology.startup_nodes[0]
    with (
        anonymous_client(host, port) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
