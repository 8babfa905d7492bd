"""The OpenAPI 3.1 document of the read API, written by hand and served at ``/openapi.json``.

It describes exactly what the API accepts: a path per period that a board keeps (the routes
are written with ``{period}`` and expanded by ``_per_period``), each with the pattern of that
period's real bucket ids (no 2026-02-30, no 2025-W53, no year 0000), user ids and members
without control characters, integer ranges. Bounds come from ``api.routes`` and the calendar
from ``projector.core.buckets``, so the document and the validation cannot disagree; the tests
validate the document, fuzz the API from it (hypothesis, schemathesis) and check every
answer against its response schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from api import routes
from projector import __version__
from projector.core.boards import DEFAULT_BOARDS, Board
from projector.core.buckets import Period, parse_bucket

_LSN_PATTERN = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"
# Years 0001 to 9999 (there is no year 0000).
_YEAR = r"(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"
# Leap years: divisible by 4, and centuries only when divisible by 400.
_LEAP_YEAR = r"([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][48]|[13579][26]|[2468]0)00)"
_DAY_OF_MONTH = (
    r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
    r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    r"|02-(0[1-9]|1[0-9]|2[0-8]))"
)
_WEEK_1_TO_52 = r"(0[1-9]|[1-4][0-9]|5[0-2])"
# Characters a user id or member may not hold: C0 and C1 controls.
_MEMBER_PATTERN = rf"^[^\u0000-\u001f\u007f-\u009f]{{1,{routes.MAX_USER_ID}}}$"
_EXAMPLE_BUCKETS = {
    Period.DAY: "2026-11-26",
    Period.WEEK: "2026-W48",
    Period.MONTH: "2026-11",
    Period.YEAR: "2026",
    Period.ALL: "all",
}


@cache
def bucket_pattern(period: Period) -> str:
    """The regular expression of every bucket id of ``period`` that the API accepts."""
    if period == Period.ALL:
        return "^all$"
    if period == Period.YEAR:
        return f"^{_YEAR}$"
    if period == Period.MONTH:
        return f"^{_YEAR}-(0[1-9]|1[0-2])$"
    if period == Period.DAY:
        return f"^({_YEAR}-{_DAY_OF_MONTH}|{_LEAP_YEAR}-02-29)$"
    return f"^({_YEAR}-W{_WEEK_1_TO_52}|{_long_iso_years()}-W53)$"


def _long_iso_years() -> str:
    """The ISO years with a week 53, as a regular expression grouped by century."""
    by_century: dict[str, list[str]] = {}
    for year in range(1, 10_000):
        text = f"{year:04d}"
        try:
            parse_bucket(Period.WEEK, f"{text}-W53")
        except ValueError:
            continue
        by_century.setdefault(text[:2], []).append(text[2:])
    groups = [f"{century}({'|'.join(ends)})" for century, ends in sorted(by_century.items())]
    return f"({'|'.join(groups)})"


def _per_period(paths: dict[str, Any], default: Board) -> dict[str, Any]:
    """Each path with ``{period}`` becomes one path per period its period parameter allows,
    whose ``bucket`` parameter has that period's exact pattern (a period and a bucket of
    another period are a 400, which one shared pattern could not say)."""
    expanded: dict[str, Any] = {}
    for path, item in paths.items():
        if "{period}" not in path:
            expanded[path] = item
            continue
        operation = item["get"]
        parameters = operation["parameters"]
        period_parameter = next(
            (p for p in parameters if p.get("name") == "period"),
            _period_parameter(default),
        )
        for value in period_parameter["schema"]["enum"]:
            concrete = dict(operation)
            concrete["operationId"] = operation["operationId"] + value.title()
            concrete["parameters"] = [
                {"$ref": f"#/components/parameters/bucket_{value}"}
                if p.get("$ref", "").endswith("/bucket")
                else p
                for p in parameters
                if p.get("name") != "period" and not p.get("$ref", "").endswith("/period")
            ]
            expanded[path.replace("{period}", value)] = {"get": concrete}
    return expanded


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


_ERRORS = {
    "400": {"$ref": "#/components/responses/BadParameter"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}

_STREAM_ERRORS = {
    **_ERRORS,
    "429": {"$ref": "#/components/responses/TooManyStreams"},
}


def _event_stream(page: str) -> dict[str, Any]:
    """A stream of events whose ``data`` is the JSON of ``page``. In OpenAPI 3.1 the
    ``schema`` of ``text/event-stream`` describes one event (3.2 calls it ``itemSchema``):
    the fields an SSE parser dispatches, ``data`` holding JSON (``contentSchema``)."""
    return {
        "description": "The stream: events as described, `: keep-alive` comments between.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": _ref(page),
                        },
                        "event": {"const": "message"},
                        "id": {"type": "string", "pattern": _LSN_PATTERN},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }


_BUCKET_FIELDS: dict[str, Any] = {
    "bucket": {"type": "string", "examples": ["2026-11-26", "2026-W48", "2026-11", "2026", "all"]},
    "period_start": {
        **_nullable({"type": "string", "format": "date-time"}),
        "description": "First instant of the bucket (ISO 8601 with the configured zone's "
        "offset); null for the all-time period.",
    },
    "period_end": {
        **_nullable({"type": "string", "format": "date-time"}),
        "description": "First instant after the bucket; null for the all-time period (and for "
        "a bucket ending after 9999-12-31).",
    },
    "total": {"type": "integer", "minimum": 0, "description": "Members on the whole board."},
}

_SOURCE = {
    "type": "string",
    "enum": ["redis", "postgres"],
    "description": "The store that answered: the Redis projection, or the PostgreSQL fallback.",
}


def openapi_document(boards: Sequence[Board] = DEFAULT_BOARDS) -> dict[str, Any]:
    """The whole document for the declared ``boards``, as a JSON-ready dict. Each board's
    routes are listed with their own path, so each period parameter lists exactly the
    periods that board keeps; the first board is the default the other routes answer for."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pomodoro leaderboards",
            "version": __version__,
            "description": (
                "Read-only leaderboards of completed pomodoros, served from a Redis projection "
                "of PostgreSQL (change-data-capture) with PostgreSQL as the fallback. Every "
                "route also answers HEAD. Ranking is competition ranking (1, 2, 2, 4); equal "
                "scores are listed by user id (code-point order). Buckets are computed in the "
                "configured time zone (PROJECTOR_TIMEZONE). Errors are JSON bodies "
                '`{"error": {"status", "code", "message", "parameter"?}}`; unknown routes '
                "answer 404 and methods other than GET and HEAD answer 405. Each server "
                "process bounds what one client can cost: a request line over 8 KiB answers "
                "414, a head over 16 KiB or 100 fields 431, a head slower than 10 s 408, "
                "requests beyond its connection limit 503, event streams beyond its limits "
                "(per process and per client address) 429 (defaults; see docs/security.md)."
            ),
        },
        "paths": _per_period({**_paths(), **_board_paths(boards)}, boards[0]),
        "components": {
            "parameters": _parameters(boards[0]),
            "schemas": {**_schemas(), **_member_schemas(_schemas())},
            "responses": {
                "BadParameter": _json(
                    _ref("Error"),
                    "A parameter is malformed or out of range; `error.parameter` names it.",
                ),
                "TooManyStreams": {
                    **_json(
                        _ref("Error"),
                        "This server process, or this client address, holds as many event "
                        "streams as it may.",
                    ),
                    "headers": {
                        "Retry-After": {
                            "schema": {"type": "integer"},
                            "description": "Seconds to wait before retrying.",
                        }
                    },
                },
                "Unavailable": {
                    **_json(
                        _ref("Error"),
                        "Neither Redis nor PostgreSQL can answer now, this process runs as "
                        "many PostgreSQL fallback queries as it may (`fallback_busy`), or the "
                        "board's table no longer fits its definition (`board_unavailable`: "
                        "the projector names the fix in `projector status`).",
                    ),
                    "headers": {
                        "Retry-After": {
                            "schema": {"type": "integer"},
                            "description": "Seconds to wait before retrying.",
                        }
                    },
                },
            },
        },
    }


def _paths() -> dict[str, Any]:
    p = "#/components/parameters/"
    return {
        routes.BOARD: {
            "get": {
                "operationId": "getLeaderboard",
                "summary": "A page of a leaderboard",
                "parameters": [
                    {"$ref": p + name}
                    for name in ("period", "bucket", "limit", "offset", "min_lsn")
                ],
                "responses": {"200": _json(_ref("Leaderboard"), "The page."), **_ERRORS},
            }
        },
        routes.STANDING: {
            "get": {
                "operationId": "getStanding",
                "summary": "A user's rank and score on a leaderboard, with neighbours",
                "description": "A user without pomodoros in the bucket gets score 0 and rank "
                "null, not an error.",
                "parameters": [
                    {"$ref": p + name}
                    for name in ("period", "user_id", "bucket", "around", "min_lsn")
                ],
                "responses": {"200": _json(_ref("Standing"), "The user's standing."), **_ERRORS},
            }
        },
        routes.EVENTS: {
            "get": {
                "operationId": "streamLeaderboard",
                "summary": "A leaderboard's top entries, live (Server-Sent Events)",
                "description": "An endless `text/event-stream`. Each event's `data` is the JSON "
                "of `GET /v1/leaderboards/{period}` with the same `bucket` and `limit` (offset "
                "0), and its `id` the watermark LSN. The first event is sent at once; the next "
                "ones when the board's answer changes (pushed when the projector applies a "
                "batch), at most ten a second (a burst is coalesced into its newest state). A "
                "comment line (`: keep-alive`) follows 15 s of silence. Without `bucket` the "
                "stream follows the current bucket (a new day at "
                "midnight). The stream ends when the server shuts down; EventSource clients "
                "reconnect by themselves (`retry: 1000`).",
                "parameters": [{"$ref": p + name} for name in ("period", "bucket", "limit")],
                "responses": {"200": _event_stream("Leaderboard"), **_STREAM_ERRORS},
            }
        },
        routes.USER: {
            "get": {
                "operationId": "getUser",
                "summary": "A user's score and rank in the current bucket of every period",
                "parameters": [{"$ref": p + name} for name in ("user_id", "min_lsn")],
                "responses": {
                    "200": _json(_ref("UserPeriods"), "The user's standings."),
                    **_ERRORS,
                },
            }
        },
        routes.PAGE: {
            "get": {
                "operationId": "getPage",
                "summary": "The live leaderboard page (HTML)",
                "description": "Revalidated on each visit (`Cache-Control: no-cache`, `ETag`); "
                "its assets are referred to by content hash and cached for a year.",
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {}}},
                    "304": {"description": "Not modified (`If-None-Match`)."},
                },
            }
        },
        **{
            f"/static/{name}": {
                "get": {
                    "operationId": f"getAsset{name.split('.')[1].upper()}",
                    "summary": f"The page's {kind}",
                    "description": "Cached for a year when asked for with the current `?v=` "
                    "content hash (as the page does), else revalidated.",
                    "responses": {
                        "200": {"description": kind, "content": {media: {}}},
                        "304": {"description": "Not modified (`If-None-Match`)."},
                    },
                }
            }
            for name, kind, media in (
                ("app.css", "style sheet", "text/css"),
                ("app.js", "script", "text/javascript"),
                ("favicon.svg", "icon", "image/svg+xml"),
            )
        },
        routes.HEALTHZ: {
            "get": {
                "operationId": "getHealth",
                "summary": "Liveness: the process answers",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "Alive.",
                    )
                },
            }
        },
        routes.READYZ: {
            "get": {
                "operationId": "getReadiness",
                "summary": "Readiness: whether leaderboards can be answered, and from which store",
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready; `source` says which store answers."),
                    "503": _json(_ref("Readiness"), "Neither Redis nor PostgreSQL can answer."),
                },
            }
        },
        routes.METRICS: {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus metrics of this worker process",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        routes.OPENAPI: {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
    }


def _period_parameter(board: Board) -> dict[str, Any]:
    return {
        "name": "period",
        "in": "path",
        "required": True,
        "description": "day (local midnight), week (ISO 8601, Monday start), month, year, "
        f"or all (all time): the periods board {board.name!r} keeps.",
        "schema": {"type": "string", "enum": [p.value for p in board.periods]},
    }


def _board_paths(boards: Sequence[Board]) -> dict[str, Any]:
    """``GET /v1/boards`` and, per declared board, its page, member and events routes."""
    p = "#/components/parameters/"
    paths: dict[str, Any] = {
        routes.BOARDS: {
            "get": {
                "operationId": "listBoards",
                "summary": "The declared boards (the first is the default)",
                "responses": {"200": _json(_ref("Boards"), "The boards."), **_ERRORS},
            }
        }
    }
    member = {
        "name": "member",
        "in": "path",
        "required": True,
        "description": f"1 to {routes.MAX_USER_ID} characters without control characters, "
        "percent-encoded.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": routes.MAX_USER_ID,
            "pattern": _MEMBER_PATTERN,
        },
    }
    for board in boards:
        base = f"/v1/boards/{board.name}/{{period}}"
        period = _period_parameter(board)
        ident = "".join(part.capitalize() for part in re.split(r"[-_]", board.name))
        paths[base] = {
            "get": {
                "operationId": f"getBoard{ident}",
                "summary": f"A page of board {board.name!r}",
                "parameters": [
                    period,
                    *({"$ref": p + name} for name in ("bucket", "limit", "offset", "min_lsn")),
                ],
                "responses": {"200": _json(_ref("BoardPage"), "The page."), **_ERRORS},
            }
        }
        paths[f"{base}/members/{{member}}"] = {
            "get": {
                "operationId": f"getMember{ident}",
                "summary": f"A member's rank and score on board {board.name!r}, with neighbours",
                "description": "A member without rows in the bucket gets score 0 and rank null.",
                "parameters": [
                    period,
                    member,
                    *({"$ref": p + name} for name in ("bucket", "around", "min_lsn")),
                ],
                "responses": {"200": _json(_ref("MemberStanding"), "The standing."), **_ERRORS},
            }
        }
        paths[f"{base}/events"] = {
            "get": {
                "operationId": f"streamBoard{ident}",
                "summary": f"Board {board.name!r}'s top entries, live (Server-Sent Events)",
                "description": "As `/v1/leaderboards/{period}/events`, with events carrying "
                "the JSON of this board's page.",
                "parameters": [period, *({"$ref": p + name} for name in ("bucket", "limit"))],
                "responses": {"200": _event_stream("BoardPage"), **_STREAM_ERRORS},
            }
        }
    return paths


def _member_schemas(schemas: dict[str, Any]) -> dict[str, Any]:
    """The declared boards' schemas: the default board's, with ``member`` and ``label`` for
    ``user_id`` and ``display_name``, and the board's name."""

    def renamed(schema: dict[str, Any]) -> dict[str, Any]:
        names = {"user_id": "member", "display_name": "label"}
        text = json.dumps(schema)
        for old, new in names.items():
            text = text.replace(f'"{old}"', f'"{new}"')
        return dict(
            json.loads(
                text.replace('"#/components/schemas/Entry"', '"#/components/schemas/MemberEntry"')
            )
        )

    page = renamed(schemas["Leaderboard"])
    standing = renamed(schemas["Standing"])
    for schema in (page, standing):
        schema["required"] = ["board", *schema["required"]]
        schema["properties"] = {"board": {"type": "string"}, **schema["properties"]}
    return {
        "MemberEntry": renamed(schemas["Entry"]),
        "BoardPage": page,
        "MemberStanding": standing,
        "Boards": {
            "type": "object",
            "required": ["boards"],
            "properties": {
                "boards": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "default", "periods", "score", "labels", "url"],
                        "properties": {
                            "name": {"type": "string"},
                            "default": {"type": "boolean"},
                            "periods": {"type": "array", "items": {"type": "string"}},
                            "score": {"type": "string", "enum": ["count", "sum"]},
                            "labels": {"type": "boolean"},
                            "url": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    }


def _parameters(default: Board) -> dict[str, Any]:
    buckets = {
        f"bucket_{period.value}": {
            "name": "bucket",
            "in": "query",
            "required": False,
            "description": "Which bucket, in canonical form (zero-padded; weeks with an upper-case "
            "W): day YYYY-MM-DD, week YYYY-Www (ISO week), month YYYY-MM, year YYYY, all `all`. "
            "It must exist in the calendar (years 0001 to 9999). Default: the bucket holding "
            "now, in the configured time zone. Buckets expired from Redis are answered by "
            "PostgreSQL.",
            "schema": {
                "type": "string",
                "pattern": bucket_pattern(period),
                "examples": [_EXAMPLE_BUCKETS[period]],
            },
        }
        for period in Period
    }
    return {
        **buckets,
        "user_id": {
            "name": "user_id",
            "in": "path",
            "required": True,
            "description": f"1 to {routes.MAX_USER_ID} characters without control characters, "
            "percent-encoded (an encoded / is part of the id).",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": routes.MAX_USER_ID,
                "pattern": _MEMBER_PATTERN,
            },
        },
        "limit": {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Entries per page.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": routes.MAX_LIMIT,
                "default": routes.DEFAULT_LIMIT,
            },
        },
        "offset": {
            "name": "offset",
            "in": "query",
            "required": False,
            "description": "Entries to skip (0-based position in rank order).",
            "schema": {"type": "integer", "minimum": 0, "maximum": routes.MAX_OFFSET, "default": 0},
        },
        "around": {
            "name": "around",
            "in": "query",
            "required": False,
            "description": "Neighbours to list above and below the user.",
            "schema": {"type": "integer", "minimum": 0, "maximum": routes.MAX_AROUND, "default": 0},
        },
        "min_lsn": {
            "name": "min_lsn",
            "in": "query",
            "required": False,
            "description": "Read-your-writes: an LSN the client read with "
            "`SELECT pg_current_wal_lsn()` after its commit. The answer reflects a state at or "
            "past it: Redis once the projector got there (waiting briefly), else PostgreSQL. "
            "An LSN ahead of the server's current WAL position (no commit can have returned "
            "it) is answered 400.",
            "schema": {"type": "string", "pattern": _LSN_PATTERN, "examples": ["0/16B3748"]},
        },
    }


def _schemas() -> dict[str, Any]:
    entry = {
        "type": "object",
        "required": ["rank", "user_id", "display_name", "score"],
        "properties": {
            "rank": {"type": "integer", "minimum": 1},
            "user_id": {"type": "string"},
            "display_name": _nullable({"type": "string"}),
            "score": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["status", "code", "message"],
                    "properties": {
                        "status": {"type": "integer"},
                        "code": {
                            "type": "string",
                            "examples": ["bad_parameter", "unavailable", "board_unavailable"],
                        },
                        "message": {"type": "string"},
                        "parameter": {
                            "type": "string",
                            "description": "The parameter at fault (400 only).",
                        },
                    },
                }
            },
        },
        "AsOf": {
            "type": "object",
            "description": "The state the answer reflects: every commit up to `lsn`.",
            "required": ["lsn", "commit_time"],
            "properties": {
                "lsn": {"type": "string", "pattern": _LSN_PATTERN},
                "commit_time": {
                    **_nullable({"type": "string", "format": "date-time"}),
                    "description": "When the last commit included was made (UTC); for "
                    "PostgreSQL answers, the time of the query.",
                },
            },
            "additionalProperties": False,
        },
        "Entry": entry,
        "Leaderboard": {
            "type": "object",
            "required": [
                "period",
                "bucket",
                "period_start",
                "period_end",
                "total",
                "limit",
                "offset",
                "entries",
                "source",
                "as_of",
            ],
            "properties": {
                "period": {"type": "string"},
                **_BUCKET_FIELDS,
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
                "entries": {"type": "array", "items": _ref("Entry")},
                "source": _SOURCE,
                "as_of": _ref("AsOf"),
            },
            "additionalProperties": False,
        },
        "Standing": {
            "type": "object",
            "required": [
                "period",
                "bucket",
                "period_start",
                "period_end",
                "total",
                "user_id",
                "display_name",
                "rank",
                "score",
                "around",
                "above",
                "below",
                "source",
                "as_of",
            ],
            "properties": {
                "period": {"type": "string"},
                **_BUCKET_FIELDS,
                "user_id": {"type": "string"},
                "display_name": _nullable({"type": "string"}),
                "rank": {
                    **_nullable({"type": "integer", "minimum": 1}),
                    "description": "Null when the user has no pomodoros in the bucket.",
                },
                "score": {"type": "integer", "minimum": 0},
                "around": {"type": "integer"},
                "above": {
                    "type": "array",
                    "items": _ref("Entry"),
                    "description": "Up to `around` entries just above, in rank order.",
                },
                "below": {
                    "type": "array",
                    "items": _ref("Entry"),
                    "description": "Up to `around` entries just below, in rank order.",
                },
                "source": _SOURCE,
                "as_of": _ref("AsOf"),
            },
            "additionalProperties": False,
        },
        "PeriodStanding": {
            "type": "object",
            "required": ["bucket", "period_start", "period_end", "total", "rank", "score"],
            "properties": {
                **_BUCKET_FIELDS,
                "rank": _nullable({"type": "integer", "minimum": 1}),
                "score": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "UserPeriods": {
            "type": "object",
            "required": ["user_id", "display_name", "periods", "source", "as_of"],
            "properties": {
                "user_id": {"type": "string"},
                "display_name": _nullable({"type": "string"}),
                "periods": {
                    "type": "object",
                    "required": ["day", "week", "month", "year", "all"],
                    "properties": {
                        name: _ref("PeriodStanding")
                        for name in ("day", "week", "month", "year", "all")
                    },
                    "additionalProperties": False,
                },
                "source": _SOURCE,
                "as_of": _ref("AsOf"),
            },
            "additionalProperties": False,
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "source", "redis", "postgres"],
            "properties": {
                "ready": {"type": "boolean"},
                "source": {"oneOf": [_SOURCE, {"type": "null"}]},
                "redis": {
                    "type": "object",
                    "required": ["up"],
                    "properties": {
                        "up": {"type": "boolean"},
                        "built": {
                            "type": "boolean",
                            "description": "Whether the projector has built Redis.",
                        },
                        "as_of": _ref("AsOf"),
                        "error": {"type": "string"},
                        "unavailable_boards": {
                            "type": "object",
                            "description": "Declared boards the projector cannot project "
                            "now, each with its problem and fix.",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
                "postgres": {
                    "type": "object",
                    "required": ["up"],
                    "properties": {
                        "up": {"type": "boolean"},
                        "as_of": _ref("AsOf"),
                        "error": {"type": "string"},
                    },
                },
            },
        },
    }
