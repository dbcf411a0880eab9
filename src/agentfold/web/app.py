"""The ASGI app: routes, sign-in, security headers, error pages, and the runs index kept current while it serves.

`create_app(store, settings, routes=...)` returns a Starlette app. Extra routes (an API mounted under ``/api/v1``,
say) are passed in `routes` and sit behind the same sign-in, headers and error pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from agentfold.runs_index import RunsIndex
from agentfold.store import EventStore
from agentfold.web import langgraph, pages
from agentfold.web.errors import error_handlers
from agentfold.web.links import quote_path
from agentfold.web.security import PUBLIC_PATHS, SecurityHeaders, is_signed_in
from agentfold.web.settings import ServeSettings

logger = logging.getLogger("agentfold.web")

HERE: Final = Path(__file__).resolve().parent
API_PREFIX: Final = "/api/"
FOLLOW_PAUSE_SECONDS: Final = 0.1
"""The runs index follows the store at most ten times a second: a page catches it up itself before reading it."""


def template_environment() -> jinja2.Environment:
    """Templates with autoescaping on for every file: every value from the log is text, never markup."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["duration"] = pages.format_duration
    environment.filters["time"] = pages.format_time
    environment.filters["pretty_json"] = pages.pretty_json
    environment.filters["quote_path"] = quote_path
    return environment


class SignInRequired:
    """With a token set, only signed-in browsers and bearer-token clients get past; others go to the sign-in form."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.settings.token is None:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        path = connection.url.path
        if path.startswith(PUBLIC_PATHS) or is_signed_in(self.settings, connection):
            await self.app(scope, receive, send)
            return
        response: Response
        if path.startswith(API_PREFIX) or path.endswith(".json"):
            response = JSONResponse({"error": "sign in: send the token as 'Authorization: Bearer <token>'"}, 401)
        else:
            response = RedirectResponse(f"/login?next={connection.url.path}", status_code=303)
        await response(scope, receive, send)


def default_routes() -> list[BaseRoute]:
    """The inspector's own pages; `create_app` adds the static files and any routes it is given."""
    return [*pages.routes(), *langgraph.routes()]


def create_app(store: EventStore, settings: ServeSettings, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The inspector over `store`. While it serves, a runs index follows the store (see `agentfold.runs_index`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with RunsIndex(store, settings.store_url) as index:
            await index.catch_up()
            app.state.index = index
            follower = asyncio.create_task(_follow(index))
            try:
                yield
            finally:
                index.stop()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower

    all_routes: list[BaseRoute] = [
        *routes,
        *default_routes(),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=all_routes,
        middleware=[Middleware(SecurityHeaders), Middleware(SignInRequired, settings=settings)],
        exception_handlers=error_handlers(),
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.templates = template_environment()
    return app


class DirectToMounts:
    """ASGI app: a request under one of `mounts`' paths goes straight to the mounted app (behind the security
    headers), the rest to `app`, which also serves the lifespan.

    A mount such as the HTTP API checks its own credentials and answers its own errors, so the inspector's sign-in,
    error pages and routing are work it does not need on each request (docs/measurements.md). `app` keeps the mounts
    among its routes, so a request it gets for one (the bare prefix, say) is served as before.
    """

    def __init__(self, app: ASGIApp, mounts: Sequence[Mount]) -> None:
        self.app = app
        self.direct = [(mount.path + "/", mount.path, SecurityHeaders(mount.app)) for mount in mounts]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, mounted_at, app in self.direct:
                if path.startswith(prefix):
                    root = scope.get("root_path", "")
                    child = {**scope, "app_root_path": scope.get("app_root_path", root), "root_path": root + mounted_at}
                    await app(child, receive, send)
                    return
        await self.app(scope, receive, send)


async def _follow(index: RunsIndex) -> None:
    """Keep the index current; a store failure is logged and retried, the pages show the store's error meanwhile."""
    while True:
        try:
            await index.run(pause=FOLLOW_PAUSE_SECONDS)
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning("the runs index stopped following the store: %s; retrying", type(error).__name__)
            await asyncio.sleep(1.0)


def state_of(request: Request) -> Any:
    return request.app.state
