"""Errors as RFC 9457 problem details (``application/problem+json``), one stable `type` per agentfold error.

The `type` is ``urn:agentfold:error:<ErrorClass>``: clients branch on it, never on the human-readable `detail`.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from agentfold import errors as e

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:agentfold:error:"
UNAVAILABLE_RETRY_SECONDS: Final = 1

_STATUS: Final[tuple[tuple[type[e.AgentfoldError], int], ...]] = (
    (e.RequestTooLarge, 413),
    (e.EventTooLarge, 413),
    (e.InvalidToken, 401),
    (e.AccessDenied, 403),
    (e.RateLimited, 429),
    (e.StreamNotFound, 404),
    (e.WorkflowNotFound, 404),
    (e.WrongExpectedVersion, 409),
    (e.DuplicateEventId, 409),
    (e.WorkflowIdConflict, 409),
    (e.NonDeterminism, 409),
    (e.IllegalTransition, 409),
    (e.InvalidInput, 422),
    (e.StoreUnavailable, 503),
    (e.StoreTimeout, 503),
    (e.StoreClosed, 503),
    (e.StoreFull, 503),
    (e.StoreReadOnly, 503),
)

_encoder = msgspec.json.Encoder()


def status_of(error: e.AgentfoldError) -> int:
    """The HTTP status an agentfold error answers with (500 for errors that mean a fault of the server)."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def problem(
    status: int, type_name: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """A problem+json response."""
    body = {"type": f"{TYPE_PREFIX}{type_name}", "title": title, "status": status, "detail": detail, **extra}
    return Response(_encoder.encode(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def error_response(error: e.AgentfoldError, field: str | None = None) -> Response:
    """The problem response for an agentfold error, with the error's own fields beside `detail`."""
    status = status_of(error)
    extra: dict[str, Any] = {"retryable": error.retryable}
    headers: dict[str, str] = {}
    if isinstance(error, e.WrongExpectedVersion):
        extra.update(stream_id=error.stream_id, actual_version=error.actual, expected_version=_expected(error.expected))
    elif isinstance(error, e.DuplicateEventId):
        extra.update(stream_id=error.stream_id, event_id=str(error.event_id))
    elif isinstance(error, e.StreamNotFound | e.AccessDenied) and error.stream_id is not None:
        extra.update(stream_id=error.stream_id)
    elif isinstance(error, e.WorkflowNotFound | e.WorkflowIdConflict):
        extra.update(workflow_id=error.workflow_id)
    elif isinstance(error, e.RequestTooLarge):
        extra.update(limit=error.limit)
    elif isinstance(error, e.EventTooLarge):
        extra.update(limit=error.limit, size=error.size)
    if isinstance(error, e.RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    elif status == 503:
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_SECONDS)
    elif status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="agentfold"'
    if field is not None:
        extra["field"] = field
    elif isinstance(error, e.InvalidEventData | e.NotSerializable) and error.path:
        extra["field"] = error.path
    name = type(error).__name__
    return problem(status, name, _title(name), str(error), headers, **extra)


def _expected(expected: Any) -> Any:
    return expected.value if hasattr(expected, "value") else expected


def _title(name: str) -> str:
    words: list[str] = []
    for char in name:
        if char.isupper() and words:
            words.append(" ")
        words.append(char.lower() if words else char)
    return "".join(words)


async def agentfold_error_handler(request: Request, error: Exception) -> Response:
    """Starlette's handler for every `AgentfoldError` an endpoint raises."""
    assert isinstance(error, e.AgentfoldError)
    return error_response(error, getattr(error, "api_field", None))


async def http_error_handler(request: Request, error: Exception) -> Response:
    """Starlette's own 404 and 405 as problems too."""
    assert isinstance(error, HTTPException)
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    name = names.get(error.status_code, "HTTPError")
    return problem(error.status_code, name, _title(name), str(error.detail), dict(error.headers or {}))
