"""The OpenAPI 3.1 document of the read API, derived from the route table and served at
``/openapi.json``.

Its paths and parameters come from ``api.routes.ROUTES`` and ``api.parameters`` (a path per
board and per period a board keeps, each with the pattern of that period's real bucket ids),
so the document and the validation cannot disagree; the prose, the responses and the schemas
of the JSON bodies are written here. The tests validate the document, fuzz the API from it
(hypothesis, schemathesis) and check every answer against its response schemas.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from api import bodies, routes
from api.parameters import LSN_PATTERN as _LSN_PATTERN
from api.parameters import MEMBERS, PERIOD, Bucket
from api.routes import Route
from projector import __version__
from projector.core.boards import DEFAULT_BOARDS, Board
from projector.core.buckets import Period


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


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


def openapi_document(boards: Sequence[Board] = DEFAULT_BOARDS) -> dict[str, Any]:
    """The whole document for the declared ``boards``, as a JSON-ready dict. Each board's
    routes are listed with their own path, so each period parameter lists exactly the
    periods that board keeps; the first board is the default the other routes answer for."""
    schemas = _schemas()
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
        "paths": _paths(boards),
        "components": {
            "parameters": _parameters(),
            "schemas": {**schemas, **_member_schemas(schemas)},
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


def _paths(boards: Sequence[Board]) -> dict[str, Any]:
    """Every path of ``routes.ROUTES``: a route naming ``{board}`` once per declared board, the
    others for the default board; a route with ``{period}`` once per period its board keeps,
    whose ``bucket`` parameter has that period's exact pattern (a period and a bucket of
    another period are a 400, which one shared pattern could not say)."""
    paths: dict[str, Any] = {}
    for route in routes.ROUTES:
        if route is routes.STATIC:
            for name, kind, media in _ASSETS:
                paths[route.path.replace("{asset}", name)] = {"get": _asset(name, kind, media)}
        elif not route.named_board:
            paths.update(_route_paths(route, route.path, boards[0]))
    for board in boards:
        for route in routes.ROUTES:
            if route.named_board:
                paths.update(_route_paths(route, route.path.replace("{board}", board.name), board))
    return paths


def _route_paths(route: Route, path: str, board: Board) -> dict[str, Any]:
    """The path of ``route`` (of ``board``), or one per period ``board`` keeps."""
    operation = _operation(route, board)
    if PERIOD not in route.parameters:
        return {path: {"get": _with_parameters(operation, route, None)}}
    items = {}
    for value in PERIOD.values(board):
        named = {**operation, "operationId": operation["operationId"] + value.title()}
        item = {"get": _with_parameters(named, route, Period(value))}
        if route.body:
            item["post"] = _posted(item["get"])
        items[path.replace("{period}", value)] = item
    return items


def _posted(operation: dict[str, Any]) -> dict[str, Any]:
    """The POST twin of a GET ``operation`` taking the members in a JSON body instead."""
    parameters = [p for p in operation["parameters"] if p.get("name") != MEMBERS.name]
    return {
        **{key: value for key, value in operation.items() if key != "responses"},
        "operationId": operation["operationId"] + "Post",
        "description": operation["description"] + " The same, with the members in a JSON "
        "body (for lists longer than a URL holds; members may contain commas here).",
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": MEMBERS.body_schema()}},
        },
        "responses": {
            **{code: r for code, r in operation["responses"].items() if code != "414"},
            "413": _json(_ref("Error"), "The body is longer than 1 MiB."),
        },
    }


def _with_parameters(
    operation: dict[str, Any], route: Route, period: Period | None
) -> dict[str, Any]:
    """``operation`` with the ``parameters`` of ``route`` (of ``period``) before its
    ``responses``, in the route's order: shared ones by reference, the others written out."""
    listed: list[dict[str, Any]] = []
    for parameter in route.parameters:
        if parameter.expanded:
            continue
        if isinstance(parameter, Bucket):
            assert period is not None
            listed.append(_parameter_ref(parameter.component(period)))
        elif parameter.shared:
            listed.append(_parameter_ref(parameter.name))
        else:
            listed.append(parameter.openapi())
    described = {key: value for key, value in operation.items() if key != "responses"}
    parameters = {"parameters": listed} if listed else {}
    return {**described, **parameters, "responses": operation["responses"]}


def _parameters() -> dict[str, Any]:
    """``components.parameters``: each shared parameter of the routes (the bucket once per
    period)."""
    components: dict[str, Any] = {}
    for route in routes.ROUTES:
        for parameter in route.parameters:
            if isinstance(parameter, Bucket):
                for period in Period:
                    components[parameter.component(period)] = parameter.openapi_for(period)
            elif parameter.shared and not parameter.expanded:
                components[parameter.name] = parameter.openapi()
    return components


def _parameter_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


_ASSETS = (
    ("app.css", "style sheet", "text/css"),
    ("app.js", "script", "text/javascript"),
    ("favicon.svg", "icon", "image/svg+xml"),
)


def _asset(name: str, kind: str, media: str) -> dict[str, Any]:
    return {
        "operationId": f"getAsset{name.split('.')[1].upper()}",
        "summary": f"The page's {kind}",
        "description": "Cached for a year when asked for with the current `?v=` "
        "content hash (as the page does), else revalidated.",
        "responses": {
            "200": {"description": kind, "content": {media: {}}},
            "304": {"description": "Not modified (`If-None-Match`)."},
        },
    }


def _operation(route: Route, board: Board) -> dict[str, Any]:
    """What the document says of ``route`` (of ``board``, for a route naming ``{board}``),
    but its parameters."""
    if route is routes.BOARD:
        return {
            "operationId": "getLeaderboard",
            "summary": "A page of a leaderboard",
            "responses": {"200": _json(_ref("Leaderboard"), "The page."), **_ERRORS},
        }
    if route is routes.STANDING:
        return {
            "operationId": "getStanding",
            "summary": "A user's rank and score on a leaderboard, with neighbours",
            "description": "A user without pomodoros in the bucket gets score 0 and rank "
            "null, not an error.",
            "responses": {"200": _json(_ref("Standing"), "The user's standing."), **_ERRORS},
        }
    if route is routes.EVENTS:
        return {
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
            "responses": {"200": _event_stream("Leaderboard"), **_STREAM_ERRORS},
        }
    if route is routes.USER:
        return {
            "operationId": "getUser",
            "summary": "A user's score and rank in the current bucket of every period",
            "responses": {
                "200": _json(_ref("UserPeriods"), "The user's standings."),
                **_ERRORS,
            },
        }
    if route is routes.PAGE:
        return {
            "operationId": "getPage",
            "summary": "The live leaderboard page (HTML)",
            "description": "Revalidated on each visit (`Cache-Control: no-cache`, `ETag`); "
            "its assets are referred to by content hash and cached for a year.",
            "responses": {
                "200": {"description": "The page.", "content": {"text/html": {}}},
                "304": {"description": "Not modified (`If-None-Match`)."},
            },
        }
    if route is routes.HEALTHZ:
        return {
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
    if route is routes.READYZ:
        return {
            "operationId": "getReadiness",
            "summary": "Readiness: whether leaderboards can be answered, and from which store",
            "responses": {
                "200": _json(_ref("Readiness"), "Ready; `source` says which store answers."),
                "503": _json(_ref("Readiness"), "Neither Redis nor PostgreSQL can answer."),
            },
        }
    if route is routes.METRICS:
        return {
            "operationId": "getMetrics",
            "summary": "Prometheus metrics of this worker process",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    if route is routes.OPENAPI:
        return {
            "operationId": "getOpenApi",
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }
    if route is routes.BOARDS:
        return {
            "operationId": "listBoards",
            "summary": "The declared boards (the first is the default)",
            "responses": {"200": _json(_ref("Boards"), "The boards."), **_ERRORS},
        }
    ident = "".join(part.capitalize() for part in re.split(r"[-_]", board.name))
    if route is routes.BOARD_PAGE:
        return {
            "operationId": f"getBoard{ident}",
            "summary": f"A page of board {board.name!r}",
            "responses": {"200": _json(_ref("BoardPage"), "The page."), **_ERRORS},
        }
    if route is routes.MEMBER_STANDING:
        return {
            "operationId": f"getMember{ident}",
            "summary": f"A member's rank and score on board {board.name!r}, with neighbours",
            "description": "A member without rows in the bucket gets score 0 and rank null.",
            "responses": {"200": _json(_ref("MemberStanding"), "The standing."), **_ERRORS},
        }
    if route is routes.BOARD_EVENTS:
        return {
            "operationId": f"streamBoard{ident}",
            "summary": f"Board {board.name!r}'s top entries, live (Server-Sent Events)",
            "description": "As `/v1/leaderboards/{period}/events`, with events carrying "
            "the JSON of this board's page.",
            "responses": {"200": _event_stream("BoardPage"), **_STREAM_ERRORS},
        }
    if route is routes.MEMBER_EVENTS:
        return {
            "operationId": f"watchMember{ident}",
            "summary": f"A member's standing on board {board.name!r}, live (Server-Sent Events)",
            "description": "An endless `text/event-stream`: an event on connect, then one "
            "whenever the member's rank or score changes (someone passing it included), with "
            "the previous rank and score and the members just above and below.",
            "responses": {"200": _event_stream("MemberEvent"), **_STREAM_ERRORS},
        }
    if route is routes.GROUP:
        return {
            "operationId": f"getGroup{ident}",
            "summary": f"Some members ranked among themselves on board {board.name!r}",
            "description": "Friends: the asked members' competition ranks among themselves, "
            "each with the rank on the whole board. A member without rows in the bucket is "
            "listed with score 0 and null ranks.",
            "responses": {
                "200": _json(_ref("Group"), "The group."),
                **_ERRORS,
                "414": _json(
                    _ref("Error"),
                    "The URL is longer than the server takes "
                    "(`PROJECTOR_API_MAX_REQUEST_LINE`): POST the members instead.",
                ),
            },
        }
    raise AssertionError(f"the document does not describe {route.path}")


def _member_schemas(schemas: dict[str, Any]) -> dict[str, Any]:
    """The declared boards' schemas: the default board's, with ``member`` and ``label`` for
    ``user_id`` and ``display_name``, and the board's name (``api.boards`` renames alike)."""

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
    }


def _schemas() -> dict[str, Any]:
    """The component schemas of ``api.bodies``, derived from its TypedDicts."""
    named: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (cls.__name__, "serialization", TypeAdapter(cls)) for cls in bodies.COMPONENTS
    ]
    _, definitions = TypeAdapter.json_schemas(
        named, ref_template=_SCHEMA_REF, schema_generator=_BodySchema
    )
    found: dict[str, Any] = definitions["$defs"]
    components = {cls.__name__ for cls in bodies.COMPONENTS}

    def inlined(value: Any) -> Any:
        """``value`` with references to other than components replaced by their schema."""
        if isinstance(value, list):
            return [inlined(item) for item in value]
        if not isinstance(value, dict):
            return value
        ref = value.get("$ref", "")
        name = ref.removeprefix(_SCHEMA_REF.format(model=""))
        if ref and name not in components:
            return inlined(found[name])
        return {key: inlined(item) for key, item in value.items()}

    return {name: inlined(found[name]) for name in components}


_SCHEMA_REF = "#/components/schemas/{model}"


class _BodySchema(GenerateJsonSchema):
    """JSON Schema as the document writes it: no titles, class docstrings left out, and a
    nullable value as ``oneOf`` (exactly one of the value and null)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def typed_dict_schema(self, schema: core_schema.TypedDictSchema) -> JsonSchemaValue:
        json_schema = super().typed_dict_schema(schema)
        json_schema.pop("title", None)
        docstring = schema.get("cls").__doc__
        if docstring and json_schema.get("description") == inspect.cleandoc(docstring):
            del json_schema["description"]
        return json_schema

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return {"oneOf": [self.generate_inner(schema["schema"]), {"type": "null"}]}
