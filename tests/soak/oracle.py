"""The soak's oracle: once quiet, Redis must equal a recomputation from PostgreSQL.

Quiet means the workload stopped, every fault healed and one projector caught up: the
watermark at or past ``pg_current_wal_lsn()`` read after the last write, no chunk in
progress, and every board live as ``projector status`` sees it (none unavailable, none
waiting to be built again after partition maintenance), then caught up once more. Every
board and its names are recomputed with SQL alone (``recompute`` of the core suite, never
projector code) and read back through the one reader of the Redis layout (``read_redis``);
then the slot's confirmed position must reach the watermark quickly. ``check_broken`` is the
same check in the middle of a breaking migration: the broken board unavailable and gone
from Redis, every other board exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import redis
from psycopg import sql

from projector.commands.status import collect_status
from projector.core.boards import Board
from projector.core.buckets import WINDOW_LENGTHS
from projector.core.keys import Keys
from projector.core.watermark import unavailable_boards
from projector.core.windows import window_periods
from projector.settings import Settings, load_settings
from tests.e2e.projector.support import (
    Expected,
    assert_same,
    parse_lsn,
    read_redis,
    recompute,
    slot_confirmed_lsn,
    wait_until_caught_up,
    watermark,
)
from tests.soak.cluster import PREFIX, SLOT, Cluster
from tests.soak.schema import BOARDS

SLOT_LAG_DEADLINE = 5.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The check's outcome: ``failure`` is None, "stuck", "drift" or "slot_lag"."""

    failure: str | None
    message: str = ""
    catch_up_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


def check(cluster: Cluster, *, deadline: float, alive: Callable[[], None]) -> Verdict:
    """Wait for quiescence (``alive`` runs on every poll), then compare and check the slot."""
    began = time.monotonic()
    with cluster.client() as client:
        try:
            settle(cluster, client, timeout=deadline, alive=alive)
        except AssertionError as exc:
            return Verdict("stuck", str(exc), time.monotonic() - began)
        caught_up = time.monotonic() - began
        message = compare(cluster, client, BOARDS)
        if message is not None:
            return Verdict("drift", message, caught_up)
        applied = parse_lsn(watermark(client, PREFIX)["lsn"])
    lag_deadline = time.monotonic() + SLOT_LAG_DEADLINE
    while True:
        confirmed = slot_confirmed_lsn(cluster.dsn, SLOT)
        if confirmed is not None and confirmed >= applied:
            return Verdict(None, "", caught_up)
        if time.monotonic() > lag_deadline:
            shown = "none" if confirmed is None else f"{confirmed:X}"
            return Verdict(
                "slot_lag",
                f"slot confirmed {shown} did not reach the watermark {applied:X} "
                f"within {SLOT_LAG_DEADLINE:.0f} s",
                caught_up,
            )
        time.sleep(0.05)


def check_broken(
    cluster: Cluster, broken: str, *, deadline: float, alive: Callable[[], None]
) -> Verdict:
    """With the database quiet and board ``broken`` unfit for the schema: once caught up, it
    is unavailable (recorded so in the watermark) and none of its keys is left, and every
    other board equals the recomputation."""
    began = time.monotonic()
    with cluster.client() as client:
        try:
            settle(cluster, client, timeout=deadline, alive=alive, unavailable={broken})
        except AssertionError as exc:
            return Verdict("stuck", str(exc), time.monotonic() - began)
        caught_up = time.monotonic() - began
        left = next(client.scan_iter(match=Keys(PREFIX).board_prefix(broken) + "*"), None)
        if left is not None:
            return Verdict(
                "drift", f"board {broken!r} is unavailable but Redis holds {left!r}", caught_up
            )
        message = compare(cluster, client, [b for b in BOARDS if b.name != broken])
        return Verdict(None if message is None else "drift", message or "", caught_up)


def settle(
    cluster: Cluster,
    client: redis.Redis,
    *,
    timeout: float,
    alive: Callable[[], None],
    unavailable: Collection[str] = (),
) -> None:
    """Wait until caught up with every board live (but those named ``unavailable``, which
    must be unavailable, in ``status`` and in the watermark), and caught up again since;
    ``AssertionError`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    wait_until_caught_up(cluster.dsn, client, PREFIX, timeout=timeout, alive=alive)
    settings = _settings(cluster)
    wanted = {b.name: "unavailable" if b.name in unavailable else "live" for b in BOARDS}
    # Settled: the states hold, and still hold once caught up since (the stream may yet hold
    # a change that stops a board again, e.g. a relation from before a schema was healed).
    while True:
        report = collect_status(settings)
        states = {name: state["state"] for name, state in report["boards"].items()}
        recorded = unavailable_boards(watermark(client, PREFIX).get("unavailable", ""))
        if states == wanted and set(recorded) == set(unavailable):
            left = max(end - time.monotonic(), 1.0)
            wait_until_caught_up(cluster.dsn, client, PREFIX, timeout=left, alive=alive)
            report = collect_status(settings)
            states = {name: state["state"] for name, state in report["boards"].items()}
            recorded = unavailable_boards(watermark(client, PREFIX).get("unavailable", ""))
            if states == wanted and set(recorded) == set(unavailable):
                return
        alive()
        if time.monotonic() > end:
            raise AssertionError(
                f"the boards did not settle within {timeout:.0f} s: status says "
                f"{states or report['problems']}, the watermark names {sorted(recorded)} "
                f"unavailable; wanted {wanted}"
            )
        time.sleep(0.05)


def compare(cluster: Cluster, client: redis.Redis, boards: Iterable[Board]) -> str | None:
    """Why Redis differs from the recomputation of ``boards`` (None when it does not)."""
    for board in boards:
        expected = recompute(cluster.dsn, cluster.timezone, board=board)
        try:
            if window_periods(board):
                # After a rebuild the projector's next batch builds the windows: wait for it.
                _wait_for_windows(cluster, client)
            actual = read_redis(client, PREFIX, board)  # asserts every score is positive
            if window_periods(board):
                actual = _check_windows(cluster, client, board, actual)
            assert_same(actual, expected)
        except AssertionError as exc:
            message = str(exc)
            if message.startswith("display names differ"):
                message = _name_diff(message, actual.names, expected.names)
            return f"board {board.name!r}: {message}"
    return None


# The rolling windows, recomputed with local dates alone.
_WINDOW_SQL = """
SELECT {member}::text, count(*) FROM {table}
 WHERE {member} IS NOT NULL AND isfinite({time})
   AND ({time} AT TIME ZONE %(tz)s)::date BETWEEN %(first)s AND %(last)s
 GROUP BY 1
"""


def _wait_for_windows(cluster: Cluster, client: redis.Redis) -> None:
    """The windows must end today (the projector moves them at midnight, and builds them in
    its first batch after a rebuild) within a few seconds."""
    today = datetime.now(ZoneInfo(cluster.timezone)).date()
    deadline = time.monotonic() + 5
    while watermark(client, PREFIX).get("window_day") != today.isoformat():
        if time.monotonic() > deadline:
            raise AssertionError(f"the windows do not end today ({watermark(client, PREFIX)})")
        time.sleep(0.05)


def _check_windows(
    cluster: Cluster, client: redis.Redis, board: Board, actual: Expected
) -> Expected:
    """The board's windows equal the recomputation; return ``actual`` without them
    (``recompute`` has no windows)."""
    today = date.fromisoformat(watermark(client, PREFIX)["window_day"])
    query = sql.SQL(_WINDOW_SQL).format(
        member=sql.Identifier(board.member),
        time=sql.Identifier(board.time),
        table=sql.Identifier(board.table.schema, board.table.name),
    )
    with psycopg.connect(cluster.dsn) as conn:
        for period in window_periods(board):
            first = today - timedelta(days=WINDOW_LENGTHS[period] - 1)
            params = {"tz": cluster.timezone, "first": first, "last": today}
            want = {str(m): int(c) for m, c in conn.execute(query, params)}
            have = actual.boards.get((period.value, today.isoformat()), {})
            if have != want:
                raise AssertionError(f"{period} ending {today}: (redis, postgres) {have}, {want}")
    kept = {k: v for k, v in actual.boards.items() if k[0] not in ("last7", "last30")}
    return Expected(kept, actual.names)


def _settings(cluster: Cluster) -> Settings:
    """The settings of the projectors (direct addresses), for ``status``."""
    return load_settings(**cluster.projector_config(cluster.timezone, proxied=False))


def _name_diff(message: str, have: dict[str, str], want: dict[str, str]) -> str:
    """assert_same says that names differ; say which (names may be kilobytes long)."""
    lines = [message]
    for user in sorted(have.keys() | want.keys()):
        if have.get(user) != want.get(user):
            lines.append(
                f"  {user}: redis {_short(have.get(user))}, postgres {_short(want.get(user))}"
            )
    return "\n".join(lines[:30])


def _short(name: str | None) -> str:
    if name is None:
        return "absent"
    return repr(name) if len(name) <= 40 else f"{name[:20]!r}... ({len(name)} chars)"
