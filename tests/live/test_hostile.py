"""A public API that holds, against real servers: ``python -m api`` (real uvicorn) refuses heads
that cost too much, caps connections and event streams, shares PostgreSQL work between
clients, and reads Redis once per board per update whatever the clients ask for."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from .support import Stack, insert_pomodoros, start_stack

# Small bounds, so that reaching them takes a few connections.
LIMITS = {
    "api_max_connections": 40,
    "api_max_streams": 6,
    "api_max_streams_per_client": 3,
    "api_header_timeout": 1.0,
    "api_max_headers": 50,
    "api_max_header_bytes": 8192,
}


@pytest.fixture(scope="module")
def hostile(
    postgres_server: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The whole system with small bounds, shared by the tests of this module."""
    logs = tmp_path_factory.mktemp("hostile")
    system, database = start_stack(postgres_server, redis_server, logs, "hostile", **LIMITS)
    try:
        insert_pomodoros(system.dsn, [("ann", None), ("bob", None)], {"ann": "Ann"})
        with redis.Redis.from_url(system.config["redis_url"]) as client:
            system.caught_up(client)
        yield system
    finally:
        system.stop()
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{system.prefix}*"))
            if keys:
                client.delete(*keys)
        postgres_server.drop_database(database)


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def _raw_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _port(stack: Stack) -> int:
    return stack.api.port


def test_a_32_mib_request_line_is_refused_without_the_worker_growing(hostile: Stack) -> None:
    """A 32 MiB request line gets 414 before it is read whole; the worker's peak RSS stays put."""
    pid = hostile.api.proc.pid
    before = _peak_rss_kib(pid)
    chunk = b"a" * 65536
    sent = 0
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", _port(hostile))) as sock:
        sock.sendall(b"GET /v1/leaderboards/day?x=")
        try:
            while sent < 32 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _raw_response(sock)
    elapsed = time.monotonic() - started
    assert sent < 16 << 20, f"the server read {sent} bytes of the request line"
    assert elapsed < 3.0
    assert answer == b"" or answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    grown = _peak_rss_kib(pid) - before
    assert grown < 8 * 1024, f"the worker's peak RSS grew by {grown} KiB"
    assert httpx.get(hostile.api.base_url + "/healthz").status_code == 200


def test_a_long_request_line_gets_a_json_414(hostile: Stack) -> None:
    """A request line over the limit (8 KiB by default) is answered 414 with a JSON body."""
    response = httpx.get(hostile.api.base_url + "/v1/leaderboards/day?x=" + "a" * 9000)
    assert response.status_code == 414
    assert response.json()["error"]["code"] == "request_line_too_long"


def test_too_many_or_too_large_header_fields_get_431(hostile: Stack) -> None:
    """More header fields than PROJECTOR_API_MAX_HEADERS, or a head over
    PROJECTOR_API_MAX_HEADER_BYTES, is answered 431 and the connection closed."""
    many = {f"x-h{i}": "1" for i in range(60)}
    response = httpx.get(hostile.api.base_url + "/healthz", headers=many)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers_too_large"
    large = {"x-large": "b" * 20_000}
    response = httpx.get(hostile.api.base_url + "/healthz", headers=large)
    assert response.status_code == 431
    assert httpx.get(hostile.api.base_url + "/healthz").status_code == 200


def test_a_head_that_never_completes_is_closed_after_the_header_timeout(hostile: Stack) -> None:
    """A client that sends half a head and stalls gets 408 and a closed connection after
    PROJECTOR_API_HEADER_TIMEOUT (1 s here), instead of holding the connection forever."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", _port(hostile))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = _raw_response(sock, timeout=5.0)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 0.8 < elapsed < 3.0


def test_connections_beyond_the_cap_get_a_clear_503(hostile: Stack) -> None:
    """With PROJECTOR_API_MAX_CONNECTIONS connections open, a request gets 503 with a JSON
    body and Retry-After at once; once they close, requests are served again."""
    idle = [socket.create_connection(("127.0.0.1", _port(hostile))) for _ in range(45)]
    try:
        time.sleep(0.2)  # every connection accepted by the worker
        started = time.monotonic()
        response = httpx.get(hostile.api.base_url + "/healthz", timeout=5)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "too_many_connections"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(hostile.api.base_url + "/healthz").status_code == 200


def test_json_answers_say_nosniff(hostile: Stack) -> None:
    """Every JSON answer, errors included, carries X-Content-Type-Options: nosniff."""
    for path in ("/v1/leaderboards/day", "/v1/leaderboards/day?limit=0", "/healthz", "/nowhere"):
        response = httpx.get(hostile.api.base_url + path)
        assert response.headers["content-type"] == "application/json", path
        assert response.headers["x-content-type-options"] == "nosniff", path
