"""``projector status``: one health report of slot, lag, watermark and Redis.

``collect_status`` gathers it (never raising for an unreachable service: that is part of
the report), ``print_status`` renders a table or JSON and returns the exit code:
0 healthy, 1 unhealthy (slot missing or lost, projector not alive, lag too high, Redis
down or unbuilt, a board unavailable). Each declared board's state (live, unavailable with
its problem and fix, building, or rebuilding after partition maintenance) is listed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis

from projector import redis_nodes
from projector.core.boards import Table
from projector.core.buckets import WINDOW_LENGTHS, Period, current_bucket
from projector.core.fingerprint import board_states, same_layout
from projector.core.lsn import format_lsn, parse_lsn
from projector.core.trust import slot_problem, watermark_problem
from projector.core.watermark import Watermark
from projector.presence import Presence
from projector.schema import partition_states, schema_problems
from projector.settings import Settings
from projector.sink import RedisSink, as_text
from projector.stream import slot_info, system_identifier


def collect_status(settings: Settings) -> dict[str, Any]:
    """Everything an operator or a probe needs, as plain JSON-able data."""
    report: dict[str, Any] = {
        "slot": {"name": settings.slot, "exists": False},
        "postgres": {"reachable": False, "dsn": settings.redacted_dsn},
        "redis": {"reachable": False, "url": redis_nodes.describe(settings)},
        "watermark": None,
        "projector": {"alive": False},
        "standbys": [],
        "lag": {"bytes": None, "seconds": None},
        "boards": {},
        "problems": [],
    }
    problems: list[str] = report["problems"]
    server_lsn: int | None = None
    system_id: str | None = None
    schema: dict[str, str] = {}
    confirmed: int | None = None
    partitions: dict[Table, str] = {}
    try:
        with psycopg.connect(settings.pg_dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()"
                " ELSE pg_current_wal_lsn() END::text, current_setting('server_version')"
            ).fetchone()
            assert row is not None
            server_lsn = parse_lsn(str(row[0]))
            system_id = system_identifier(conn)
            report["postgres"].update(
                reachable=True,
                version=str(row[1]),
                server_lsn=format_lsn(server_lsn),
                system_id=system_id,
            )
            schema = schema_problems(conn, settings.boards, settings.publication)
            partitions = partition_states(conn, {b.table for b in settings.boards})
            slot = slot_info(conn, settings.slot)
            confirmed = slot.confirmed_flush_lsn if slot else None
            problem = slot_problem(
                settings.slot,
                exists=slot is not None,
                wal_status=slot.wal_status if slot else None,
                confirmed=confirmed,
            )
            if problem is not None:
                problems.append(f"{problem}: the projector rebuilds Redis")
            if slot is not None:
                report["slot"].update(
                    exists=True,
                    database=slot.database,
                    active=slot.active,
                    active_pid=slot.active_pid,
                    wal_status=slot.wal_status,
                    safe_wal_size=slot.safe_wal_size,
                    restart_lsn=_lsn(slot.restart_lsn),
                    confirmed_flush_lsn=_lsn(slot.confirmed_flush_lsn),
                    retained_wal_bytes=slot.retained_bytes,
                )
                if (slot.retained_bytes or 0) > settings.wal_warning_bytes:
                    problems.append(
                        f"slot retains {slot.retained_bytes} bytes of WAL "
                        f"(threshold {settings.wal_warning_bytes})"
                    )
    except psycopg.Error as exc:
        report["postgres"]["error"] = _first_line(exc)
        problems.append("PostgreSQL unreachable")

    client = redis_nodes.client(settings, socket_timeout=5, connect_timeout=3)
    try:
        info = client.info()
        sink = RedisSink(client, settings.keys)
        wm = sink.read_watermark()
        policy = str(info.get("maxmemory_policy", "unknown"))
        report["redis"].update(
            reachable=True,
            version=info.get("redis_version"),
            used_memory=info.get("used_memory"),
            used_memory_human=info.get("used_memory_human"),
            maxmemory_policy=policy,
            boards=_board_sizes(client, settings, wm.window_day if wm else ""),
        )
        if policy != "noeviction":
            problems.append(
                f"Redis maxmemory-policy is {policy!r}: boards may be evicted; set noeviction"
            )
        beat = {as_text(k): as_text(v) for k, v in client.hgetall(sink.keys.heartbeat).items()}
        if beat:
            report["projector"] = {
                "alive": True,
                "pid": int(beat.get("pid", "0")),
                "host": beat.get("host"),
                "state": beat.get("state"),
                "owner": beat.get("owner") or None,
                "seconds_since_heartbeat": round(time.time() - float(beat.get("at", "0")), 3),
            }
        else:
            problems.append("projector is not alive (no heartbeat)")
        report["standbys"] = Presence(sink).standbys()
        report["redis"]["role"] = info.get("role")
        report["redis"]["connected_replicas"] = info.get("connected_slaves")
        if wm is None:
            problems.append("Redis holds no watermark (not built, or lost its data)")
        else:
            report["watermark"] = _watermark(wm)
            if system_id is not None:
                problem = watermark_problem(
                    wm,
                    slot=settings.slot,
                    system_id=system_id,
                    confirmed=confirmed,
                    server_lsn=server_lsn,
                    timeline=None,  # IDENTIFY_SYSTEM's: the projector checks it
                )
                if problem is not None:
                    problems.append(f"{problem}: the projector rebuilds Redis")
            effective = [b for b in settings.boards if b.name not in schema]
            config = settings.projection_config(effective, partitions)
            report["watermark"]["config_matches"] = wm.fingerprint == config.fingerprint
            if not same_layout(wm.config, config):
                problems.append(
                    "Redis was built under another configuration ("
                    + "; ".join(config.changes_since(wm.config))
                    + "): the projector rebuilds it on start"
                )
            else:
                states = board_states(wm.config, wm.unavailable_boards(), config, schema)
                report["boards"] = states
                problems.extend(
                    state["detail"] for state in states.values() if state["state"] == "unavailable"
                )
            if server_lsn is not None:
                lag_bytes = max(0, server_lsn - wm.lsn)
                report["lag"]["bytes"] = lag_bytes
                updated = wm_updated_at(client, sink)
                lag_seconds = 0.0
                if lag_bytes > 0 and updated is not None:
                    lag_seconds = max(0.0, time.time() - updated)
                report["lag"]["seconds"] = round(lag_seconds, 3)
                if lag_seconds > settings.lag_unhealthy_seconds:
                    problems.append(
                        f"lag {lag_seconds:.0f}s exceeds {settings.lag_unhealthy_seconds:.0f}s"
                    )
    except redis.RedisError as exc:
        report["redis"]["error"] = _first_line(exc)
        problems.append("Redis unreachable")
    finally:
        client.close()
    report["healthy"] = not problems
    return report


def wm_updated_at(client: redis.Redis, sink: RedisSink) -> float | None:
    """Unix time the watermark was last written, if recorded."""
    raw = client.hget(sink.keys.watermark, "updated_at")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(as_text(raw)).timestamp()
    except ValueError:
        return None


def print_status(settings: Settings, *, as_json: bool) -> int:
    """Print the status report; return 0 when healthy, 1 otherwise."""
    report = collect_status(settings)
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_status(report))
    return 0 if report["healthy"] else 1


def render_status(report: dict[str, Any]) -> str:
    """A human table of the status report."""
    slot, pg, rd = report["slot"], report["postgres"], report["redis"]
    wm, proj, lag = report["watermark"], report["projector"], report["lag"]
    rows: list[tuple[str, str]] = [
        ("health", "OK" if report["healthy"] else "UNHEALTHY"),
        (
            "postgres",
            f"{pg['dsn']} "
            + (
                f"v{pg.get('version')} at {pg.get('server_lsn')}"
                if pg["reachable"]
                else f"DOWN: {pg.get('error')}"
            ),
        ),
        ("slot", _slot_line(slot)),
        (
            "retained WAL",
            _bytes(slot.get("retained_wal_bytes"))
            + (
                f" (safe_wal_size {_bytes(slot.get('safe_wal_size'))})"
                if slot.get("safe_wal_size") is not None
                else ""
            ),
        ),
        (
            "watermark",
            f"{wm['lsn']} commit {wm['commit_time'] or '-'}"
            + (f", windows ending {wm['window_day']}" if wm.get("window_day") else "")
            if wm
            else "none",
        ),
        (
            "lag",
            f"{_bytes(lag['bytes'])}, {lag['seconds']} s"
            if lag["bytes"] is not None
            else "unknown",
        ),
        (
            "projector",
            (
                f"alive pid {proj.get('pid')} on {proj.get('host')} "
                f"({proj.get('state')}, beat {proj.get('seconds_since_heartbeat')} s ago)"
            )
            if proj["alive"]
            else "NOT ALIVE",
        ),
        ("standby", ", ".join(report["standbys"]) or "none"),
        (
            "redis",
            f"{rd['url']} "
            + (
                f"v{rd.get('version')} {rd.get('role')} with {rd.get('connected_replicas')} "
                f"replica(s), {rd.get('used_memory_human')} used, "
                f"maxmemory-policy {rd.get('maxmemory_policy')}"
                if rd["reachable"]
                else f"DOWN: {rd.get('error')}"
            ),
        ),
    ]
    for name, state in report["boards"].items():
        rows.append((f"board {name}", state["state"]))
        if state["state"] not in ("live", "unavailable"):  # unavailable: a problem below
            rows.append(("", state["detail"]))
    for name, size in (rd.get("boards") or {}).items():
        rows.append((f"  board {name}", f"{size['key']}: {size['members']} members"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines.extend(f"problem: {p}" for p in report["problems"])
    return "\n".join(lines)


def _board_sizes(
    client: redis.Redis, settings: Settings, window_day: str
) -> dict[str, dict[str, Any]]:
    """The size of each board's current bucket, named ``board/period``; of a rolling window,
    the one Redis holds (ending on the watermark's ``window_day``; absent before it has one)."""
    tz = settings.zone

    def bucket(period: Period) -> str:
        if period is Period.ALL:
            return "all"
        if period in WINDOW_LENGTHS:
            return window_day
        return current_bucket(period, tz, datetime.now(UTC))

    keys = {
        f"{board.name}/{period}": settings.keys.board(board.name, period, bucket(period))
        for board in settings.boards
        for period in board.periods
        if period not in WINDOW_LENGTHS or window_day
    }
    pipe = client.pipeline(transaction=False)
    for key in keys.values():
        pipe.zcard(key)
    sizes = pipe.execute()
    return {
        name: {"key": key, "members": int(size)}
        for (name, key), size in zip(keys.items(), sizes, strict=True)
    }


def _watermark(wm: Watermark) -> dict[str, Any]:
    return {
        "lsn": format_lsn(wm.lsn),
        "commit_time": wm.commit_time.isoformat() if wm.commit_time else None,
        "system_id": wm.system_id,
        "slot": wm.slot,
        "timeline": wm.timeline,
        "fingerprint": wm.fingerprint,
        "window_day": wm.window_day or None,
        "partial_transaction": (
            {"commit_lsn": format_lsn(wm.tx_lsn), "rows_applied": wm.tx_rows} if wm.tx_lsn else None
        ),
        "age_seconds": (
            round((datetime.now(UTC) - wm.commit_time).total_seconds(), 3)
            if wm.commit_time
            else None
        ),
    }


def _slot_line(slot: dict[str, Any]) -> str:
    if not slot["exists"]:
        return f"{slot['name']}: MISSING"
    active = f"active (pid {slot['active_pid']})" if slot["active"] else "inactive"
    return (
        f"{slot['name']}: {active}, wal_status {slot['wal_status']}, confirmed "
        f"{slot['confirmed_flush_lsn']}, restart {slot['restart_lsn']}"
    )


def _lsn(value: int | None) -> str | None:
    return format_lsn(value) if value is not None else None


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
