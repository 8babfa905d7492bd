"""A public API that holds, against real servers: ``python -m api`` (real uvicorn) refuses heads
that cost too much, caps connections and event streams, shares PostgreSQL work between
clients, and reads Redis once per board per update whatever the clients ask for."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from harness.servers import free_port

from .support import ApiProcess, Stack, insert_pomodoros, start_stack

# Small bounds, so that reaching them takes a few connections.
LIMITS = {
    "api_max_connections": 40,
    "api_max_streams": 6,
    "api_max_streams_per_client": 3,
    "api_header_timeout": 1.0,
    "api_max_headers": 50,
    "api_max_header_bytes": 8192,
    "retention_day_days": 35,  # day buckets older than that are answered by PostgreSQL
}
# An expired day bucket with 300 members: member m0001 .. m0300 scores (i % 7) + 1.
EXPIRED_DAY = (datetime.now(UTC) - timedelta(days=100)).date()
EXPIRED_MEMBERS = {f"m{i:04d}": i % 7 + 1 for i in range(1, 301)}


@pytest.fixture(scope="module")
def hostile(
    postgres_server: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The whole system with small bounds, shared by the tests of this module."""
    logs = tmp_path_factory.mktemp("hostile")
    system, database = start_stack(postgres_server, redis_server, logs, "hostile", **LIMITS)
    try:
        insert_pomodoros(system.dsn, [("ann", None), ("bob", None)], {"ann": "Ann"})
        noon = datetime.combine(EXPIRED_DAY, datetime.min.time(), UTC) + timedelta(hours=12)
        old = [(m, noon) for m, score in EXPIRED_MEMBERS.items() for _ in range(score)]
        insert_pomodoros(system.dsn, old)
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
    # Warm up what a refusal runs, so that only the request line could move the peak.
    httpx.get(hostile.api.base_url + "/v1/leaderboards/day?x=" + "a" * 9000)
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


def _table_scans(dsn: str) -> int:
    """Scans of ``pomodoros`` so far (sequential or by index), with the API's sessions ended
    first: a backend reports its counts when it exits, not after every statement."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pomodoro-api'"
        )
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pomodoro-api'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        row = conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            " WHERE relname = 'pomodoros'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _expected_expired_ranking() -> list[dict[str, Any]]:
    order = sorted(EXPIRED_MEMBERS.items(), key=lambda item: (-item[1], item[0]))
    scores = list(EXPIRED_MEMBERS.values())
    return [
        {
            "rank": 1 + sum(1 for other in scores if other > score),
            "user_id": member,
            "display_name": None,
            "score": score,
        }
        for member, score in order
    ]


def test_expired_bucket_reads_with_random_offsets_cost_at_most_a_few_scans(
    hostile: Stack,
) -> None:
    """200 concurrent reads of one expired bucket with random offsets and limits are answered
    correctly from PostgreSQL with at most 3 scans of pomodoros (one shared ranking)."""
    path = f"/v1/leaderboards/day?bucket={EXPIRED_DAY.isoformat()}"
    expected = _expected_expired_ranking()
    rng = random.Random(7)
    pages = [(rng.randrange(0, 320), rng.randrange(1, 60)) for _ in range(200)]
    before = _table_scans(hostile.dsn)

    async def read_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=hostile.api.base_url, limits=limits) as client:
            return await asyncio.gather(
                *(client.get(f"{path}&offset={o}&limit={n}", timeout=30) for o, n in pages)
            )

    responses = asyncio.run(read_all())
    scans = _table_scans(hostile.dsn) - before
    for (offset, limit), response in zip(pages, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["source"] == "postgres" and body["total"] == len(EXPIRED_MEMBERS)
        assert body["entries"] == expected[offset : offset + limit], (offset, limit)
    assert 1 <= scans <= 3, f"{scans} scans of pomodoros for 200 reads of one expired bucket"


def test_expired_bucket_standings_are_slices_of_the_same_ranking(hostile: Stack) -> None:
    """100 standings in an expired bucket (random members and neighbours) are answered
    correctly from one ranking: at most 3 scans of pomodoros; a member off the board too."""
    expected = _expected_expired_ranking()
    position = {entry["user_id"]: i for i, entry in enumerate(expected)}
    rng = random.Random(11)
    asked = [(rng.choice(list(EXPIRED_MEMBERS)), rng.randrange(0, 6)) for _ in range(100)]
    bucket = EXPIRED_DAY.isoformat()
    before = _table_scans(hostile.dsn)

    async def read_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=hostile.api.base_url, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.get(f"/v1/leaderboards/day/users/{m}?bucket={bucket}&around={n}")
                    for m, n in asked
                )
            )

    responses = asyncio.run(read_all())
    scans = _table_scans(hostile.dsn) - before
    for (member, around), response in zip(asked, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        i = position[member]
        assert body["source"] == "postgres" and body["total"] == len(EXPIRED_MEMBERS)
        assert (body["rank"], body["score"]) == (expected[i]["rank"], expected[i]["score"])
        assert body["above"] == expected[max(0, i - around) : i], (member, around)
        assert body["below"] == expected[i + 1 : i + 1 + around], (member, around)
    # None at all when the board reads of the test before left the ranking kept.
    assert scans <= 3, f"{scans} scans of pomodoros for 100 standings in one bucket"
    absent = httpx.get(
        f"{hostile.api.base_url}/v1/leaderboards/day/users/ann?bucket={bucket}&around=2"
    ).json()
    assert (absent["rank"], absent["score"], absent["display_name"]) == (None, 0, "Ann")


def test_fallback_statements_beyond_the_bound_get_503_at_once(hostile: Stack) -> None:
    """With PROJECTOR_API_PG_CONCURRENCY=1 and PROJECTOR_API_PG_QUEUE=0, a fallback query
    while one is running gets 503 (JSON, Retry-After) at once instead of waiting."""
    env = {
        **hostile.env,
        "PROJECTOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nobody listens
        "PROJECTOR_API_PG_CONCURRENCY": "1",
        "PROJECTOR_API_PG_QUEUE": "0",
    }
    api = ApiProcess(env, hostile.logs / "api-busy.log")
    blocked: list[httpx.Response] = []
    try:
        with psycopg.connect(hostile.dsn) as lock:
            lock.execute("LOCK TABLE pomodoros IN ACCESS EXCLUSIVE MODE")
            first = threading.Thread(
                target=lambda: blocked.append(
                    httpx.get(api.base_url + "/v1/leaderboards/week", timeout=30)
                )
            )
            first.start()
            time.sleep(0.5)  # the first query waits for the lock, holding the one slot
            started = time.monotonic()
            response = httpx.get(api.base_url + "/v1/leaderboards/month", timeout=30)
            elapsed = time.monotonic() - started
            lock.rollback()
        first.join(30)
    finally:
        api.stop()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "fallback_busy"
    assert response.headers["retry-after"] == "1"
    assert elapsed < 1.0
    assert blocked and blocked[0].status_code == 200, blocked


class _Stream:
    """An event stream opened from the local address ``source``, kept open until ``close``."""

    def __init__(
        self, base_url: str, path: str, source: str = "127.0.0.1", forwarded_for: str = ""
    ) -> None:
        self.client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(10.0, read=5.0),
            transport=httpx.HTTPTransport(local_address=source),
            headers={"x-forwarded-for": forwarded_for} if forwarded_for else None,
        )
        self._context = self.client.stream("GET", path)
        self.response = self._context.__enter__()
        self.status_code = self.response.status_code

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.client.close()


def _close_streams(streams: list[_Stream]) -> None:
    for stream in streams:
        stream.close()


def test_streams_beyond_the_per_address_cap_get_429_with_retry_after(hostile: Stack) -> None:
    """A client address holding PROJECTOR_API_MAX_STREAMS_PER_CLIENT streams (3 here) gets 429
    with Retry-After and a JSON body for the next one; another address still gets a stream."""
    streams = [_Stream(hostile.api.base_url, "/v1/leaderboards/day/events") for _ in range(3)]
    try:
        assert [stream.status_code for stream in streams] == [200] * 3
        refused = httpx.get(hostile.api.base_url + "/v1/leaderboards/week/events?limit=3")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == "too_many_streams"
        other = _Stream(hostile.api.base_url, "/v1/leaderboards/day/events", "127.0.0.2")
        streams.append(other)
        assert other.status_code == 200
    finally:
        _close_streams(streams)


def test_streams_beyond_the_per_worker_cap_get_429(hostile: Stack) -> None:
    """A worker holding PROJECTOR_API_MAX_STREAMS streams (6 here, from three addresses) answers
    429 to any address; once they close, streams are served again."""
    streams = [
        _Stream(hostile.api.base_url, "/v1/leaderboards/day/events", f"127.0.0.{n}")
        for n in (11, 11, 12, 12, 13, 13)
    ]
    try:
        assert [stream.status_code for stream in streams] == [200] * 6
        refused = httpx.get(hostile.api.base_url + "/v1/leaderboards/day/events")
        assert refused.status_code == 429
        assert "retry-after" in refused.headers
        assert refused.json()["error"]["code"] == "too_many_streams"
    finally:
        _close_streams(streams)
    deadline = time.monotonic() + 5
    while True:
        stream = _Stream(hostile.api.base_url, "/v1/leaderboards/day/events")
        status = stream.status_code
        stream.close()
        if status == 200:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_behind_a_trusted_proxy_streams_are_counted_per_forwarded_client(hostile: Stack) -> None:
    """With PROJECTOR_API_TRUSTED_PROXIES naming the proxy, the per-address cap counts the
    clients X-Forwarded-For names, not the proxy: one is refused, another still served."""
    env = {**hostile.env, "PROJECTOR_API_TRUSTED_PROXIES": "127.0.0.1"}
    api = ApiProcess(env, hostile.logs / "api-proxied.log")
    streams: list[_Stream] = []
    try:
        path = "/v1/leaderboards/day/events"
        streams = [_Stream(api.base_url, path, forwarded_for="203.0.113.7") for _ in range(3)]
        assert [stream.status_code for stream in streams] == [200] * 3
        refused = httpx.get(api.base_url + path, headers={"x-forwarded-for": "203.0.113.7"})
        assert refused.status_code == 429
        streams.append(_Stream(api.base_url, path, forwarded_for="203.0.113.8"))
        assert streams[-1].status_code == 200
    finally:
        _close_streams(streams)
        api.stop()


def _board_reads(client: redis.Redis) -> int:
    """Read functions Redis has run so far (every board read is one FCALL_RO)."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_fcall_ro", {}).get("calls", 0))


def test_one_redis_read_per_board_per_update_whatever_the_limits(hostile: Stack) -> None:
    """Streams of one board with five different limits cost one Redis read per update (the
    largest limit, sliced for each), and each gets its own slice of the new state."""
    limits = [1, 2, 3, 5, 8]
    streams = [
        _Stream(hostile.api.base_url, f"/v1/leaderboards/day/events?limit={n}", f"127.0.1.{n}")
        for n in limits
    ]
    rds = redis.Redis.from_url(hostile.config["redis_url"])
    try:
        lines = [stream.response.iter_lines() for stream in streams]
        for it in lines:
            _next_data(it)  # the first event
        time.sleep(0.3)  # quiet: no read in flight
        before = _board_reads(rds)
        insert_pomodoros(hostile.dsn, [("zed", None)] * 5, {"zed": "Zed"})
        bodies = [_next_data(it) for it in lines]
        time.sleep(0.3)
        reads = _board_reads(rds) - before
    finally:
        _close_streams(streams)
        rds.close()
    for limit, body in zip(limits, bodies, strict=True):
        assert body["limit"] == limit and len(body["entries"]) == min(limit, body["total"])
        assert body["entries"][0]["user_id"] == "zed"
    # One update is one read; a keepalive of the projector may move the watermark once more.
    assert 1 <= reads <= 2, f"{reads} board reads for one update of one board"


def _next_data(lines: Iterator[str]) -> dict[str, Any]:
    for line in lines:
        if line.startswith("data: "):
            body: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return body
    raise AssertionError("the stream ended")
