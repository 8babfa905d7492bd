"""``PROJECTOR_REDIS_MIN_REPLICAS``: which batches a WAIT made durable, against a real
master and replica (the projector confirms to PostgreSQL only what is durable)."""

from __future__ import annotations

import time

import pytest
import redis

from harness.redis_topology import SentinelTopology
from projector.core.keys import Keys
from projector.core.projection import BatchDelta
from projector.presence import Presence
from projector.sink import RedisSink, ReplicasBehind
from tests.test_sink_contract import ALL, batch, mark, scores

KEYS = Keys("t:")


def _sink(topology: SentinelTopology, client: redis.Redis) -> RedisSink:
    topology.wait_replicas_in_sync()  # the replica has connected and synced
    sink = RedisSink(client, KEYS, owner="me", min_replicas=1, replica_timeout=0.5)
    Presence(sink).claim()
    return sink


def _one(n: int) -> BatchDelta:
    return batch({ALL: {f"u{n}": 1}})


def test_batches_become_durable_once_the_replica_acknowledged_them_and_none_waits(
    sentinel_topology: SentinelTopology,
) -> None:
    """Batches sent back to back are applied without waiting for the replica (none is
    durable on its answer); a later batch's INFO shows the replica acknowledged an earlier
    one's offset (replicas acknowledge about every second); ``seal`` makes every batch
    durable, and the replica holds each one."""
    with sentinel_topology.master().client() as client:
        sink = _sink(sentinel_topology, client)
        sink.send(_one(0), mark(100), None)
        for n in range(1, 5):
            sink.send(_one(n), mark(100 * (n + 1)), mark(100 * n))
        assert [sink.receive().durable for _ in range(5)] == [None] * 5
        n, durable, deadline = 5, None, time.monotonic() + 10
        while durable is None:
            assert time.monotonic() < deadline, "the replica never acknowledged"
            time.sleep(0.6)  # past _PROBE_EVERY: this batch is followed by INFO
            current = 100 * (n + 1)
            durable = sink.apply(_one(n), mark(current), mark(100 * n)).durable
            n += 1
        # A batch an INFO followed (the first, or a later one's), never the one just sent.
        assert durable is not None and 100 <= durable < current
        sink.seal()
        replica = sentinel_topology.data_nodes[1].client()
        assert scores(replica, ALL) == {f"u{i}": 1.0 for i in range(n)}
        replica.close()
        sink.close()


def test_a_lagging_replica_makes_seal_refuse(sentinel_topology: SentinelTopology) -> None:
    """With the replica stopped, applied batches never become durable, and ``seal`` raises
    ``ReplicasBehind`` (nothing more is confirmed) until the replica is back."""
    with sentinel_topology.master().client() as client:
        sink = _sink(sentinel_topology, client)
        replica = sentinel_topology.data_nodes[1]
        sentinel_topology.pause(replica)
        try:
            sink.send(_one(0), mark(100), None)
            sink.send(_one(1), mark(200), mark(100))
            assert [sink.receive().durable, sink.receive().durable] == [None, None]
            with pytest.raises(ReplicasBehind, match="0 of 1"):
                sink.seal()
        finally:
            sentinel_topology.resume(replica)
        sink.seal()  # the replica caught up
        sink.close()
