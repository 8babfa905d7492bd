"""Malformed requests get 400 naming the parameter, unknown routes 404, other methods 405.

These run the ASGI app in-process with stores that do not exist: every parameter is
validated before a store is touched, so no server is needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from api.app import App, create_app
from projector.settings import load_settings

DEAD = {
    "pg_dsn": "postgresql://nobody@127.0.0.1:1/none",
    "redis_url": "redis://127.0.0.1:1/0",
    "api_pg_timeout": 0.5,
    "api_access_log": False,
}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module's in-process requests."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def app(loop: asyncio.AbstractEventLoop) -> Iterator[App]:
    """An app whose Redis and PostgreSQL are unreachable."""
    application = create_app(load_settings(**DEAD), configure_logs=False)
    yield application
    loop.run_until_complete(application.shutdown())


def call(
    app: App, loop: asyncio.AbstractEventLoop, method: str, raw_path: bytes, query: bytes = b""
) -> tuple[int, dict[bytes, bytes], Any]:
    """Send one request to the ASGI app; return status, headers and the decoded JSON body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": None,
    }
    loop.run_until_complete(app(scope, receive, send))
    start, body = sent
    headers = dict(start["headers"])
    payload = json.loads(body["body"]) if body["body"] else None
    return start["status"], headers, payload


BAD_PARAMETERS = [
    (b"/v1/leaderboards/decade", b"", "period"),
    (b"/v1/leaderboards/DAY", b"", "period"),
    (b"/v1/leaderboards/%FF", b"", "period"),
    (b"/v1/leaderboards/day", b"bucket=2026-13-01", "bucket"),
    (b"/v1/leaderboards/day", b"bucket=2026-02-30", "bucket"),
    (b"/v1/leaderboards/day", b"bucket=2026-2-3", "bucket"),
    (b"/v1/leaderboards/day", b"bucket=0000-01-01", "bucket"),
    (b"/v1/leaderboards/day", b"bucket=all", "bucket"),
    (b"/v1/leaderboards/day", b"bucket=", "bucket"),
    (b"/v1/leaderboards/day", b"bucket=%FF", "bucket"),
    (b"/v1/leaderboards/week", b"bucket=2025-W53", "bucket"),
    (b"/v1/leaderboards/week", b"bucket=2026-w05", "bucket"),
    (b"/v1/leaderboards/month", b"bucket=2026-00", "bucket"),
    (b"/v1/leaderboards/year", b"bucket=%2B2026", "bucket"),
    (b"/v1/leaderboards/all", b"bucket=2026", "bucket"),
    (b"/v1/leaderboards/day", b"limit=0", "limit"),
    (b"/v1/leaderboards/day", b"limit=1001", "limit"),
    (b"/v1/leaderboards/day", b"limit=-1", "limit"),
    (b"/v1/leaderboards/day", b"limit=1.5", "limit"),
    (b"/v1/leaderboards/day", b"limit=%2B5", "limit"),
    (b"/v1/leaderboards/day", b"limit=+5", "limit"),
    (b"/v1/leaderboards/day", b"limit=", "limit"),
    (b"/v1/leaderboards/day", b"limit=" + b"9" * 5000, "limit"),
    (b"/v1/leaderboards/day", b"limit=1&limit=2", "limit"),
    (b"/v1/leaderboards/day", b"offset=-1", "offset"),
    (b"/v1/leaderboards/day", b"offset=1000000001", "offset"),
    (b"/v1/leaderboards/day", b"around=1", "around"),
    (b"/v1/leaderboards/day", b"limt=5", "limt"),
    (b"/v1/leaderboards/day/users/bob", b"around=101", "around"),
    (b"/v1/leaderboards/day/users/bob", b"around=-1", "around"),
    (b"/v1/leaderboards/day/users/bob", b"limit=5", "limit"),
    (b"/v1/leaderboards/day", b"min_lsn=xyz", "min_lsn"),
    (b"/v1/leaderboards/day", b"min_lsn=1/2/3", "min_lsn"),
    (b"/v1/leaderboards/day", b"min_lsn=G/0", "min_lsn"),
    (b"/v1/leaderboards/day", b"min_lsn=123456789/0", "min_lsn"),
    (b"/v1/users/bob", b"min_lsn=", "min_lsn"),
    (b"/v1/users/" + b"x" * 201, b"", "user_id"),
    (b"/v1/users/" + b"%C3%A9" * 201, b"", "user_id"),
    (b"/v1/users/a%00b", b"", "user_id"),
    (b"/v1/users/a%0Ab", b"", "user_id"),
    (b"/v1/users/a%7Fb", b"", "user_id"),
    (b"/v1/users/a%C2%85b", b"", "user_id"),
    (b"/v1/users/%FF", b"", "user_id"),
    (b"/v1/users/", b"", "user_id"),
    (b"/v1/leaderboards/day/users/", b"", "user_id"),
]


@pytest.mark.parametrize(("path", "query", "parameter"), BAD_PARAMETERS)
def test_bad_parameter_is_400_naming_it(
    app: App, loop: asyncio.AbstractEventLoop, path: bytes, query: bytes, parameter: str
) -> None:
    """A malformed or out-of-range parameter is a 400 JSON error that names it."""
    status, headers, body = call(app, loop, "GET", path, query)
    assert status == 400
    assert headers[b"content-type"] == b"application/json"
    assert body["error"]["status"] == 400 and body["error"]["code"] == "bad_parameter"
    assert body["error"]["parameter"] == parameter
    assert parameter in body["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        b"/index.html",
        b"/v1",
        b"/v1/leaderboards",
        b"/v1/leaderboards/day/",
        b"/v1/leaderboards/day/users",
        b"/v1/leaderboards/day/users/a/b",
        b"/v2/leaderboards/day",
        b"/healthz/",
        b"/v1/users",
        b"//v1/users/a",
        b"/v1/users/a/",
        b"/metrics.json",
        b"/%FF",
        b"/static/",
        b"/static/missing.js",
        b"/static/app.js/x",
        b"/v1/leaderboards/day/events/x",
    ],
)
def test_unknown_route_is_404(app: App, loop: asyncio.AbstractEventLoop, path: bytes) -> None:
    """A path that matches no route is a 404 JSON error."""
    status, _, body = call(app, loop, "GET", path)
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_methods_other_than_get_and_head_are_405(
    app: App, loop: asyncio.AbstractEventLoop, method: str
) -> None:
    """Known routes answer other methods with 405 and an Allow header."""
    for path in (b"/v1/leaderboards/day", b"/v1/users/bob", b"/healthz"):
        status, headers, body = call(app, loop, method, path)
        assert status == 405 and headers[b"allow"] == b"GET, HEAD"
        assert body["error"]["code"] == "method_not_allowed"


def test_encoded_slash_is_part_of_the_user_id(app: App, loop: asyncio.AbstractEventLoop) -> None:
    """%2F inside a user id does not split the path; the id reaches the stores (503 here)."""
    status, headers, body = call(app, loop, "GET", b"/v1/leaderboards/day/users/ann%2Fslash")
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert body["error"]["code"] == "unavailable"


def test_valid_request_with_both_stores_down_is_503(
    app: App, loop: asyncio.AbstractEventLoop
) -> None:
    """With Redis and PostgreSQL unreachable a valid query is a 503 JSON error, quickly."""
    for _ in range(5):
        status, headers, body = call(app, loop, "GET", b"/v1/leaderboards/week", b"limit=5")
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert "retry" in body["error"]["message"]
    status, _, body = call(app, loop, "GET", b"/readyz")
    assert status == 503 and body["ready"] is False and body["source"] is None


def test_operations_ignore_query_strings(app: App, loop: asyncio.AbstractEventLoop) -> None:
    """/healthz, /metrics and /openapi.json answer whatever their query string."""
    assert call(app, loop, "GET", b"/healthz", b"x=%FF")[0] == 200
    assert call(app, loop, "GET", b"/openapi.json", b"a=1")[0] == 200
