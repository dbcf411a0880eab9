"""`agentfold serve`'s app on a real uvicorn server, in a thread with its own event loop, on a free loopback port.

The store is opened inside the server's loop, as `agentfold serve` does; tests talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import agentfold
from agentfold.runtime import Runtime
from agentfold.web.app import create_app
from agentfold.web.settings import ServeSettings
from tests.loop_thread import loop_thread, loopback_listener, serve_until


@dataclass(frozen=True)
class Inspector:
    base_url: str
    settings: ServeSettings


@contextmanager
def served(store_url: str, token: str | None = None, allow_actions: bool = False) -> Iterator[Inspector]:
    """Serve the inspector over `store_url` until the block ends."""
    listener, port = loopback_listener()
    settings = ServeSettings(port=port, token=token, allow_actions=allow_actions, store_url=store_url)

    async def serve(ready: Callable[[], None], stop: asyncio.Event) -> None:
        async with agentfold.connect(store_url) as store:
            await serve_until(create_app(store, settings), listener, ready, stop)

    try:
        with loop_thread("inspector", serve):
            yield Inspector(f"http://127.0.0.1:{port}", settings)
    finally:
        listener.close()


@contextmanager
def worker_thread(store_url: str, runtime: Runtime) -> Iterator[None]:
    """A worker serving `runtime`'s workflows from `store_url` in a thread of its own, until the block ends."""

    async def work(ready: Callable[[], None], stop: asyncio.Event) -> None:
        async with agentfold.connect(store_url) as store, runtime.worker(store, lease_ttl=5):
            ready()
            await stop.wait()

    with loop_thread("worker", work):
        yield
