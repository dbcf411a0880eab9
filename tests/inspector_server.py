"""`agentfold serve`'s app on a real uvicorn server, in a thread with its own event loop, on a free loopback port.

The store is opened inside the server's loop, as `agentfold serve` does; tests talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

import agentfold
from agentfold.runtime import Runtime
from agentfold.web.app import create_app
from agentfold.web.settings import ServeSettings

START_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Inspector:
    base_url: str
    settings: ServeSettings


@contextmanager
def served(store_url: str, token: str | None = None, allow_actions: bool = False) -> Iterator[Inspector]:
    """Serve the inspector over `store_url` until the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = ServeSettings(port=port, token=token, allow_actions=allow_actions, store_url=store_url)
    started = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, uvicorn.Server] = {}

    async def run() -> None:
        async with agentfold.connect(store_url) as store:
            config = uvicorn.Config(create_app(store, settings), log_level="warning", lifespan="on")
            server = holder["server"] = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve(sockets=[listener]))
            for _ in range(START_TIMEOUT_SECONDS * 50):
                if server.started or serving.done():
                    break
                await asyncio.sleep(0.02)
            started.set()
            await serving

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:
            failure.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=main, name="inspector", daemon=True)
    thread.start()
    started.wait(START_TIMEOUT_SECONDS)
    if failure:
        raise failure[0]
    try:
        yield Inspector(f"http://127.0.0.1:{port}", settings)
    finally:
        if "server" in holder:
            holder["server"].should_exit = True
        thread.join(START_TIMEOUT_SECONDS)
        listener.close()
        if failure:
            raise failure[0]


@contextmanager
def worker_thread(store_url: str, runtime: Runtime) -> Iterator[None]:
    """A worker serving `runtime`'s workflows from `store_url` in a thread of its own, until the block ends."""
    started = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def run() -> None:
        stop = holder["stop"] = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        async with agentfold.connect(store_url) as store, runtime.worker(store, lease_ttl=5):
            started.set()
            await stop.wait()

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:
            failure.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=main, name="worker", daemon=True)
    thread.start()
    started.wait(START_TIMEOUT_SECONDS)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(START_TIMEOUT_SECONDS)
        if failure:
            raise failure[0]
