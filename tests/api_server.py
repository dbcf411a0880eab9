"""A real uvicorn server for the HTTP API tests, on a free loopback port, in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

import agentfold
from agentfold.store import EventStore
from agentfold.tokens import TokenRegistry
from agentfold.web.api import ApiSettings, api_mount
from agentfold.web.app import create_app
from agentfold.web.settings import ServeSettings
from tests.loop_thread import loop_thread, loopback_listener, serve_until


def api_only_app(store: EventStore, settings: ApiSettings | None = None) -> Starlette:
    """The API mounted at /api/v1 of an app of its own."""
    routes: list[BaseRoute] = [api_mount(store, settings)]
    return Starlette(routes=routes)


@contextlib.asynccontextmanager
async def running(app: Any, **config: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 and a free port; yield its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **config)
    )
    task = asyncio.create_task(server.serve())
    for _ in range(3000):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def token_for(store: EventStore, name: str, **scope: Any) -> str:
    """A new token's secret string for the agent `name` with `scope` (write=, read=, workflows=, expires_at_us=)."""
    return (await TokenRegistry(store).create(name, **scope)).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SseReader:
    """Reads server-sent events from a streaming httpx response: (event name, id, data) per event, comments apart."""

    def __init__(self, response: Any) -> None:
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next_event(self) -> tuple[str, str | None, str]:
        name, event_id, data = "message", None, []
        async for line in self.lines:
            if line == "":
                if data:
                    return name, event_id, "\n".join(data)
                name, event_id = "message", None
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                self.comments.append(value)
            elif field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)
        raise EOFError("the event stream ended")


@contextlib.contextmanager
def served_in_thread(store_url: str, settings: ApiSettings | None = None, **scope: Any) -> Iterator[tuple[str, str]]:
    """`agentfold serve`'s app (inspector and API) over `store_url` on a real uvicorn server in a thread with its own
    event loop, for synchronous clients; yields (base URL of /api/v1, a token with `scope`)."""
    listener, port = loopback_listener()
    token: list[str] = []

    async def serve(ready: Callable[[], None], stop: asyncio.Event) -> None:
        async with await agentfold.connect(store_url) as store:
            token.append(await token_for(store, "schemathesis", **scope))
            app = create_app(store, ServeSettings(port=port, store_url=store_url), routes=[api_mount(store, settings)])
            await serve_until(app, listener, ready, stop)

    try:
        with loop_thread("api-server", serve):
            yield f"http://127.0.0.1:{port}/api/v1", token[0]
    finally:
        listener.close()
