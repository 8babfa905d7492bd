"""Reads from Redis replicas (PROJECTOR_API_READ_FROM_REPLICAS=true), on a real Sentinel
topology: the API finds master and replica through the Sentinels, answers from the replica,
and asks the master instead where the replica's watermark is behind the request's min_lsn.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from harness.redis_topology import ClusterTopology, RedisNode, SentinelTopology
from projector import read_functions
from projector.commands.roles import Grantee, apply_redis
from projector.settings import Settings

from .support import (
    ApiServer,
    ProjectorThread,
    current_lsn,
    insert_rows,
    parse_lsn,
    serve,
    wait_caught_up,
)

pytestmark = pytest.mark.timeout(120)

BOARD = "/v1/leaderboards/day"
TODAY = [("ann", None), ("ann", None), ("bob", None)]


def _scores(body: dict[str, Any]) -> dict[str, int]:
    return {entry["user_id"]: entry["score"] for entry in body["entries"]}


def _replica_reads(api: ApiServer) -> dict[str, float]:
    text = api.get("/metrics").text
    return {
        outcome: float(value)
        for outcome, value in re.findall(
            r'^api_replica_reads_total\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE
        )
    }


def _behind_sentinels(
    settings_for: Callable[..., Settings], topology: SentinelTopology, **extra: Any
) -> Settings:
    """Settings that find Redis through the topology's Sentinels, reading from replicas."""
    return settings_for(
        redis_url=topology.master().url(),
        redis_sentinels=",".join(f"{host}:{port}" for host, port in topology.sentinels),
        redis_sentinel_master=topology.master_name,
        api_read_from_replicas=True,
        **extra,
    )


@contextmanager
def _replication_held(replica: RedisNode) -> Iterator[None]:
    """The replica stops applying what the master sends (CLIENT PAUSE WRITE holds the
    replication stream too) but goes on answering reads: a lagging replica."""
    replica.execute("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        yield
    finally:
        replica.execute("CLIENT", "UNPAUSE")


def test_reads_come_from_the_replica_unless_it_is_behind_min_lsn(
    settings_for: Callable[..., Settings], sentinel_topology: SentinelTopology
) -> None:
    topology = sentinel_topology
    settings = _behind_sentinels(settings_for, topology)
    insert_rows(settings.pg_dsn, TODAY)
    projector = ProjectorThread(settings)
    try:
        wait_caught_up(settings)
        topology.wait_replicas_in_sync()
        (address,) = topology.replicas()
        replica = topology.node_at(address)
        with serve(settings) as api:
            body = api.json(BOARD)
            assert body["source"] == "redis" and _scores(body) == {"ann": 2, "bob": 1}
            assert _replica_reads(api).get("served", 0) >= 1

            with _replication_held(replica):
                insert_rows(settings.pg_dsn, [("newbie", None)])
                lsn = current_lsn(settings.pg_dsn)
                wait_caught_up(settings)  # on the master
                stale = api.json(BOARD)  # no min_lsn: the replica's answer will do
                assert stale["source"] == "redis" and "newbie" not in _scores(stale)
                before = _replica_reads(api).get("behind", 0)
                fresh = api.json(BOARD, min_lsn=lsn)
                assert fresh["source"] == "redis" and _scores(fresh)["newbie"] == 1
                assert _replica_reads(api).get("behind", 0) == before + 1

            deadline = time.monotonic() + 10
            while "newbie" not in _scores(api.json(BOARD)):  # the replica caught up
                assert time.monotonic() < deadline, "the replica did not catch up"
                time.sleep(0.05)
    finally:
        projector.stop()


def test_a_replica_down_leaves_reads_to_the_master(
    settings_for: Callable[..., Settings], sentinel_topology: SentinelTopology
) -> None:
    """A frozen replica costs one timeout; then its breaker sends reads to the master."""
    topology = sentinel_topology
    settings = _behind_sentinels(settings_for, topology, api_redis_timeout=0.3)
    insert_rows(settings.pg_dsn, TODAY)
    projector = ProjectorThread(settings)
    try:
        wait_caught_up(settings)
        (address,) = topology.replicas()
        replica = topology.node_at(address)
        with serve(settings) as api:
            assert api.json(BOARD)["source"] == "redis"
            topology.pause(replica)
            try:
                for _ in range(5):
                    body = api.json(BOARD)
                    assert body["source"] == "redis" and _scores(body) == {"ann": 2, "bob": 1}
                assert _replica_reads(api).get("failed", 0) >= 1
            finally:
                topology.resume(replica)
    finally:
        projector.stop()


def _least_privilege_users(nodes: list[RedisNode], prefix: str) -> tuple[str, str]:
    """The projector's and the API's ACL users (``projector roles``) set on every node, as
    the README asks (ACL users are per node); their logins as ``user:password``."""
    run = Grantee("replica_run", "replica-run-pw", replication=True)
    api = Grantee("replica_api", "replica-api-pw", replication=False)
    for node in nodes:
        apply_redis(node.url(), prefix, run, api)
    return "replica_run:replica-run-pw", "replica_api:replica-api-pw"


def _as(login: str, node: RedisNode) -> str:
    return node.url().replace("redis://", f"redis://{login}@", 1)


def _assert_functions_only(node: RedisNode, api_login: str, watermark: str) -> None:
    """``node`` holds the read functions (replicated: the projector loads them on a master
    only) and the API's user may call them there but not EVAL_RO code of its own (on a
    Cluster, ``node`` must serve the watermark's slot as master)."""
    with node.client() as admin:
        assert admin.execute_command("FUNCTION", "LIST", "LIBRARYNAME", read_functions.LIBRARY)
    with redis.Redis.from_url(_as(api_login, node)) as client:
        lsn, _, _ = client.execute_command("FCALL_RO", read_functions.WATERMARK, 1, watermark)
        assert lsn is not None
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("EVAL_RO", "#!lua flags=no-writes\nreturn 1", 0)


def test_replica_reads_call_the_functions_the_projector_loaded_on_the_master(
    settings_for: Callable[..., Settings], sentinel_topology: SentinelTopology
) -> None:
    """As their least-privilege ACL users, the projector loads the read functions on the
    master and the API (which may not EVAL_RO) answers from the replica by calling them."""
    topology = sentinel_topology
    master = topology.master()
    (address,) = topology.replicas()
    replica = topology.node_at(address)
    run, api_login = _least_privilege_users([master, replica], "pomo:")
    settings = settings_for(
        redis_url=_as(run, master),
        api_redis_url=_as(api_login, master),
        redis_sentinels=",".join(f"{host}:{port}" for host, port in topology.sentinels),
        redis_sentinel_master=topology.master_name,
        api_read_from_replicas=True,
    )
    insert_rows(settings.pg_dsn, TODAY)
    projector = ProjectorThread(settings)
    try:
        wait_caught_up(settings)
        topology.wait_replicas_in_sync()
        _assert_functions_only(replica, api_login, settings.keys.watermark)
        with serve(settings) as api:
            body = api.json(BOARD)
            assert body["source"] == "redis" and _scores(body) == {"ann": 2, "bob": 1}
            assert _replica_reads(api).get("served", 0) >= 1
            assert _replica_reads(api).get("failed", 0) == 0
    finally:
        projector.stop()


def test_cluster_reads_follow_a_failover_from_replica_and_master(
    settings_for: Callable[..., Settings], cluster_topology: ClusterTopology
) -> None:
    """On a Cluster the API finds the prefix's slot, reads from its replica, and keeps
    answering from Redis through a CLUSTER FAILOVER (the old connections meet MOVED or
    READONLY and are dropped; new ones look the slot up again); both log in as their
    least-privilege users, the API calling the functions the projector loaded, which the
    promoted replica holds too."""
    topology = cluster_topology
    host, port = topology.startup_nodes[0]
    seeds = ",".join(f"{h}:{p}" for h, p in topology.startup_nodes)
    prefix = settings_for(redis_cluster_nodes=seeds).keys.prefix
    run, api_login = _least_privilege_users(topology.nodes, prefix)
    seed = topology.node_at((host, port))
    settings = settings_for(
        redis_url=_as(run, seed),
        api_redis_url=_as(api_login, seed),
        redis_cluster_nodes=seeds,
        api_read_from_replicas=True,
    )
    insert_rows(settings.pg_dsn, TODAY)
    projector = ProjectorThread(settings)
    try:
        watermark = settings.keys.watermark
        _wait_lsn(topology.node_for_key(watermark), watermark, current_lsn(settings.pg_dsn))
        with serve(settings) as api:
            body = api.json(BOARD)
            assert body["source"] == "redis" and _scores(body) == {"ann": 2, "bob": 1}
            assert _replica_reads(api).get("served", 0) >= 1
            promoted = topology.failover(watermark)
            _assert_functions_only(promoted, api_login, watermark)
            insert_rows(settings.pg_dsn, [("newbie", None)])
            lsn = current_lsn(settings.pg_dsn)
            deadline = time.monotonic() + 30
            while True:  # the projector follows the failover too
                fresh = api.json(BOARD, min_lsn=lsn)
                if fresh["source"] == "redis":
                    break
                assert time.monotonic() < deadline, fresh
                time.sleep(0.1)
            assert _scores(fresh) == {"ann": 2, "bob": 1, "newbie": 1}
            served = _replica_reads(api).get("served", 0)
            deadline = time.monotonic() + 10
            while _replica_reads(api).get("served", 0) == served:  # replicas serve again
                assert api.json(BOARD)["source"] == "redis"
                assert time.monotonic() < deadline, _replica_reads(api)
                time.sleep(0.05)
    finally:
        projector.stop()


def _wait_lsn(node: RedisNode, key: str, target: str, timeout: float = 30.0) -> None:
    """Wait until the watermark at ``key`` on ``node`` reached LSN ``target``."""
    want = parse_lsn(target)
    deadline = time.monotonic() + timeout
    with node.client() as client:
        while (lsn := client.hget(key, "lsn")) is None or parse_lsn(lsn.decode()) < want:
            assert time.monotonic() < deadline, f"{key} did not reach {target}"
            time.sleep(0.02)
