"""Hot standby: which of several ``projector run`` processes drives the slot.

The process holding the slot's session advisory lock drives it; the others poll the lock and
stand by. The lock lives exactly as long as its PostgreSQL session, and the session as long
as its process proves it is alive: the lock's session runs with ``idle_session_timeout =
PROJECTOR_TAKEOVER_TIMEOUT`` and a keeper thread touches it every third of that. So
PostgreSQL itself ends the session, and frees the lock, of a driver that died (kill -9, host
loss: at once, as the socket closes), paused (SIGSTOP, or a stall that holds the
interpreter) or was cut off by a partition (after the timeout). A driver merely waiting on a
slow Redis keeps the lock: a standby could do no better. The standby that takes the lock
then ends the former driver's walsender, if it still holds the slot, and claims Redis with a
new fencing token (``Presence.claim``): should the former driver wake up, its next write is
refused ("FENCED") and it goes back to standing by. Nothing here is consensus of our own:
PostgreSQL's lock picks the driver, Redis' compare-and-set fences the loser.

Takeover time: at most ``takeover_timeout`` for PostgreSQL to notice, plus the standby's
poll interval (``takeover_timeout / 5``, at most 1 s), plus a session start.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import structlog

from projector.core.errors import ConnectionLost
from projector.settings import Settings
from projector.stream import connect

log = structlog.get_logger(__name__)

# pg_advisory_lock(LOCK_CLASS, hashtext(slot)): one lock per slot name ("PMDR"; every
# version uses it, so old and new processes exclude each other during an upgrade).
LOCK_CLASS = 0x504D4452
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
# How long the former driver's walsender may take to go once told to.
_SLOT_RELEASE_TIMEOUT = 30.0


class SlotLock:
    """The slot's advisory lock on a session PostgreSQL ends when this process falls silent."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.timeout = settings.takeover_timeout
        self.touch_interval = self.timeout / 3
        self.poll_interval = min(1.0, self.timeout / 5)
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._session: psycopg.Connection[tuple[object, ...]] | None = None
        self._keeper: threading.Thread | None = None
        self._released = threading.Event()
        self._lost: str | None = None

    def acquire(self, on_standby: Callable[[bool], None]) -> None:
        """Return holding the lock (``conn`` set), or with ``conn`` None once ``stop`` is set;
        ``on_standby(first)`` runs at each poll another process wins."""
        session = self._session = connect(self.settings.pg_dsn)
        self._keep_alive_only_while_touched(session)
        first = True
        while not self.stop.is_set():
            row = session.execute(_TRY_LOCK, (LOCK_CLASS, self.settings.slot)).fetchone()
            if row and row[0]:
                self.conn = session
                self._keeper = threading.Thread(target=self._keep, name="slot-lock", daemon=True)
                self._keeper.start()
                return
            on_standby(first)
            first = False
            self.stop.wait(self.poll_interval)

    @property
    def pg(self) -> psycopg.Connection[tuple[object, ...]]:
        """The lock's session (only while held): usable for the driver's own queries."""
        if self.conn is None:
            raise ConnectionLost("the slot's lock is not held", service="postgres")
        return self.conn

    def check(self) -> None:
        """``ConnectionLost`` once PostgreSQL ended the lock's session (the lock went to a
        standby); cheap: the keeper thread finds out."""
        if self._lost is not None:
            raise ConnectionLost(self._lost, service="postgres")

    def touch(self) -> None:
        """Prove to PostgreSQL that this process is alive; ``ConnectionLost`` if it already
        ended the session (and so gave the lock to a standby)."""
        try:
            self.pg.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            self._lost = (
                f"lost the slot's lock: PostgreSQL ended its session (paused or cut off "
                f"longer than PROJECTOR_TAKEOVER_TIMEOUT={self.timeout:g}s?): {exc}"
            )
            raise ConnectionLost(self._lost, service="postgres") from exc

    def _keep(self) -> None:
        while not self._released.wait(self.touch_interval):
            try:
                self.touch()
            except (ConnectionLost, psycopg.Error) as exc:
                if self._lost is None:
                    self._lost = f"lost the slot's lock: {exc}"
                return

    def take_slot_over(self) -> None:
        """End a former driver's walsender that still streams the slot (it lost the lock:
        dead, paused or cut off), and wait until the slot is free."""
        assert self.conn is not None
        conn, slot = self.conn, self.settings.slot
        deadline = time.monotonic() + _SLOT_RELEASE_TIMEOUT
        told: int | None = None
        while True:
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            pid = row[0] if row else None
            if pid is None:
                return
            if pid != told:
                told = int(str(pid))
                log.warning("taking the slot over from its former driver", slot=slot, pid=told)
                try:
                    conn.execute("SELECT pg_terminate_backend(%s)", (told,))
                except psycopg.errors.InsufficientPrivilege:
                    log.warning(
                        "not allowed to end the former driver's walsender (another role); "
                        "waiting for PostgreSQL's wal_sender_timeout to end it",
                        pid=told,
                    )
            if time.monotonic() > deadline or self.stop.is_set():
                raise ConnectionLost(
                    f"replication slot {slot!r} is still in use by PID {told}", service="postgres"
                )
            time.sleep(0.05)

    def close(self) -> None:
        self._released.set()
        if self._keeper is not None:
            self._keeper.join(5.0)
        session, self._session, self.conn = self._session, None, None
        if session is not None and not session.closed:
            session.close()  # ends the session: the lock goes with it

    def _keep_alive_only_while_touched(
        self, session: psycopg.Connection[tuple[object, ...]]
    ) -> None:
        try:
            session.execute(
                "SELECT set_config('idle_session_timeout', %s, false)",
                (f"{int(self.timeout * 1000)}ms",),
            )
        except psycopg.errors.UndefinedObject:  # PostgreSQL 13 and older
            log.warning(
                "PostgreSQL has no idle_session_timeout (14+): a paused projector keeps the "
                "slot's lock, and standbys take over only when it dies"
            )
