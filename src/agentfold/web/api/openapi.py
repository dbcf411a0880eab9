"""The OpenAPI 3.1 document of `/api/v1`, served by the app itself at `/api/v1/openapi.json`."""

from __future__ import annotations

from typing import Any, Final

from agentfold.validation import MAX_VERSION
from agentfold.web.api.settings import DEFAULT_RESULT_WAIT_SECONDS

_PROBLEM_CODES: Final = ("401", "403", "404", "409", "413", "422", "429", "503")
_DESCRIPTIONS: Final = {
    "401": "No token, a malformed, unknown, expired or revoked one",
    "403": "The token's scope does not cover the stream or operation",
    "404": "Unknown stream or workflow run",
    "409": "Wrong expected version (with the actual version), duplicate event id, or a conflicting workflow id",
    "413": "The request body is over the limit; it was not parsed",
    "422": "Invalid input; `field` names what was wrong",
    "429": "Rate limit or subscription limit reached; see Retry-After",
    "503": "The store is unavailable; retry after Retry-After seconds",
}


def _problems(*codes: str) -> dict[str, Any]:
    return {
        code: {
            "description": _DESCRIPTIONS[code],
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for code in codes
    }


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


_COUNTER: Final = {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}
_TYPES: Final = _query(
    "type", {"type": "array", "items": {"type": "string"}}, "Keep only events of these types (repeat the parameter)"
)


def openapi_document(max_page_limit: int, max_wait_seconds: float) -> dict[str, Any]:
    """The document, with this server's limits in it."""
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": max_page_limit}, "Events to scan at most")
    stream_id = _path("stream_id", "The stream id (percent-encode reserved characters)")
    workflow_id = _path("workflow_id", "The workflow id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentfold HTTP API",
            "version": "1",
            "description": "Append to and read agentfold's event log, subscribe to it, and drive workflow runs, "
            "within the streams a token's scope allows. Errors are RFC 9457 problems with a stable `type`.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/streams/{stream_id}": {
                "post": {
                    "operationId": "append",
                    "summary": "Append events atomically (idempotent by event ids)",
                    "parameters": [stream_id],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AppendRequest"}}},
                    },
                    "responses": {
                        "200": _json("AppendResult", "Appended, or an exact retry"),
                        **_problems(*_PROBLEM_CODES),
                    },
                },
                "get": {
                    "operationId": "readStream",
                    "summary": "Read a page of one stream, oldest first",
                    "parameters": [
                        stream_id,
                        _query("after_version", _COUNTER, "Events above this version"),
                        limit,
                        _TYPES,
                    ],
                    "responses": {"200": _json("StreamPage", "A page of the stream"), **_problems(*_PROBLEM_CODES)},
                },
            },
            "/events": {
                "get": {
                    "operationId": "readAll",
                    "summary": "Read a page of the global log (only streams the token may read)",
                    "parameters": [
                        _query("after_position", _COUNTER, "Events above this global position"),
                        limit,
                        _TYPES,
                        _query("prefix", {"type": "string"}, "Only streams whose id starts with this"),
                    ],
                    "responses": {"200": _json("LogPage", "A page of the log"), **_problems(*_PROBLEM_CODES)},
                },
            },
            "/subscribe": {
                "get": {
                    "operationId": "subscribe",
                    "summary": "Server-sent events: history then live; the SSE id is the position (Last-Event-ID)",
                    "parameters": [
                        _query("after_position", _COUNTER, "Start after this position (Last-Event-ID wins)"),
                        _TYPES,
                        _query("prefix", {"type": "string"}, "Only streams whose id starts with this"),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "An endless text/event-stream; each `data` is an Event",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_problems(*_PROBLEM_CODES),
                    },
                },
            },
            "/workflows": {
                "get": {
                    "operationId": "listRuns",
                    "summary": "List workflow runs the token may read",
                    "parameters": [
                        _query("status", {"type": "string"}, "Only runs with this status"),
                        limit,
                    ],
                    "responses": {"200": _json("RunList", "Runs, oldest first"), **_problems(*_PROBLEM_CODES)},
                },
                "post": {
                    "operationId": "startRun",
                    "summary": "Start a run (idempotent by workflow_id)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StartRequest"}}},
                    },
                    "responses": {"200": _json("Started", "Started, or already started"), **_problems(*_PROBLEM_CODES)},
                },
            },
            "/workflows/{workflow_id}": {
                "get": {
                    "operationId": "runState",
                    "summary": "A run's state and summary",
                    "parameters": [workflow_id],
                    "responses": {"200": _json("RunSummary", "The run"), **_problems(*_PROBLEM_CODES)},
                },
            },
            "/workflows/{workflow_id}/signals": {
                "post": {
                    "operationId": "signalRun",
                    "summary": "Send a signal to a run (idempotent by signal_id)",
                    "parameters": [workflow_id],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SignalRequest"}}},
                    },
                    "responses": {"200": _json("Signalled", "Signal recorded"), **_problems(*_PROBLEM_CODES)},
                },
            },
            "/workflows/{workflow_id}/cancel": {
                "post": {
                    "operationId": "cancelRun",
                    "summary": "Ask a run to stop at its next await (asking again changes nothing)",
                    "parameters": [workflow_id],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CancelRequest"}}},
                    },
                    "responses": {
                        "200": _json("CancelRequested", "The cancel is recorded"),
                        **_problems(*_PROBLEM_CODES),
                    },
                },
            },
            "/workflows/{workflow_id}/result": {
                "get": {
                    "operationId": "runResult",
                    "summary": "Wait for a run's result (long-poll)",
                    "parameters": [
                        workflow_id,
                        _query(
                            "timeout",
                            {
                                "type": "number",
                                "minimum": 0,
                                "maximum": max_wait_seconds,
                                "default": min(DEFAULT_RESULT_WAIT_SECONDS, max_wait_seconds),
                            },
                            "Seconds to wait at most (the default is 30, or the server's maximum when lower)",
                        ),
                    ],
                    "responses": {
                        "200": _json("RunResult", "The run finished (completed or failed)"),
                        "202": _json("RunResult", "The run had not finished when the wait ended"),
                        **_problems(*_PROBLEM_CODES),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "aft_<id>_<secret>"}},
            "schemas": _SCHEMAS,
        },
    }


_JSON_OBJECT: Final = {"type": "object"}
_SCHEMAS: Final[dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "description": "urn:agentfold:error:<ErrorClass>, stable"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The request field that was wrong"},
            "retryable": {"type": "boolean"},
            "stream_id": {"type": "string"},
            "actual_version": {"type": "integer"},
            "expected_version": {"type": ["string", "integer"]},
            "event_id": {"type": "string"},
            "workflow_id": {"type": "string"},
            "limit": {"type": "integer"},
            "size": {"type": "integer"},
        },
    },
    "NewEvent": {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "id": {
                "type": ["string", "null"],
                "format": "uuid",
                "description": "Choose it, and a retry writes nothing twice (absent or null: the server chooses one)",
            },
            "type": {"type": "string", "minLength": 1, "maxLength": 200},
            "data": _JSON_OBJECT,
            "metadata": {**_JSON_OBJECT, "description": "agent_id is always the token's name"},
        },
    },
    "AppendRequest": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/NewEvent"}},
            "expected_version": {
                "oneOf": [
                    {"type": "string", "enum": ["any", "no_stream", "stream_exists"]},
                    {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
                ],
                "default": "any",
            },
        },
    },
    "AppendResult": {
        "type": "object",
        "required": ["stream_id", "version", "position"],
        "properties": {
            "stream_id": {"type": "string"},
            "version": {"type": "integer", "description": "The stream's version after the append"},
            "position": {"type": "integer", "description": "The global position of the last event appended"},
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "stream_id",
            "version",
            "position",
            "id",
            "type",
            "recorded_at",
            "recorded_at_us",
            "data",
            "metadata",
        ],
        "properties": {
            "stream_id": {"type": "string"},
            "version": {"type": "integer"},
            "position": {"type": "integer"},
            "id": {"type": "string"},
            "type": {"type": "string"},
            "recorded_at": {"type": ["string", "null"]},
            "recorded_at_us": {"type": "integer"},
            "data": _JSON_OBJECT,
            "metadata": _JSON_OBJECT,
        },
    },
    "StreamPage": {
        "type": "object",
        "required": ["stream_id", "version", "events", "next_after_version"],
        "properties": {
            "stream_id": {"type": "string"},
            "version": {"type": "integer", "description": "The stream's version when the page was read"},
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_after_version": {"type": "integer", "description": "Pass as after_version for the next page"},
        },
    },
    "LogPage": {
        "type": "object",
        "required": ["events", "next_after_position"],
        "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_after_position": {"type": "integer", "description": "Pass as after_position for the next page"},
        },
    },
    "StartRequest": {
        "type": "object",
        "required": ["workflow", "workflow_id"],
        "additionalProperties": False,
        "properties": {
            "workflow": {"type": "string", "description": "A workflow registered with serve --runtime"},
            "workflow_id": {"type": "string", "minLength": 1, "maxLength": 190},
            "args": {"type": "array"},
        },
    },
    "Started": {
        "type": "object",
        "required": ["workflow_id", "workflow"],
        "properties": {"workflow_id": {"type": "string"}, "workflow": {"type": "string"}},
    },
    "SignalRequest": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "payload": {},
            "signal_id": {"type": ["string", "null"], "description": "The same id is delivered once"},
        },
    },
    "Signalled": {
        "type": "object",
        "required": ["workflow_id", "name", "signal_id"],
        "properties": {
            "workflow_id": {"type": "string"},
            "name": {"type": "string"},
            "signal_id": {"type": ["string", "null"]},
        },
    },
    "CancelRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"reason": {"type": "string"}},
    },
    "CancelRequested": {
        "type": "object",
        "required": ["workflow_id", "cancel_requested"],
        "properties": {"workflow_id": {"type": "string"}, "cancel_requested": {"type": "boolean"}},
    },
    "RunSummary": {
        "type": "object",
        "required": ["workflow_id", "workflow", "state", "status", "version"],
        "properties": {
            "workflow_id": {"type": "string"},
            "workflow": {"type": "string"},
            "state": {"type": "string"},
            "status": {"type": "string"},
            "version": {"type": "integer"},
        },
    },
    "RunList": {
        "type": "object",
        "required": ["runs"],
        "properties": {"runs": {"type": "array", "items": {"$ref": "#/components/schemas/RunSummary"}}},
    },
    "RunResult": {
        "type": "object",
        "required": ["workflow_id", "status"],
        "properties": {
            "workflow_id": {"type": "string"},
            "status": {
                "type": "string",
                "description": "completed, failed, cancelled, terminated, or the state of a run still going",
            },
            "reason": {"type": "string"},
            "result": {},
            "error": {"type": "object", "properties": {"type": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
}
