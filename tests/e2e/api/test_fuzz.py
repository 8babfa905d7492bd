"""Fuzzing from the OpenAPI document: no input makes the API fail, and both stores agree.

Hypothesis draws every operation's parameters from their documented schemas, mixed with
out-of-range numbers and arbitrary text; each request goes to the API reading Redis and to
the one falling back to PostgreSQL. Each answer must be documented (200 or 400 with the
documented body), match its response schema, and the two stores' 200s must be identical.
"""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from api import routes
from api.openapi import openapi_document
from projector.core.buckets import Period, expires_at

from .conftest import Dataset
from .support import without_source

DOCUMENT = openapi_document()
REGISTRY = Registry().with_resource(
    "urn:openapi", Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
# The data operations answering JSON (event streams never end: tests/e2e/live covers them).
OPERATIONS = [
    (path, item["get"])
    for path, item in DOCUMENT["paths"].items()
    if path.startswith("/v1/")
    and path != routes.BOARDS.path  # the list of boards: nothing to fuzz, no store to compare
    and "application/json" in item["get"]["responses"]["200"]["content"]
]
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _parameter(ref: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in ref:
        return ref  # declared inline (each board's own period parameter)
    name = ref["$ref"].rsplit("/", 1)[1]
    parameter: dict[str, Any] = DOCUMENT["components"]["parameters"][name]
    return parameter


def _values(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Text for a parameter: documented values, values just outside, and anything at all."""
    anything = st.text(max_size=40) | st.text(st.characters(codec="utf-8"), max_size=250)
    if "enum" in schema:
        documented = st.sampled_from(schema["enum"])
    elif schema.get("type") == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 10**9)
        documented = st.integers(low - 3, min(high + 3, low + 2000)).map(str) | st.sampled_from(
            [str(high), str(high + 1), "-0", "00", "1e3", " 1"]
        )
    elif "pattern" in schema:
        documented = st.from_regex(schema["pattern"], fullmatch=True)
    else:
        documented = st.text(min_size=1, max_size=schema.get("maxLength", 50) + 5)
    return documented | anything


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """A path with query string for one of the data operations, and that operation."""
    template, operation = draw(st.sampled_from(OPERATIONS))
    path = template
    query: dict[str, str] = {}
    for parameter in map(_parameter, operation.get("parameters", [])):
        value = draw(_values(parameter["schema"]))
        if parameter["in"] == "path":
            # "." too: clients drop dot segments (RFC 3986), so a user id "." must be encoded.
            encoded = quote(value, safe="").replace(".", "%2E")
            path = path.replace("{" + parameter["name"] + "}", encoded)
        elif draw(st.booleans()):
            query[parameter["name"]] = value
    if draw(st.integers(0, 9)) == 0:
        query[draw(st.text(min_size=1, max_size=8))] = draw(st.text(max_size=8))
    target = path + ("?" + urlencode(query) if query else "")
    return template, target, operation


def _check(status: int, body: Any, operation: dict[str, Any]) -> None:
    documented = operation["responses"]
    assert str(status) in documented and status != 503, (status, body)
    response = documented[str(status)]
    if "$ref" in response:
        response = DOCUMENT["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    ref = "urn:openapi" + schema["$ref"] if "$ref" in schema else None
    validator = Draft202012Validator({"$ref": ref} if ref else schema, registry=REGISTRY)
    validator.validate(body)
    if status == 400:
        assert body["error"]["parameter"]


@FUZZ
@given(request=requests())
def test_documented_answers_and_identical_stores(
    dataset: Dataset, request: tuple[str, str, dict[str, Any]]
) -> None:
    """Any drawn request gets a documented answer, and both stores answer it the same."""
    _, target, operation = request
    answers = []
    for api in (dataset.redis_api, dataset.postgres_api):
        response = api.client.get(target)
        body = response.json()
        _check(response.status_code, body, operation)
        answers.append((response.status_code, body))
    (status, from_redis), (_, from_postgres) = answers
    assert answers[0][0] == answers[1][0]
    if status == 200:
        # Only a min_lsn beyond the projector's position, or a bucket expired from Redis,
        # sends the first to PostgreSQL too.
        if "min_lsn=" not in target and not _expired(dataset, from_redis):
            assert from_redis["source"] == "redis"
        assert from_postgres["source"] == "postgres"
        assert without_source(from_redis) == without_source(from_postgres)
    else:
        assert from_redis == from_postgres


def _expired(dataset: Dataset, body: dict[str, Any]) -> bool:
    """Whether the answered bucket has expired (or is about to) from Redis."""
    if "period" not in body:
        return False
    period = Period(body["period"])
    expiry = expires_at(period, body["bucket"], dataset.tz, dataset.settings.retention)
    return expiry is not None and expiry <= time.time() + 120


_TARGET_BYTES = st.lists(
    st.sampled_from(
        [
            b"/",
            b"v1",
            b"leaderboards",
            b"users",
            b"day",
            b"all",
            b"?",
            b"&",
            b"=",
            b"%",
            b"%2F",
            b"%00",
            b"%FF",
            b"%C3",
            b"bucket",
            b"limit",
            b"offset",
            b"around",
            b"min_lsn",
            b"0",
            b"9",
            b"-",
            b"W",
            b"#",
            b"+",
            b".",
            b";",
            b"\xc3\xa9",
            b"\xff",
            b"\x7f",
        ]
    ),
    max_size=16,
).map(b"".join)


@FUZZ
@given(target=_TARGET_BYTES)
def test_raw_request_targets_never_get_a_server_error(dataset: Dataset, target: bytes) -> None:
    """Arbitrary bytes as the request target get 200, 400 or 404, never a 5xx."""
    host, port = dataset.redis_api.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /" + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    assert status in (200, 400, 404), data[:300]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_every_documented_route_answers(dataset: Dataset, method: str) -> None:
    """Each path of the document, with example arguments, answers 200 from both stores."""
    for template in DOCUMENT["paths"]:
        path = template.replace("{period}", "week").replace("{user_id}", "bob")
        # The only required query parameter: a group's members.
        params = {"members": "bob,ann"} if path.endswith("/group") else None
        for api in (dataset.redis_api, dataset.postgres_api):
            # An event stream never ends: its status line is enough.
            with api.client.stream(method, path, params=params) as response:
                assert response.status_code == 200, path
