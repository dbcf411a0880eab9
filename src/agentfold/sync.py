"""A blocking API for code without an event loop (Flask, Django, scripts, thread-based agent frameworks).

It is the async store and runtime, not a second implementation: every call is handed to one event loop that runs
in a background thread of this process, and the calling thread waits for its answer. The same guarantees hold and
the same errors are raised (`WrongExpectedVersion`, `DuplicateEventId`, `WorkflowFailed`, ...). Any number of
threads may call at once. Do not call it from inside a running event loop: use the async API there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from agentfold.connect import connect as connect_async
from agentfold.errors import InvalidInput
from agentfold.events import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent
from agentfold.runtime import History, Runtime, Worker, WorkflowClient
from agentfold.store import EventStore

T = TypeVar("T")

CALLED_FROM_A_LOOP: Final = (
    "agentfold.sync was called from a running event loop; use the async API (agentfold.connect) there"
)


class _LoopThread:
    """The one background event loop the blocking API runs on, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=serve, name="agentfold-sync-loop", daemon=True).start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the background loop and return its result (or raise its exception) here."""
        if _in_a_running_loop():
            coroutine.close()
            raise InvalidInput(CALLED_FROM_A_LOOP)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop()).result()

    def iterate(self, pages: AsyncGenerator[list[T], None]) -> Iterator[T]:
        """Drive an async generator of pages one page per call on the loop; close it if the caller stops early."""
        try:
            while True:
                try:
                    page = self.run(anext(pages))
                except StopAsyncIteration:
                    return
                yield from page
        finally:
            self.run(pages.aclose())


_RUNNER: Final = _LoopThread()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run any agentfold coroutine to its end from blocking code, on the shared background loop."""
    return _RUNNER.run(coroutine)


def connect(url: str, **options: Any) -> SyncStore:
    """Open the store at `url` (as `agentfold.connect`) for blocking use; close it, or use ``with``."""

    async def opened() -> EventStore:
        return await connect_async(url, **options)

    return SyncStore(run(opened()))


class SyncStore:
    """An open store whose methods block: `append`, `read_stream`, `read_all`, `stream_version`, `head_position`.

    `async_store` is the store itself, for the async parts of the library (pass it where a store is asked for);
    it lives on the background loop.
    """

    def __init__(self, store: EventStore) -> None:
        self.async_store = store

    def append(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: ExpectedVersion = ANY
    ) -> AppendResult:
        """See `EventStore.append`: atomic, checked against `expected_version`, idempotent on event ids."""
        return run(self.async_store.append(stream_id, events, expected_version))

    def read_stream(self, stream_id: str, after_version: int = 0, limit: int | None = None) -> Iterator[RecordedEvent]:
        """See `EventStore.read_stream`; read a page at a time as the iterator is consumed."""
        return _RUNNER.iterate(self.async_store.read_stream_pages(stream_id, after_version, limit))

    def read_all(
        self,
        after_position: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """See `EventStore.read_all`; read a page at a time as the iterator is consumed."""
        return _RUNNER.iterate(self.async_store.read_all_pages(after_position, types, stream_prefix, limit))

    def stream_version(self, stream_id: str) -> int:
        """See `EventStore.stream_version`."""
        return run(self.async_store.stream_version(stream_id))

    def head_position(self) -> int:
        """See `EventStore.head_position`."""
        return run(self.async_store.head_position())

    def close(self) -> None:
        """Release the store's connections. Calling it twice is harmless."""
        run(self.async_store.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncClient:
    """`WorkflowClient` with blocking methods: start, signal, result, state, history and run control."""

    def __init__(self, runtime: Runtime, store: SyncStore) -> None:
        self.client: WorkflowClient = runtime.client(store.async_store)

    def start(self, workflow: Callable[..., Any] | str, *args: Any, workflow_id: str | None = None) -> str:
        """See `WorkflowClient.start`; returns the run's workflow id."""
        return run(self.client.start(workflow, *args, workflow_id=workflow_id)).workflow_id

    def signal(self, workflow_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        """See `WorkflowClient.signal`."""
        run(self.client.signal(workflow_id, name, payload, signal_id=signal_id))

    def result(self, workflow_id: str, *, timeout: Any = None) -> Any:
        """See `WorkflowClient.result`: blocks until the run ends or `timeout` passes."""
        return run(self.client.result(workflow_id, timeout=timeout))

    def state(self, workflow_id: str) -> str:
        """See `WorkflowClient.state`."""
        return run(self.client.state(workflow_id))

    def history(self, workflow_id: str) -> History:
        """See `WorkflowClient.history`."""
        return run(self.client.history(workflow_id))

    def cancel(self, workflow_id: str, reason: str = "") -> bool:
        """See `WorkflowClient.cancel`."""
        return run(self.client.cancel(workflow_id, reason))

    def terminate(self, workflow_id: str, reason: str = "") -> None:
        """See `WorkflowClient.terminate`."""
        run(self.client.terminate(workflow_id, reason))

    def retry(self, workflow_id: str) -> int:
        """See `WorkflowClient.retry`."""
        return run(self.client.retry(workflow_id))

    def restart(self, workflow_id: str, *, from_step: str) -> int:
        """See `WorkflowClient.restart`."""
        return run(self.client.restart(workflow_id, from_step=from_step))


@contextmanager
def worker(runtime: Runtime, store: SyncStore, **options: Any) -> Iterator[Worker]:
    """Run `runtime`'s workflows on the background loop while the ``with`` block is open (see `Runtime.worker`).

    Step functions that are plain functions run in threads, as they do under the async API.
    """
    running = runtime.worker(store.async_store, **options)
    run(running.start())
    try:
        yield running
    finally:
        run(running.stop())


def _in_a_running_loop() -> bool:
    """Whether this thread runs an event loop now (where blocking on the background loop would deadlock it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
