"""A TCP forwarder on a loopback port that a test (the soak's nemesis, the standby tests)
can stall or cut.

In the soak the projector reaches PostgreSQL and Redis only through such proxies.
``stall`` stops the bytes (and the closes) in both directions while every connection stays
open; ``cut`` resets every connection and refuses new ones until ``heal``. Threads, one
pair of pumps per connection: the projector opens a handful of connections, never
thousands.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_CHUNK = 65_536
_POLL = 0.05
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def _reset(sock: socket.socket) -> None:
    """Drop a connection abruptly (RST), waking any thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        _reset(self.client)
        _reset(self.server)


class TcpProxy:
    """Forwards connections from ``127.0.0.1:port`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, name: str) -> None:
        self.name = name
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = threading.Event()
        self._shutdown = threading.Event()
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{name}", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now."""
        with self._lock:
            return sum(1 for link in self._links if not link.closed.is_set())

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @property
    def refusing(self) -> bool:
        return self._refusing.is_set()

    def stall(self) -> None:
        """Stop forwarding: connections stay open, bytes and closes wait until ``resume``."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again everything held back by ``stall``."""
        self._flowing.set()

    def cut(self) -> None:
        """Reset every connection and refuse new ones until ``heal``."""
        with self._lock:
            self._refusing.set()
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close()

    def heal(self) -> None:
        """Accept connections and forward bytes again (ends a cut and a stall)."""
        self._refusing.clear()
        self._flowing.set()

    def close(self) -> None:
        """Stop listening and reset every connection."""
        self._shutdown.set()
        self._flowing.set()
        self.cut()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._shutdown.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing.is_set():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            with self._lock:  # a cut may have come while connecting to the target
                refused = self._refusing.is_set()
                if not refused:
                    self._links.add(link)
                    self.accepted += 1
            if refused:
                link.close()
                continue
            for src, dst, way in ((client, server, "up"), (server, client, "down")):
                threading.Thread(
                    target=self._pump,
                    args=(link, src, dst),
                    name=f"proxy-{self.name}-{way}",
                    daemon=True,
                ).start()

    def _wait_flowing(self, link: _Link) -> bool:
        """Block while stalled; False once the link is gone."""
        while not self._flowing.wait(_POLL):
            if link.closed.is_set():
                return False
        return not link.closed.is_set()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                # A stall holds the end of a connection too, not only its bytes.
                if not self._wait_flowing(link) or not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)
