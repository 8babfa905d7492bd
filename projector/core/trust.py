"""When Redis cannot be trusted to equal PostgreSQL: one diagnosis for the projector (which
then rebuilds) and for ``projector status`` (which reports it).

Redis must hold a watermark of this cluster, slot and timeline, not behind what the slot
confirmed (Redis lost writes) nor ahead of the server's WAL (a restore or point-in-time
recovery), and the slot must exist and be valid.
"""

from __future__ import annotations

from projector.core.lsn import format_lsn
from projector.core.watermark import Watermark


def slot_problem(
    slot: str, *, exists: bool, wal_status: str | None, confirmed: int | None
) -> str | None:
    """Why the replication slot cannot be streamed from, or None."""
    if not exists:
        return f"replication slot {slot!r} does not exist"
    if wal_status == "lost" or confirmed is None:
        return f"replication slot {slot!r} was invalidated (wal_status={wal_status})"
    return None


def watermark_problem(
    wm: Watermark,
    *,
    slot: str,
    system_id: str,
    confirmed: int | None,
    server_lsn: int | None,
    timeline: int | None,
) -> str | None:
    """Why Redis' watermark does not prove Redis equals the slot's position, or None.
    ``confirmed``, ``server_lsn`` and ``timeline`` are checked when known."""
    if wm.system_id != system_id:
        return (
            f"PostgreSQL is a different cluster (system id {system_id}, "
            f"watermark names {wm.system_id})"
        )
    if wm.slot != slot:
        return f"Redis was built from slot {wm.slot!r}, not {slot!r}"
    if confirmed is not None and wm.lsn < confirmed:
        return (
            f"Redis watermark {format_lsn(wm.lsn)} is behind the slot's confirmed "
            f"position {format_lsn(confirmed)}: Redis lost data"
        )
    if server_lsn is not None and wm.lsn > server_lsn:
        return (
            f"Redis watermark {format_lsn(wm.lsn)} is ahead of PostgreSQL's WAL "
            f"({format_lsn(server_lsn)}): PostgreSQL was restored from a backup "
            "or recovered to an earlier point"
        )
    # Timeline 0: recorded by a version before timelines were (its fingerprint differs).
    if timeline is not None and wm.timeline and wm.timeline != timeline:
        return (
            f"Redis was built on timeline {wm.timeline}, PostgreSQL is on timeline "
            f"{timeline} (point-in-time recovery or promotion)"
        )
    return None
