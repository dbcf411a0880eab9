"""Catch-up subscriptions: history first, then live events, through one position-ordered read loop.

Catch-up and live are the same loop: read the next page after the last position seen; when there is none, wait for
the backend's wake-up hint and read again. Because `read_all` positions are final, switching from history to live
cannot skip or repeat an event, even while writers append during the catch-up. Only one page is held at a time, so a
slow consumer slows its own subscription and never the writers, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from agentfold import instrumentation
from agentfold.errors import InvalidInput, StoreClosed
from agentfold.events import RecordedEvent

if TYPE_CHECKING:
    from agentfold.log import EventLog

UNNAMED: Final = "(unnamed)"
"""How an observer names a subscription that has no name."""
IDLE_WAIT_SECONDS: Final = 5.0
"""Longest wait on the backend's hint before reading again anyway (a missed hint costs at most this)."""


class Subscription:
    """An async iterator over events after a position, in global order, that never ends until closed.

    With a `name`, the subscription is durable: it starts after the position last acknowledged under that name
    (falling back to `after_position`), and `ack()` stores a new position. Delivery is at-least-once: events after
    the last acknowledged position are delivered again after a restart.
    """

    def __init__(
        self,
        store: EventLog,
        after_position: int,
        types: tuple[str, ...] | None,
        stream_prefix: str | None,
        name: str | None,
        page_size: int,
    ) -> None:
        self._store = store
        self._after = after_position
        self._types = types
        self._prefix = stream_prefix
        self.name = name
        self._page_size = page_size
        self._buffer: collections.deque[RecordedEvent] = collections.deque()
        self._delivered = after_position
        self._acknowledged = after_position
        self._stopping = asyncio.Event()
        self._started = False
        self._handling: contextlib.AbstractContextManager[None] | None = None
        """The observer's record of the event handed out last, while the caller handles it."""

    @property
    def position(self) -> int:
        """The position of the last event handed out (or of the starting point)."""
        return self._delivered

    async def start(self) -> Self:
        """Resume from the stored checkpoint when named. Called by `async with`."""
        if not self._started:
            self._started = True
            if self.name is not None:
                stored = await self._store.load_checkpoint(self.name)
                if stored is not None:
                    self._after = self._delivered = self._acknowledged = stored
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> RecordedEvent:
        if self._handling is not None:
            self._end_handling()
        if not self._started:
            await self.start()
        while not self._buffer:
            if self._stopping.is_set():
                raise StopAsyncIteration
            try:
                page, scanned_to = await self._store.read_all_page(
                    self._after, self._page_size, self._types, self._prefix
                )
                observer = instrumentation.observer
                if observer is not None:
                    behind = await self._store.head_position() - self._after
                    observer.lag(self.name or UNNAMED, "subscription", max(0, behind))
            except StoreClosed:
                raise StopAsyncIteration from None
            self._buffer.extend(page)
            if scanned_to > self._after:
                self._after = scanned_to
            elif not page:
                await self._wait()
        event = self._buffer.popleft()
        self._delivered = event.position
        observer = instrumentation.observer
        if observer is not None:
            # The caller handles the event in its own task until it asks for the next one: that is the span.
            self._handling = observer.deliver(self.name or UNNAMED, "subscription", event)
            self._handling.__enter__()
        return event

    def _end_handling(self) -> None:
        handling, self._handling = self._handling, None
        if handling is not None:
            handling.__exit__(None, None, None)

    async def _wait(self) -> None:
        await self._store.wait_for_append(self._after, IDLE_WAIT_SECONDS, until=self._stopping)

    async def ack(self, event: RecordedEvent | int | None = None) -> None:
        """Acknowledge everything up to `event` (default: the last one handed out, or further when the events
        after it were all filtered out). Named subscriptions store the position; others just remember it."""
        if event is None:
            position = self._after if not self._buffer else self._delivered
        elif isinstance(event, RecordedEvent):
            position = event.position
        elif isinstance(event, int) and not isinstance(event, bool):
            position = event
        else:
            raise InvalidInput(f"ack takes a RecordedEvent or a position, got {type(event).__name__}")
        if position <= self._acknowledged:
            return
        self._acknowledged = position
        if self.name is not None:
            await self._store.save_checkpoint(self.name, position)

    async def close(self) -> None:
        """Stop iterating. An iteration waiting for new events ends at once."""
        self._stopping.set()
        self._end_handling()
