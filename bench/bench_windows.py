"""Rolling windows: a read-time union of day buckets vs a maintained key, in Redis time.

Run: ``.venv/bin/python bench/bench_windows.py [--members 100000] [--repeat 20]``. Loads 30
day sorted sets of ``--members`` members each into a throwaway Redis, then measures (Redis'
own ``INFO commandstats`` microseconds per call, so the client is not counted):

- the read-time union: ``ZUNIONSTORE`` of the 7 and of the 30 day keys (what a reader would
  pay on every cache miss, once per watermark), then a top-10 of the result;
- the maintained key: a top-10 (``ZRANGE .. REV LIMIT``) of a 100k-member window key;
- the daily advance of the maintained key: ``ZUNIONSTORE`` of old window, entering day and
  leaving day with ``WEIGHTS 1 1 -1``, then ``ZREMRANGEBYSCORE -inf 0``.

Saves bench/results/windows.json.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

import redis
from common import machine, save

from harness import servers


def _stats(client: redis.Redis) -> dict[str, dict[str, float]]:
    info = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): {"calls": float(v["calls"]), "usec": float(v["usec"])}
        for name, v in info.items()
    }


def _timed(client: redis.Redis, command: str, repeat: int, *args: Any) -> float:
    """Microseconds of Redis time per call of ``command`` (run ``repeat`` times)."""
    client.config_resetstat()
    for _ in range(repeat):
        client.execute_command(command, *args)
    stat = _stats(client)[command.lower().split()[0]]
    return stat["usec"] / stat["calls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    n, repeat = args.members, args.repeat
    rd = servers.redis_for_tests()
    rd.start()
    try:
        client = redis.Redis.from_url(rd.url())
        rng = random.Random(7)
        days = [f"b:day:{d:02d}" for d in range(30)]
        for key in days:
            pipe = client.pipeline(transaction=False)
            members = {f"user{m}": rng.randint(1, 30) for m in range(n)}
            items = list(members.items())
            for s in range(0, len(items), 10_000):
                pipe.zadd(key, dict(items[s : s + 10_000]))
            pipe.execute()
        client.zunionstore("b:last7", days[-7:])
        client.zunionstore("b:last30", days)
        top = ("0", "9", "REV")
        result = {
            "members_per_day": n,
            "repeat": repeat,
            "read_union_last7_zunionstore_us": _timed(
                client, "ZUNIONSTORE", repeat, "b:u7", 7, *days[-7:]
            ),
            "read_union_last30_zunionstore_us": _timed(
                client, "ZUNIONSTORE", repeat, "b:u30", 30, *days
            ),
            "maintained_top10_us": _timed(client, "ZRANGE", repeat * 50, "b:last30", *top),
            "advance_last30_zunionstore_us": _timed(
                client,
                "ZUNIONSTORE",
                repeat,
                "b:next30",
                3,
                "b:last30",
                days[0],
                days[-1],
                "WEIGHTS",
                1,
                1,
                -1,
            ),
        }
        client.zunionstore("b:next30", {"b:last30": 1, days[0]: 1, days[-1]: -1})
        result["advance_drop_nonpositive_us"] = _timed(
            client, "ZREMRANGEBYSCORE", 1, "b:next30", "-inf", 0
        )
        result["window_key_memory_bytes"] = int(client.memory_usage("b:last30") or 0)
        for name, value in result.items():
            print(f"{name}: {value:,.1f}" if isinstance(value, float) else f"{name}: {value}")
        save(
            "windows",
            {
                "command": " ".join(["bench/bench_windows.py", *sys.argv[1:]]),
                "machine": machine(),
                **result,
            },
        )
    finally:
        rd.cleanup()


if __name__ == "__main__":
    main()
