"""The sink contract, run against fakeredis (with Lua) and the harness's real Redis.

`RedisSink.apply` writes a batch and the watermark atomically, guarded by compare-and-set;
`read_watermark` reads it back. Both backends must behave the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import fakeredis
import pytest
import redis

from projector.core.errors import RebuildRequired
from projector.core.keys import Keys
from projector.core.projection import BatchDelta, BuildSwap
from projector.core.watermark import Watermark
from projector.presence import Presence
from projector.sink import Fenced, RedisSink, ReplicasBehind

PREFIX = "t:"
KEYS = Keys(PREFIX)
ALL = KEYS.board("b", "all", "all")
DAY = KEYS.board("b", "day", "2026-11-26")
WEEK = KEYS.board("b", "week", "2026-W48")
MONTH = KEYS.board("b", "month", "2026-11")
USERS = f"{PREFIX}users"


@pytest.fixture(params=["fakeredis", "redis"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A Redis client: fakeredis with Lua, or the harness's real server (flushed)."""
    if request.param == "fakeredis":
        fake = fakeredis.FakeRedis()
        yield fake
        fake.close()
    else:
        real = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        yield real
        real.close()


@pytest.fixture
def sink(client: redis.Redis) -> RedisSink:
    return RedisSink(client, KEYS)


def mark(lsn: int, *, tx_lsn: int = 0, tx_rows: int = 0) -> Watermark:
    return Watermark(
        lsn=lsn,
        system_id="7311111111111111111",
        slot="projector",
        commit_time=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        tx_lsn=tx_lsn,
        tx_rows=tx_rows,
    )


def batch(
    deltas: dict[str, dict[str, int]] | None = None,
    expiry: dict[str, int | None] | None = None,
    **kwargs: object,
) -> BatchDelta:
    deltas = deltas or {}
    expiry = expiry if expiry is not None else dict.fromkeys(deltas)
    names = kwargs.pop("names", None)
    if names is not None:
        kwargs["labels"] = {USERS: names}
    if kwargs.pop("clear_boards", False):
        kwargs["clear_boards"] = {KEYS.board_prefix("b")}
    if kwargs.pop("clear_users", False):
        kwargs["clear_labels"] = {USERS}
    return BatchDelta(deltas=deltas, expiry=expiry, **kwargs)  # type: ignore[arg-type]


def scores(client: redis.Redis, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in client.zrange(key, 0, -1, withscores=True)}


def test_read_watermark_is_none_when_redis_holds_none(sink: RedisSink) -> None:
    """An empty Redis has no watermark: read_watermark returns None."""
    assert sink.read_watermark() is None


def test_first_apply_writes_boards_names_and_watermark(
    sink: RedisSink, client: redis.Redis
) -> None:
    """Applying onto an empty Redis (expected None) stores deltas, names and the watermark."""
    new = mark(0x1_0000_0100, tx_lsn=0x1_0000_0200, tx_rows=7)
    sink.apply(
        batch({ALL: {"alice": 2, "bob": 1}}, names={"alice": "Alice"}),
        new,
        None,
    )
    assert scores(client, ALL) == {"alice": 2.0, "bob": 1.0}
    assert client.hgetall(USERS) == {b"alice": b"Alice"}
    assert sink.read_watermark() == new
    fields = client.hgetall(f"{PREFIX}watermark")
    assert fields[b"lsn"] == b"1/100" and fields[b"tx_lsn"] == b"1/200"
    assert fields[b"position"] == new.position.encode()


def test_apply_chains_on_the_expected_watermark(sink: RedisSink, client: redis.Redis) -> None:
    """Each apply names the previous watermark; deltas accumulate across applies."""
    first, second = mark(100), mark(200)
    sink.apply(batch({ALL: {"alice": 1}}), first, None)
    sink.apply(batch({ALL: {"alice": 2, "bob": 1}}), second, first)
    assert scores(client, ALL) == {"alice": 3.0, "bob": 1.0}
    assert sink.read_watermark() == second


def test_cas_mismatch_raises_rebuild_required_and_changes_nothing(
    sink: RedisSink, client: redis.Redis
) -> None:
    """A stale expected watermark (another writer moved it) is refused and writes nothing."""
    sink.apply(batch({ALL: {"alice": 1}}), mark(100), None)
    sink.apply(batch({ALL: {"alice": 1}}), mark(200), mark(100))
    with pytest.raises(RebuildRequired, match="moved under us"):
        sink.apply(batch({ALL: {"alice": 5}}, names={"x": "X"}), mark(300), mark(100))
    assert scores(client, ALL) == {"alice": 2.0}
    assert sink.read_watermark() == mark(200)
    assert client.exists(USERS) == 0


def test_a_writer_that_lost_the_projection_is_fenced_and_changes_nothing(
    client: redis.Redis,
) -> None:
    """Once another process claimed Redis, the former owner's batches are refused (even one
    that names the right position) with ``Fenced``, not mistaken for lost data."""
    former = RedisSink(client, KEYS, owner="former")
    Presence(former).claim()
    former.apply(batch({ALL: {"alice": 1}}), mark(100), None)
    successor = RedisSink(client, KEYS, owner="successor")
    Presence(successor).claim()
    with pytest.raises(Fenced, match="took the slot over") as refused:
        former.apply(batch({ALL: {"alice": 5}}, names={"x": "X"}), mark(200), mark(100))
    assert refused.value.owner == "successor"
    assert scores(client, ALL) == {"alice": 1.0}
    assert client.exists(USERS) == 0
    successor.apply(batch({ALL: {"bob": 1}}), mark(200), mark(100))
    with pytest.raises(Fenced):  # the successor moved on: fenced, not "moved under us"
        former.apply(batch({ALL: {"alice": 5}}), mark(200), mark(100))
    assert scores(client, ALL) == {"alice": 1.0, "bob": 1.0}
    assert sink_watermark(client) == mark(200)


def test_a_writer_whose_claim_redis_lost_is_fenced_and_says_so(client: redis.Redis) -> None:
    """A Redis that lost the claim itself (flushed, or failed over before the claim reached
    a replica) refuses the owner's next batch as fenced, with a message that says that."""
    owner = RedisSink(client, KEYS, owner="owner")
    Presence(owner).claim()
    owner.apply(batch({ALL: {"alice": 1}}), mark(100), None)
    client.flushall()
    with pytest.raises(Fenced, match="no longer holds this process' ownership") as refused:
        owner.apply(batch({ALL: {"alice": 5}}), mark(200), mark(100))
    assert refused.value.owner == ""
    assert client.dbsize() == 0


def sink_watermark(client: redis.Redis) -> Watermark | None:
    return RedisSink(client, KEYS).read_watermark()


def test_a_batch_after_redis_forgot_the_script_loads_it_again(
    sink: RedisSink, client: redis.Redis
) -> None:
    """After SCRIPT FLUSH (a restarted or failed-over Redis) the next batch reloads the
    script once and applies; its compare-and-set still holds."""
    sink.apply(batch({ALL: {"alice": 1}}), mark(100), None)
    client.script_flush()
    sink.apply(batch({ALL: {"alice": 2}}), mark(200), mark(100))
    assert scores(client, ALL) == {"alice": 3.0}
    client.script_flush()
    with pytest.raises(RebuildRequired, match="moved under us"):
        sink.apply(batch({ALL: {"alice": 5}}), mark(300), mark(100))
    assert scores(client, ALL) == {"alice": 3.0}


def test_without_the_replicas_asked_for_a_batch_is_applied_but_not_acknowledged(
    redis_url: str,
) -> None:
    """PROJECTOR_REDIS_MIN_REPLICAS=1 on a Redis without replicas: the claim's WAIT counts
    0 and raises ``ReplicasBehind``, so does the WAIT after a batch sent again after SCRIPT
    FLUSH (on another connection); batches are applied but never durable, and ``seal``
    raises ``ReplicasBehind``."""
    with redis.Redis.from_url(redis_url) as client:
        sink = RedisSink(client, KEYS, owner="me", min_replicas=1, replica_timeout=0.05)
        with pytest.raises(ReplicasBehind, match="0 of 1"):
            Presence(sink).claim()
        assert sink.apply(batch({ALL: {"alice": 1}}), mark(100), None).durable is None
        client.script_flush()
        with pytest.raises(ReplicasBehind, match="the batches up to"):
            sink.apply(batch({ALL: {"alice": 1}}), mark(200), mark(100))
        sink.send(batch({ALL: {"alice": 1}}), mark(300), mark(200))
        sink.send(batch({ALL: {"alice": 1}}), mark(400), mark(300))
        assert [sink.receive().durable, sink.receive().durable] == [None, None]
        with pytest.raises(ReplicasBehind, match="the batches applied"):
            sink.seal()
        assert scores(client, ALL) == {"alice": 4.0}  # applied: only not confirmed
        sink.close()


def test_without_min_replicas_every_batch_is_durable_once_applied(sink: RedisSink) -> None:
    """N=0: each answer makes its position durable; ``seal`` has nothing to wait for."""
    sink.send(batch({ALL: {"alice": 1}}), mark(100), None)
    sink.send(batch({ALL: {"alice": 1}}), mark(200), mark(100))
    assert [sink.receive().durable, sink.receive().durable] == [100, 200]
    sink.seal()


def test_mid_transaction_position_is_part_of_the_cas(sink: RedisSink) -> None:
    """Watermarks differing only in tx_rows are different positions for compare-and-set."""
    sink.apply(batch({ALL: {"a": 1}}), mark(100, tx_lsn=500, tx_rows=1000), None)
    with pytest.raises(RebuildRequired):
        sink.apply(batch({ALL: {"a": 1}}), mark(100, tx_lsn=500, tx_rows=2000), mark(100))
    sink.apply(
        batch({ALL: {"a": 1}}),
        mark(100, tx_lsn=500, tx_rows=2000),
        mark(100, tx_lsn=500, tx_rows=1000),
    )
    assert sink.read_watermark() == mark(100, tx_lsn=500, tx_rows=2000)


def test_missing_watermark_raises_rebuild_required(sink: RedisSink, client: redis.Redis) -> None:
    """When Redis lost its watermark (flush, restart), an apply expecting one is refused."""
    sink.apply(batch({ALL: {"alice": 1}}), mark(100), None)
    client.flushall()
    with pytest.raises(RebuildRequired, match="no watermark"):
        sink.apply(batch({ALL: {"alice": 1}}), mark(200), mark(100))
    assert client.exists(ALL) == 0


def test_apply_expecting_nothing_is_refused_when_a_watermark_exists(sink: RedisSink) -> None:
    """A second writer that believes Redis is empty cannot overwrite a live watermark."""
    sink.apply(batch({ALL: {"alice": 1}}), mark(100), None)
    with pytest.raises(RebuildRequired):
        sink.apply(batch({ALL: {"alice": 1}}), mark(200), None)


def test_members_at_or_below_zero_are_removed(sink: RedisSink, client: redis.Redis) -> None:
    """A member whose count reaches 0 (or would go negative) is removed; empty boards vanish."""
    sink.apply(batch({ALL: {"alice": 2, "bob": 1}, DAY: {"bob": 1}}), mark(100), None)
    sink.apply(batch({ALL: {"alice": -2, "bob": 0}, DAY: {"bob": -1}}), mark(200), mark(100))
    assert scores(client, ALL) == {"bob": 1.0}
    assert client.exists(DAY) == 0
    sink.apply(batch({ALL: {"carol": -1}}), mark(300), mark(200))
    assert scores(client, ALL) == {"bob": 1.0}


def test_members_that_json_escapes_and_zero_deltas_arrive_as_written(
    sink: RedisSink, client: redis.Redis
) -> None:
    """Members with quotes, backslashes, control and non-ASCII characters keep their deltas,
    on keys with few members (json.dumps) and with many (arrays joined by hand); a delta of
    0 writes nothing."""
    odd = ['a","b', "back\\slash", "new\nline", "émoji 😀", "plain"]
    many = odd + [f"m{i}" for i in range(40)]
    deltas = {ALL: {m: i + 1 for i, m in enumerate(many)} | {"zero": 0}, DAY: {m: 2 for m in odd}}
    sink.apply(batch(deltas), mark(100), None)
    assert scores(client, ALL) == {m: float(i + 1) for i, m in enumerate(many)}
    assert scores(client, DAY) == dict.fromkeys(odd, 2.0)
    sink.apply(
        batch({DAY: dict.fromkeys(odd, 0), WEEK: {"plain": 2, "z": 0}, MONTH: {"zero": 0}}),
        mark(200),
        mark(100),
    )
    assert scores(client, DAY) == dict.fromkeys(odd, 2.0)
    assert scores(client, WEEK) == {"plain": 2.0}
    assert client.exists(MONTH) == 0


def test_expiry_is_set_on_finished_boards_only(sink: RedisSink, client: redis.Redis) -> None:
    """Boards with an expiry get EXPIREAT and a registry entry; the all-time board never expires."""
    later = int(time.time()) + 3600
    sink.apply(
        batch({DAY: {"alice": 1}, ALL: {"alice": 1}}, {DAY: later, ALL: None}), mark(100), None
    )
    assert client.expiretime(DAY) == later
    assert client.ttl(ALL) == -1
    registry = dict(client.zrange(f"{PREFIX}boards", 0, -1, withscores=True))
    assert registry == {DAY.encode(): float(later), ALL.encode(): float("inf")}


def test_boards_past_their_expiry_are_dropped(sink: RedisSink, client: redis.Redis) -> None:
    """A board whose expiry has passed is deleted at once and leaves the registry."""
    past = int(time.time()) - 10
    sink.apply(
        batch({DAY: {"alice": 1}, ALL: {"alice": 1}}, {DAY: past, ALL: None}), mark(100), None
    )
    assert client.exists(DAY) == 0
    assert client.zscore(f"{PREFIX}boards", DAY) is None
    assert scores(client, ALL) == {"alice": 1.0}


def test_clear_boards_removes_every_registered_board_before_the_deltas(
    sink: RedisSink, client: redis.Redis
) -> None:
    """clear_boards empties every board (a TRUNCATE), then the batch's own deltas apply."""
    later = int(time.time()) + 3600
    sink.apply(
        batch({DAY: {"a": 3}, WEEK: {"a": 3}, ALL: {"a": 3}}, {DAY: later, WEEK: later, ALL: None}),
        mark(100),
        None,
    )
    sink.apply(batch({ALL: {"b": 1}}, clear_boards=True), mark(200), mark(100))
    assert client.exists(DAY, WEEK) == 0
    assert scores(client, ALL) == {"b": 1.0}
    assert client.zrange(f"{PREFIX}boards", 0, -1) == [ALL.encode()]


def test_clear_users_removes_names_before_setting_new_ones(
    sink: RedisSink, client: redis.Redis
) -> None:
    """clear_users empties the name hash (a TRUNCATE users), then the batch's names apply."""
    sink.apply(batch(names={"a": "A", "b": "B"}), mark(100), None)
    sink.apply(batch(names={"c": "C"}, clear_users=True), mark(200), mark(100))
    assert client.hgetall(USERS) == {b"c": b"C"}
    sink.apply(batch(names={"c": None}), mark(300), mark(200))
    assert client.exists(USERS) == 0


def test_clear_keeps_keys_outside_the_prefix(sink: RedisSink, client: redis.Redis) -> None:
    """Clearing boards and names touches only the sink's own prefix."""
    client.zadd(Keys("other:").board("b", "all", "all"), {"x": 1})
    client.hset("other:users", "x", "X")
    sink.apply(batch({ALL: {"a": 1}}, names={"a": "A"}), mark(100), None)
    sink.apply(batch(clear_boards=True, clear_users=True), mark(200), mark(100))
    assert client.exists(Keys("other:").board("b", "all", "all"), "other:users") == 2
    assert client.exists(ALL, USERS) == 0


def test_apply_reports_a_pending_replay_request(sink: RedisSink, client: redis.Redis) -> None:
    """apply returns the id of a pending `projector replay` request, else None."""
    assert sink.apply(batch(), mark(100), None).replay_request is None
    client.set(f"{PREFIX}replay:request", "r-1")
    assert sink.apply(batch(), mark(200), mark(100)).replay_request == "r-1"
    assert Presence(sink).replay_request() == "r-1"


def test_watermark_without_commit_time_round_trips(sink: RedisSink) -> None:
    """A watermark moved by keepalives (no commit time) reads back equal."""
    new = Watermark(lsn=(5 << 32) | 0xABC, system_id="42", slot="s", commit_time=None)
    sink.apply(batch(), new, None)
    assert sink.read_watermark() == new


def test_two_batches_in_flight_apply_in_order(sink: RedisSink, client: redis.Redis) -> None:
    """A second batch sent before the first is answered applies after it, both counted."""
    first, second = mark(0x100), mark(0x200)
    sink.send(batch({ALL: {"ada": 2}}), first, None)
    sink.send(batch({ALL: {"ada": 1, "bob": 1}}), second, first)
    assert sink.in_flight == 2
    sink.receive()
    sink.receive()
    assert sink.in_flight == 0
    assert scores(client, ALL) == {"ada": 3.0, "bob": 1.0}
    assert sink.read_watermark() == second


def test_a_refused_batch_in_flight_refuses_the_next(sink: RedisSink, client: redis.Redis) -> None:
    """When the first batch in flight is refused (stale position), the second is too."""
    sink.apply(batch({ALL: {"ada": 1}}), mark(0x100), None)
    stale, after = mark(0x50), mark(0x300)
    sink.send(batch({ALL: {"ada": 5}}), mark(0x200), stale)
    sink.send(batch({ALL: {"ada": 7}}), after, mark(0x200))
    with pytest.raises(RebuildRequired):
        sink.receive()
    with pytest.raises(RebuildRequired):
        sink.receive()
    assert scores(client, ALL) == {"ada": 1.0}
    assert sink.read_watermark() == mark(0x100)


def test_a_read_only_replica_is_a_lost_connection_not_a_crash(redis_url: str) -> None:
    """A Redis demoted to a read-only replica (failover) makes apply retryable."""
    from projector.core.errors import ConnectionLost

    client = redis.Redis.from_url(redis_url)
    sink = RedisSink(client, KEYS)
    sink.apply(batch({ALL: {"ada": 1}}), mark(0x100), None)
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a master that never answers
    try:
        with pytest.raises(ConnectionLost, match="read-only"):
            sink.apply(batch({ALL: {"ada": 1}}), mark(0x200), mark(0x100))
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
        sink.close()
        client.close()


def test_a_swap_removes_keys_its_own_batch_would_create_for_the_replaced_board(
    sink: RedisSink, client: redis.Redis
) -> None:
    """A swap batch may carry the replaced board's last deltas (transactions the build's
    snapshot already holds): a key they would create is in no registry read before the
    batch, so they are not applied; the board is exactly the built one (soak seed 9300062:
    a day of a dropped partition survived the swap)."""
    later = int(time.time()) + 3600
    sink.apply(batch({ALL: {"a": 3}, DAY: {"a": 3}}, {ALL: None, DAY: later}), mark(100), None)
    built, delta = f"{PREFIX}rebuild:x:lb:b:all:all", f"{PREFIX}delta:x:lb:b:all:all"
    client.zadd(built, {"a": 2})
    client.set(f"{PREFIX}rebuild:x:started", "1")
    swap = BuildSwap(
        started=f"{PREFIX}rebuild:x:started",
        unlink=(KEYS.board_prefix("b"),),
        expect=((built, 1),),
        merge=((built, delta, ALL, None),),
    )
    sink.apply(
        batch({ALL: {"a": 1}, WEEK: {"u16": 18}}, {ALL: None, WEEK: later}, swap=swap),
        mark(200),
        mark(100),
    )
    assert client.exists(DAY, WEEK) == 0
    assert scores(client, ALL) == {"a": 2.0}
    assert client.zrange(f"{PREFIX}boards", 0, -1) == [ALL.encode()]
