"""``PROJECTOR_REDIS_MIN_REPLICAS``: which batches a WAIT made durable, against a real
master and replica (the projector confirms to PostgreSQL only what is durable)."""

from __future__ import annotations

import pytest
import redis
from core.test_sink_contract import ALL, batch, mark, scores
from redis_topology import SentinelTopology

from projector.keys import Keys
from projector.projection import BatchDelta
from projector.sink import RedisSink, ReplicasBehind

KEYS = Keys("t:")


def _sink(topology: SentinelTopology, client: redis.Redis) -> RedisSink:
    topology.wait_replicas_in_sync()  # the replica has connected and synced
    sink = RedisSink(client, KEYS, owner="me", min_replicas=1, replica_timeout=0.5)
    sink.claim()
    return sink


def _one(n: int) -> BatchDelta:
    return batch({ALL: {f"u{n}": 1}})


def test_batches_sent_back_to_back_share_one_wait_and_seal_makes_the_rest_durable(
    sentinel_topology: SentinelTopology,
) -> None:
    """The first batch is followed by a WAIT, so durable on its answer; the ones sent right
    behind it get none of their own (no WAIT holds them up); ``seal`` then makes them
    durable, and the replica holds every one."""
    with sentinel_topology.master().client() as client:
        sink = _sink(sentinel_topology, client)
        sink.send(_one(0), mark(100), None)
        for n in range(1, 5):
            sink.send(_one(n), mark(100 * (n + 1)), mark(100 * n))
        durable = [sink.receive().durable for _ in range(5)]
        assert durable[0] == 100
        assert durable[1:] == [None] * 4  # sent within _WAIT_EVERY of the first
        sink.seal()
        replica = sentinel_topology.data_nodes[1].client()
        assert scores(replica, ALL) == {f"u{n}": 1.0 for n in range(5)}
        replica.close()
        sink.close()


def test_a_lagging_replica_makes_seal_refuse(sentinel_topology: SentinelTopology) -> None:
    """With the replica stopped, applied batches never become durable: a batch's WAIT and
    ``seal`` raise ``ReplicasBehind`` (nothing is confirmed)."""
    with sentinel_topology.master().client() as client:
        sink = _sink(sentinel_topology, client)
        replica = sentinel_topology.data_nodes[1]
        sentinel_topology.pause(replica)
        try:
            sink.send(_one(0), mark(100), None)
            sink.send(_one(1), mark(200), mark(100))
            with pytest.raises(ReplicasBehind, match="0 of 1"):
                sink.receive()  # the first batch's WAIT
            assert sink.receive().durable is None
            with pytest.raises(ReplicasBehind, match="the batches applied"):
                sink.seal()
        finally:
            sentinel_topology.resume(replica)
        sink.seal()  # the replica caught up
        sink.close()
