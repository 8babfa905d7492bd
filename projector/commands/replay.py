"""``projector replay``: an operator-triggered rebuild, safe while ``projector run`` runs.

When a projector holds the slot, it is asked (through Redis) to rebuild between two
batches and this command follows its progress; otherwise this process takes the slot's
advisory lock and rebuilds itself. Either way readers see the old boards until the new
ones are swapped in atomically.
"""

from __future__ import annotations

import sys
import time

import redis

from projector import redis_nodes
from projector.core.errors import ConnectionLost, ProjectorError
from projector.core.lsn import format_lsn
from projector.presence import Presence
from projector.rebuild import RebuildProgress, advisory_lock, rebuild
from projector.settings import Settings
from projector.sink import RedisSink, new_owner
from projector.stream import connect

_PHASES = ("starting", "creating slot", "loading boards", "swapping", "done")


def replay(settings: Settings, *, timeout: float = 3600.0) -> int:
    """Rebuild Redis from a consistent snapshot, showing progress on stderr; 0 on success."""
    client = redis_nodes.client(settings, socket_timeout=None)
    sink = RedisSink(
        client,
        settings.keys,
        owner=new_owner(),
        min_replicas=settings.redis_min_replicas,
        replica_timeout=settings.redis_replica_timeout,
    )
    pg = connect(settings.pg_dsn)
    try:
        with advisory_lock(pg, settings.slot, wait=False) as locked:
            if locked:
                print("no projector is running: rebuilding here", file=sys.stderr)
                wm = rebuild(settings, sink, reason="replay requested by operator", progress=_draw)
                _finish(f"rebuilt at {format_lsn(wm.lsn)}")
                return 0
        pg.close()
        return _ask_running_projector(Presence(sink), timeout)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        sys.stderr.write("\n")  # end the progress line: the error gets a line of its own
        raise ConnectionLost(f"Redis unreachable: {exc}", service="redis") from exc
    except BaseException:
        sys.stderr.write("\n")
        raise
    finally:
        if not pg.closed:
            pg.close()
        client.close()


def _ask_running_projector(presence: Presence, timeout: float) -> int:
    request = presence.request_replay(int(timeout) + 60)
    print(f"asked the running projector to rebuild (request {request})", file=sys.stderr)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        raw = presence.replay_progress()
        answering = raw.get("id", "")
        # (Ids of replays before this form, random hex, are never later.)
        if answering > request and answering[:11].isdigit():
            # A later replay's request, taken (or even answered) before this one looked: its
            # rebuild starts after this request was made, so it answers this one too.
            request = answering
            print(
                f"\na later replay (request {request}) replaces this one; following it",
                file=sys.stderr,
            )
        if answering == request:
            state = RebuildProgress(
                phase=raw.get("phase", "?"),
                rows=int(raw.get("rows", "0")),
                boards=int(raw.get("boards", "0")),
                started=started,
            )
            _draw(state)
            if state.phase == "done":
                _finish("rebuilt by the running projector")
                return 0
        else:
            pending = presence.replay_request()
            if pending is None:
                raise ProjectorError("the replay request disappeared (Redis flushed?); run again")
            if pending != request:
                # A later replay replaced this request before the projector took it: its
                # rebuild starts after this request was made, so it answers this one too.
                request = pending
                print(
                    f"\na later replay (request {request}) replaces this one; following it",
                    file=sys.stderr,
                )
        time.sleep(0.25)
    presence.withdraw_replay()
    raise ProjectorError(f"the projector did not finish the rebuild within {timeout:.0f}s")


def _draw(state: RebuildProgress) -> None:
    index = _PHASES.index(state.phase) if state.phase in _PHASES else 0
    width = 30
    filled = int(width * index / (len(_PHASES) - 1))
    bar = "#" * filled + "-" * (width - filled)
    line = (
        f"\r[{bar}] {state.phase:<15} {state.rows:>12,} rows {state.boards:>5} boards "
        f"{state.rate:>10,.0f} rows/s"
    )
    sys.stderr.write(line)
    sys.stderr.flush()


def _finish(message: str) -> None:
    sys.stderr.write("\n")
    print(message)
