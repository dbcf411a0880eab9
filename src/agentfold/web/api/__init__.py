"""The HTTP API for agents in any language, mounted at `/api/v1` of `agentfold serve`.

`api_app(store, settings)` is the API as an ASGI app of its own; `api_mount` mounts it where the web app wants it.
"""

from __future__ import annotations

import re
from typing import Final, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from agentfold.errors import AgentfoldError
from agentfold.store import EventStore
from agentfold.tokens import TokenRegistry
from agentfold.web.api.direct import DirectAppend
from agentfold.web.api.events import EventRoutes
from agentfold.web.api.guard import ApiGate, ApiGuard
from agentfold.web.api.openapi import openapi_document
from agentfold.web.api.problems import agentfold_error_handler, http_error_handler
from agentfold.web.api.ratelimit import RateLimiter
from agentfold.web.api.settings import ApiSettings
from agentfold.web.api.subscribe import SubscribeRoutes
from agentfold.web.api.tracing import ContinuesTrace
from agentfold.web.api.workflows import WorkflowRoutes

API_PREFIX: Final = "/api/v1"

__all__ = ["API_PREFIX", "ApiSettings", "api_app", "api_mount"]


def api_app(store: EventStore, settings: ApiSettings | None = None) -> ASGIApp:
    """The API over `store` as one ASGI app (its paths relative to where it is mounted): appends served directly
    (`agentfold.web.api.direct`), every other request by a Starlette app."""
    chosen = settings or ApiSettings()
    tokens = TokenRegistry(store)
    document = openapi_document(chosen.max_page_limit, chosen.max_result_wait_seconds)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    events = EventRoutes(store, chosen)
    routes: list[BaseRoute] = [
        Route("/openapi.json", openapi, methods=["GET"]),
        *events.routes(),
        *SubscribeRoutes(store, tokens, chosen).routes(),
        *WorkflowRoutes(store, chosen).routes(),
    ]
    for route in routes:
        _match_any_character(route)
    max_body = chosen.max_body_bytes if chosen.max_body_bytes is not None else default_max_body(store)
    gate = ApiGate(tokens, RateLimiter(chosen.rate_per_second, chosen.burst), max_body)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ContinuesTrace), Middleware(ApiGuard, gate=gate)],
        exception_handlers={AgentfoldError: agentfold_error_handler, HTTPException: http_error_handler},
    )
    return DirectAppend(app, gate, events)


def default_max_body(store: EventStore) -> int:
    """The store's event size limit, plus its blob size limit where it keeps large fields as blobs: an event with one
    field up to `max_blob_size` can be appended over HTTP as it can in process."""
    policy = store.blob_policy
    return store.max_event_size + (0 if policy is None else policy.max_size)


def api_mount(store: EventStore, settings: ApiSettings | None = None) -> Mount:
    """The API mounted at `API_PREFIX`, for the web app's routes."""
    return _match_any_character(Mount(API_PREFIX, app=api_app(store, settings)))


R = TypeVar("R", Route, Mount, BaseRoute)


def _match_any_character(route: R) -> R:
    """Let path parameters hold any character, line breaks included: a stream id the store refuses then gets the
    API's 422 naming it, instead of falling through to a 404 outside the API."""
    if isinstance(route, Route | Mount):
        route.path_regex = re.compile(route.path_regex.pattern, re.DOTALL)
    return route
