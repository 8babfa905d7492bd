"""Consistent bootstrap: a first start on a populated database builds exactly what rows say."""

from __future__ import annotations

import threading
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from projector.core.lsn import parse_lsn

from .support import (
    Deployment,
    bucket_ids,
    event_time,
    expiry_date,
    local_midnight_epoch,
    recompute,
    redis_writes_paused,
    seed,
    seed_edges,
    writing,
)


def test_bootstrap_on_existing_rows_equals_recomputation_despite_concurrent_writes(
    deployment: Deployment,
) -> None:
    """Starting on thousands of rows while a writer commits builds boards equal to the rows."""
    deployment.timezone = "Europe/Berlin"  # DST changes inside the data, non-UTC midnights
    seed(deployment.pg_dsn, rows=30_000, users=300, days=420)
    seed_edges(deployment.pg_dsn)
    with writing(deployment.pg_dsn) as writer:
        writer.wait_commits(20)
        with redis_writes_paused(deployment.redis_url):  # holds the rebuild after its slot
            projector = deployment.start()
            created = projector.wait_event("slot created")
            writer.wait_commits(30)  # after the consistent point, while the build runs
            assert projector.count("rebuild finished") == 0
        finished = projector.wait_event("rebuild finished")
        writer.wait_commits(100)  # and on while it streams
    deployment.wait_caught_up()
    expected = deployment.assert_matches_postgres()
    projector.assert_running()
    assert parse_lsn(finished["watermark"]) == parse_lsn(created["consistent_point"])
    during = [t for t in writer.commits if event_time(created) <= t <= event_time(finished)]
    assert len(during) >= 30

    # Boards past retention are absent; those inside carry their expiry, all-time none.
    tz = ZoneInfo(deployment.timezone)
    prefix = deployment.prefix
    days = {k for k in expected if k.startswith(f"{prefix}lb:pomodoros:day:")}
    assert 30 <= len(days) <= 40, sorted(days)  # 36 days kept (+ future ones) of 420 seeded
    assert len([k for k in expected if k.startswith(f"{prefix}lb:pomodoros:month:")]) in (
        14,
        15,
        16,
    )
    old_year = bucket_ids(time_ago_date(tz, 7 * 366))["year"][0]
    assert f"{prefix}lb:pomodoros:year:{old_year}" not in expected
    with deployment.redis() as client:
        assert client.ttl(f"{prefix}lb:pomodoros:all:all") == -1
        registry = {k.decode() for k in client.zrange(f"{prefix}boards", 0, -1)}
        assert registry == set(expected)
        for key in expected:
            _, _board, period, bucket = key.removeprefix(prefix).split(":", 3)
            if period == "all":
                continue
            first = _first_date(period, bucket)
            want = local_midnight_epoch(expiry_date(period, first), tz)
            assert client.expiretime(key) == want, key


def time_ago_date(tz: ZoneInfo, days: int) -> date:
    return (datetime.now(tz) - timedelta(days=days)).date()


def _first_date(period: str, bucket: str) -> date:
    if period == "day":
        return date.fromisoformat(bucket)
    if period == "week":
        year, week = bucket.split("-W")
        return date.fromisocalendar(int(year), int(week), 1)
    if period == "month":
        year, month = bucket.split("-")
        return date(int(year), int(month), 1)
    return date(int(bucket), 1, 1)


# A read of the watermark and of each given board's size and score total, in one atomic step.
_DIGEST_LUA = """
local out = {redis.call('HGET', KEYS[1], 'lsn') or '', tostring(redis.call('HLEN', KEYS[2]))}
for i = 3, #KEYS do
  local flat = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  local sum = 0
  for j = 2, #flat, 2 do sum = sum + tonumber(flat[j]) end
  out[#out + 1] = (#flat / 2) .. ':' .. sum
end
return out
"""


def _digest(
    boards: dict[str, dict[str, int]], names: dict[str, str], keys: list[str]
) -> tuple[str, ...]:
    sizes = (f"{len(boards.get(k, {}))}:{sum(boards.get(k, {}).values())}" for k in keys)
    return (str(len(names)), *sizes)


def test_readers_never_see_a_half_built_board(deployment: Deployment) -> None:
    """While a 200k-row rebuild runs, every atomic read shows the old state or the new, whole."""
    pg = deployment.pg_dsn
    seed(pg, rows=100_000, users=400, days=50, user_prefix="a")
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    deployment.wait_caught_up()
    old = deployment.assert_matches_postgres()
    _, old_names = recompute(pg, deployment.prefix, deployment.timezone)
    old_lsn = parse_lsn(deployment.watermark()["lsn"])
    assert projector.stop() == 0

    # The rebuild to come must produce a different state: new rows, other users and days.
    deployment.drop_slot()
    seed(pg, rows=100_000, users=600, days=20, user_prefix="b", seed_value=0.17)
    new, new_names = recompute(pg, deployment.prefix, deployment.timezone)
    keys = sorted(old.keys() | new.keys())
    old_digest, new_digest = _digest(old, old_names, keys), _digest(new, new_names, keys)
    assert old_digest[0] != new_digest[0]  # the name hash is swapped too
    assert old_digest != new_digest

    observations: list[tuple[float, int, tuple[str, ...]]] = []
    stop = threading.Event()

    def read_loop() -> None:
        with deployment.redis() as client:
            script = client.register_script(_DIGEST_LUA)
            while not stop.is_set():
                reply = script(keys=[deployment.watermark_key, f"{deployment.prefix}users", *keys])
                lsn = parse_lsn(reply[0].decode()) if reply[0] else -1
                observations.append((time.time(), lsn, tuple(r.decode() for r in reply[1:])))

    reader = threading.Thread(target=read_loop, daemon=True)
    reader.start()
    try:
        projector = deployment.start()
        started = projector.wait_event("rebuild started")
        created = projector.wait_event("slot created")
        finished = projector.wait_event("rebuild finished")
        deployment.wait_caught_up()
    finally:
        stop.set()
        reader.join(10)
    deployment.assert_matches_postgres()

    new_lsn = parse_lsn(created["consistent_point"])
    torn = []
    for at, lsn, digest in observations:
        if digest == old_digest:
            if lsn != old_lsn:
                torn.append((at, "old boards with watermark", lsn))
        elif digest == new_digest:
            if lsn < new_lsn:
                torn.append((at, "new boards with an older watermark", lsn))
        else:
            torn.append((at, "boards of neither state", lsn))
    assert not torn, torn[:5]
    during = [o for o in observations if event_time(started) <= o[0] <= event_time(finished)]
    assert len(during) >= 5, f"only {len(during)} reads happened during the rebuild"
    assert observations[0][2] == old_digest and observations[-1][2] == new_digest
