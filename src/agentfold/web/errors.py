"""Error pages: a failing store, a run that does not exist or bad input each get a clear page (or JSON), never a
traceback. The message names the store with its password removed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from agentfold.connect import scrub
from agentfold.errors import (
    InvalidInput,
    RunControlRefused,
    StoreClosed,
    StoreCorrupted,
    StoreTimeout,
    StoreUnavailable,
    WorkflowNotFound,
)

logger = logging.getLogger("agentfold.web")

STORE_ERRORS = (StoreUnavailable, StoreTimeout, StoreCorrupted, StoreClosed, OSError)


def _scrubbed(request: Request, text: str) -> str:
    return scrub(text, request.app.state.settings.store_url)


def wants_json(request: Request) -> bool:
    path = request.url.path
    return path.endswith(".json") or path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


def error_response(request: Request, status: int, title: str, message: str) -> Response:
    """The error as JSON for scripts, or as a page with the site's header for a browser."""
    if wants_json(request):
        return JSONResponse({"error": message, "title": title}, status_code=status)
    template = request.app.state.templates.get_template("error.html")
    settings = request.app.state.settings
    html = template.render(title=title, message=message, status=status, settings=settings, request=request)
    return HTMLResponse(html, status_code=status)


async def store_failed(request: Request, error: Exception) -> Response:
    label = request.app.state.settings.store_label
    logger.warning("store error while serving %s: %s", request.url.path, type(error).__name__)
    message = f"The store at {label} failed: {_scrubbed(request, str(error))}. Check that it is running and reload."
    return error_response(request, 503, "The store is not answering", message)


async def not_found(request: Request, error: Exception) -> Response:
    return error_response(request, 404, "Not found", str(error))


async def bad_input(request: Request, error: Exception) -> Response:
    return error_response(request, 400, "Bad request", _scrubbed(request, str(error)))


async def refused(request: Request, error: Exception) -> Response:
    return error_response(request, 409, "Not done", str(error))


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(request, error.status_code, "Error", str(error.detail))


async def unexpected(request: Request, error: Exception) -> Response:
    logger.error("error while serving %s: %s", request.url.path, type(error).__name__)
    message = f"The page failed ({type(error).__name__}). The server's log has the details."
    return error_response(request, 500, "Something went wrong", message)


def error_handlers() -> Mapping[Any, Callable[[Request, Exception], Any]]:
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {error: store_failed for error in STORE_ERRORS}
    handlers[WorkflowNotFound] = not_found
    handlers[InvalidInput] = bad_input
    handlers[RunControlRefused] = refused
    handlers[HTTPException] = http_error
    handlers[Exception] = unexpected
    return handlers
