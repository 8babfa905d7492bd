"""The soak's TCP proxy: it forwards, stalls and cuts as the nemesis expects."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from harness.tcp_proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback server that echoes every byte back."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port
    listener.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", echo_port, "echo").start()
    yield proxy
    proxy.close()


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    """Bytes sent through the proxy reach the server and its answer comes back."""
    with _connect(proxy) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert proxy.connections == 1


def test_stall_holds_bytes_until_resumed(proxy: TcpProxy) -> None:
    """During a stall the connection stays open but nothing arrives; resume delivers it."""
    with _connect(proxy) as sock:
        proxy.stall()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        proxy.resume()
        sock.settimeout(2)
        assert sock.recv(4) == b"held"


def _echoed(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and read its echo; an ended connection raises (OSError)."""
    sock.sendall(data)
    answer = sock.recv(len(data))
    if not answer:
        raise ConnectionResetError("the connection ended")
    return answer


def test_cut_resets_connections_and_refuses_until_healed(proxy: TcpProxy) -> None:
    """A cut drops open connections; new ones fail until heal, then work again."""
    with _connect(proxy) as sock:
        assert _echoed(sock, b"before") == b"before"
        proxy.cut()
        with pytest.raises(OSError):
            _echoed(sock, b"x")
    with pytest.raises(OSError), _connect(proxy) as refused:
        _echoed(refused, b"y")
    proxy.heal()
    with _connect(proxy) as sock:
        assert _echoed(sock, b"back") == b"back"
