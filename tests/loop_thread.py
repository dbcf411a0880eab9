"""Something long-running (a uvicorn server, a worker) on an event loop in a thread of its own, for tests whose own
thread is taken by a synchronous client (requests, Playwright's sync API)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from agentfold.cli.serve import tcp_listener

START_TIMEOUT_SECONDS = 30
SHUTDOWN_GRACE_SECONDS = 2
"""How long a stopping server waits for open responses (a page's live updates never end on their own: under
`agentfold serve` a signal ends them, and a server in a thread gets no signal) before it cancels them."""

Body = Callable[[Callable[[], None], asyncio.Event], Awaitable[None]]


@contextmanager
def loop_thread(name: str, body: Body) -> Iterator[None]:
    """Run ``body(ready, stop)`` on a new event loop in a thread named `name`: the block starts once it calls
    `ready()`, and when the block ends `stop` is set and `body` is awaited to its end. A failure in the thread is
    raised here, at start or at the end."""
    started = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def run() -> None:
        stop = holder["stop"] = asyncio.Event()
        holder["loop"] = asyncio.get_running_loop()
        await body(started.set, stop)

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:
            failure.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    started.wait(START_TIMEOUT_SECONDS)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        if "loop" in holder:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(START_TIMEOUT_SECONDS)
        if failure:
            raise failure[0]


def loopback_listener() -> tuple[socket.socket, int]:
    """A socket bound to a free loopback port (uvicorn serves on it, as `agentfold serve` does), and the port."""
    listener = tcp_listener("127.0.0.1", 0)
    return listener, listener.getsockname()[1]


async def serve_until(app: Any, listener: socket.socket, ready: Callable[[], None], stop: asyncio.Event) -> None:
    """Serve `app` with uvicorn (lifespan on) on `listener`; call `ready` once it accepts; return after `stop`."""
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    for _ in range(START_TIMEOUT_SECONDS * 50):
        if server.started or serving.done():
            break
        await asyncio.sleep(0.02)
    if serving.done():
        serving.result()
    ready()
    await stop.wait()
    server.should_exit = True
    await serving
