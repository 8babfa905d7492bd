"""Pure parts of the read API: breaker, metrics text, routes, OpenAPI document."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from openapi_spec_validator import validate

from api import bodies, routes
from api.boards import AsOf, Entry
from api.breaker import Breaker
from api.errors import BadParameter, NotFound
from api.metrics import Metrics
from api.openapi import openapi_document
from api.parameters import LIMIT, MEMBER, MEMBERS, PERIOD, USER_ID, bucket_pattern
from api.rankings import Ranking, Rankings
from projector.core.boards import DEFAULT_BOARDS
from projector.core.buckets import Period, parse_bucket
from projector.core.errors import ConfigError
from projector.settings import load_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_failure_and_lets_one_probe_after_the_cooldown() -> None:
    """After a failure the store is skipped for the cooldown, then exactly one caller probes."""
    clock = FakeClock()
    breaker = Breaker(2.0, clock)
    assert breaker.allow() and breaker.is_closed
    breaker.failed()
    assert not breaker.is_closed and not breaker.allow()
    clock.now += 2.1
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else keeps skipping while it runs
    breaker.failed()
    assert not breaker.allow()
    clock.now += 2.1
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.is_closed and breaker.allow() and breaker.allow()
    assert breaker.trips == 2


def test_breaker_probe_that_gives_up_lets_another_probe() -> None:
    """A probe cancelled without a verdict does not leave the store skipped forever."""
    clock = FakeClock()
    breaker = Breaker(1.0, clock)
    breaker.failed()
    clock.now += 1.5
    assert breaker.allow()
    breaker.released()
    assert breaker.allow()


def test_metrics_render_prometheus_text() -> None:
    """Counters and the cumulative histogram render in the exposition format."""
    metrics = Metrics()
    metrics.observe("/v1/users/{user_id}", "GET", 200, 0.0007)
    metrics.observe("/v1/users/{user_id}", "GET", 200, 0.2)
    metrics.observe("/v1/users/{user_id}", "GET", 400, 9.0)
    metrics.answered("/v1/users/{user_id}", "redis")
    metrics.fell_back("redis_down")
    metrics.min_lsn_waited()
    metrics.fallback_shared()
    metrics.gauge("api_redis_up", "help", lambda: 1.0)
    lines = metrics.render().splitlines()
    route = 'route="/v1/users/{user_id}"'
    assert f'api_requests_total{{method="GET",{route},status="200"}} 2.0' in lines
    assert f'api_requests_total{{method="GET",{route},status="400"}} 1.0' in lines
    assert f'api_request_duration_seconds_bucket{{le="0.0005",{route}}} 0.0' in lines
    assert f'api_request_duration_seconds_bucket{{le="0.001",{route}}} 1.0' in lines
    assert f'api_request_duration_seconds_bucket{{le="2.5",{route}}} 2.0' in lines
    assert f'api_request_duration_seconds_bucket{{le="+Inf",{route}}} 3.0' in lines
    assert f"api_request_duration_seconds_count{{{route}}} 3.0" in lines
    assert 'api_fallbacks_total{reason="redis_down"} 1.0' in lines
    assert "api_min_lsn_waits_total 1.0" in lines
    assert "api_fallbacks_shared_total 1.0" in lines
    assert "api_redis_up 1.0" in lines
    assert "# TYPE api_request_duration_seconds histogram" in lines
    assert not any("_created" in line for line in lines)


@pytest.mark.parametrize(
    ("path", "route", "args"),
    [
        (b"/v1/leaderboards/day", routes.BOARD, (b"day",)),
        (b"/v1/leaderboards/week/users/a%2Fb", routes.STANDING, (b"week", b"a%2Fb")),
        (b"/v1/users/%C3%A9", routes.USER, (b"%C3%A9",)),
        (b"/v1/boards//day", routes.BOARD_PAGE, (b"", b"day")),
        (b"/static/app.js", routes.STATIC, (b"app.js",)),
        (b"/metrics", routes.METRICS, ()),
        (b"/", routes.PAGE, ()),
    ],
)
def test_paths_resolve_to_routes_before_decoding(
    path: bytes, route: routes.Route, args: tuple[bytes, ...]
) -> None:
    """Paths split on literal slashes; arguments stay encoded until validated."""
    assert routes.resolve(path) == (route, args)


def test_queries_are_typed_with_defaults() -> None:
    """Defaults: the current bucket in the zone, limit 10, offset 0, around 0, no min_lsn."""
    berlin = ZoneInfo("Europe/Berlin")
    late = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # already 2026-03-29 in Berlin
    board = DEFAULT_BOARDS[0]
    query = routes.board_query((b"day",), {}, berlin, board, late)
    assert query == routes.BoardQuery(Period.DAY, "2026-03-29", 10, 0, None, board)
    params = {"bucket": "2026-W01", "around": "7", "min_lsn": "16/B374D848"}
    standing = routes.standing_query((b"week", b"a%2Fb"), params, berlin, board)
    assert standing == routes.StandingQuery(
        Period.WEEK, "2026-W01", "a/b", 7, (0x16 << 32) | 0xB374D848, board
    )
    assert routes.parse_query_string(b"limit=5&&offset=2", routes.BOARD) == {
        "limit": "5",
        "offset": "2",
    }


def test_errors_name_the_parameter() -> None:
    """Bad parameters and unknown paths raise the API's own errors."""
    with pytest.raises(BadParameter) as caught:
        routes.parse_query_string(b"bucket=1&bucket=2", routes.BOARD)
    assert caught.value.parameter == "bucket"
    for path in (b"/v1/leaderboards", b"/healthz/", b"/static/", b"/v1/users/a/b", b"x/metrics"):
        with pytest.raises(NotFound):
            routes.resolve(path)


def test_openapi_document_is_valid_and_covers_every_route_and_parameter() -> None:
    """The document validates as OpenAPI 3.1 and names every route (one path per period)
    and every accepted parameter."""
    document = openapi_document()
    validate(document)  # type: ignore[arg-type]
    paths = document["paths"]
    templates = (
        routes.BOARD,
        routes.STANDING,
        routes.EVENTS,
        routes.BOARD_PAGE,
        routes.MEMBER_STANDING,
        routes.BOARD_EVENTS,
        routes.GROUP,
        routes.MEMBER_EVENTS,
    )
    per_period = {
        t.path.replace("{board}", DEFAULT_BOARDS[0].name).replace("{period}", period.value)
        for t in templates
        for period in DEFAULT_BOARDS[0].periods
    }
    assert set(paths) == per_period | {
        routes.USER.path,
        routes.HEALTHZ.path,
        routes.READYZ.path,
        routes.METRICS.path,
        routes.OPENAPI.path,
        routes.PAGE.path,
        "/static/app.css",
        "/static/app.js",
        "/static/favicon.svg",
        routes.BOARDS.path,
    }
    components = document["components"]["parameters"]
    for path, item in paths.items():
        route = routes.resolve(path.replace("{user_id}", "x").replace("{member}", "x").encode())[0]
        names = {
            components[ref["$ref"].rsplit("/", 1)[1]]["name"] if "$ref" in ref else ref["name"]
            for ref in item["get"].get("parameters", [])
        }
        path_names = {
            part[1:-1]
            for part in route.path.split("/")
            if part.startswith("{") and part not in ("{period}", "{board}", "{asset}")
        }
        assert names == set(route.accepts) | path_names, path
    assert components["limit"]["schema"]["maximum"] == LIMIT.high
    assert components["user_id"]["schema"]["maxLength"] == USER_ID.max_length


def _accepted(period: Period, text: str) -> bool:
    try:
        return parse_bucket(period, text) == text
    except ValueError:
        return False


@pytest.mark.parametrize("period", list(Period))
def test_bucket_patterns_are_exactly_the_buckets_the_api_accepts(period: Period) -> None:
    """Each period's documented bucket pattern matches a candidate iff the API accepts it:
    every year with every month and day 00-39, week 00-54 of every year, and odd shapes."""
    pattern = re.compile(bucket_pattern(period))
    years = [f"{y:04d}" for y in range(0, 10_000)]
    if period == Period.DAY:
        sample = [*years[:30], *years[95:105], *years[395:405], *years[1895:1905]]
        sample += [*years[1996:2030], *years[9990:]]
        candidates = [f"{y}-{m:02d}-{d:02d}" for y in sample for m in range(14) for d in range(40)]
    elif period == Period.WEEK:
        candidates = [f"{y}-W{w:02d}" for y in years for w in (0, 1, 9, 10, 52, 53, 54)]
    elif period == Period.MONTH:
        candidates = [f"{y}-{m:02d}" for y in years[:200] + years[-200:] for m in range(14)]
    else:
        candidates = years
    candidates += ["all", "2026-W5", "2026-w05", "2026-1-01", "12026", "2026\n", " 2026", ""]
    for text in candidates:
        assert bool(pattern.fullmatch(text)) == _accepted(period, text), text


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"api_max_streams": 3000, "api_max_connections": 2000}, "PROJECTOR_API_MAX_STREAMS"),
        ({"api_trusted_proxies": "10.0.0.1,proxy"}, "PROJECTOR_API_TRUSTED_PROXIES"),
        ({"api_max_request_line": 10}, "PROJECTOR_API_MAX_REQUEST_LINE"),
        ({"api_pg_queue": -1}, "PROJECTOR_API_PG_QUEUE"),
        ({"api_header_timeout": 0}, "PROJECTOR_API_HEADER_TIMEOUT"),
    ],
)
def test_bad_api_bounds_stop_start_up_naming_the_variable(
    overrides: dict[str, object], named: str
) -> None:
    """A bad bound of the public API is one ConfigError sentence naming its variable."""
    with pytest.raises(ConfigError, match=named):
        load_settings(**overrides)


def test_rankings_keep_at_most_their_size_for_their_time_to_live() -> None:
    """The least recently used ranking leaves first; an expired or too old one is not served."""
    rankings = Rankings(2)
    page = Ranking(3, [Entry(1, "a", None, 3), Entry(2, "b", None, 2)], AsOf(10, None))
    rankings.put("x", page, 60)
    rankings.put("y", page, 60)
    assert rankings.get("x") is page  # x is now the most recently used
    rankings.put("z", page, 60)
    assert rankings.get("y") is None and rankings.get("x") is page and len(rankings) == 2
    assert rankings.get("x", min_lsn=11) is None  # older than the client's write
    rankings.put("t", page, 0)
    assert rankings.get("t") is None
    assert not page.complete and page.covers(0, 2) and not page.covers(1, 2)
    assert page.page(1, 5).entries == [Entry(2, "b", None, 2)]
    standing = page.standing("b", 1)
    assert standing is not None and (standing.rank, standing.score) == (2, 2)
    assert standing.above == [Entry(1, "a", None, 3)] and standing.below == []
    assert page.standing("nobody", 1) is None  # its label and total need PostgreSQL


def test_body_schemas_are_derived_from_the_typed_bodies() -> None:
    """The component schemas come from api.bodies: no titles, nullable fields as oneOf with
    null, closed bodies refuse other properties, and references only to components."""
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["Entry"]["additionalProperties"] is False
    assert schemas["Entry"]["properties"]["display_name"] == {
        "oneOf": [{"type": "string"}, {"type": "null"}]
    }
    assert schemas["Standing"]["required"] == list(bodies.Standing.__annotations__)
    text = json.dumps(schemas)
    assert '"title"' not in text
    referred = set(re.findall(r'"#/components/schemas/(\w+)"', text))
    assert referred <= set(schemas)
    assert "ErrorDetail" not in schemas and "error" in schemas["Error"]["properties"]


def test_a_route_lists_its_path_parameters_in_path_order() -> None:
    """A route whose template and path parameters disagree is refused when it is declared."""
    with pytest.raises(ValueError, match="path parameters"):
        routes.Route("/v1/x/{member}/{period}", "standing", (PERIOD, MEMBER))
    with pytest.raises(ValueError, match="path parameters"):
        routes.Route("/v1/x/{period}", "board", ())


def test_a_group_lists_its_members_once_in_the_order_given() -> None:
    """``members``: comma-separated in the query, a JSON list in a body; repeats count once;
    the same bounds in both (1 to 1,000 members of 1 to 200 characters)."""
    assert MEMBERS.parse({"members": "b,a,b,c"}) == ("b", "a", "c")
    assert MEMBERS.parse_body(b'{"members": ["x,y", "z", "x,y"]}') == ("x,y", "z")
    for params in ({}, {"members": ""}, {"members": "a,"}, {"members": "a\x01"}):
        with pytest.raises(BadParameter):
            MEMBERS.parse(params)
    with pytest.raises(BadParameter, match="the limit is 200"):
        MEMBERS.parse({"members": "m" * 201})
    with pytest.raises(BadParameter, match="1001 members; the limit is 1000"):
        MEMBERS.parse_body(json.dumps({"members": ["m"] * 1001}).encode())
