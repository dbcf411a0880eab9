"""Wake-ups: how backends tell waiting readers that the log may have grown, and how readers wait for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


class Broadcast:
    """Wakes every waiting task at once.

    Take a `ticket()` before checking the condition, then `wait(ticket, timeout)`: a wake that lands between the
    check and the wait is not lost, because it sets exactly that ticket.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ticket(self) -> asyncio.Event:
        return self._event

    def wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    @staticmethod
    async def wait(ticket: asyncio.Event, timeout: float) -> None:
        """Return when `ticket` is woken or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ticket.wait(), timeout)


async def wait_unless(waiting: Awaitable[Any], until: asyncio.Event | None) -> None:
    """Await `waiting`, or stop as soon as `until` is set, whichever comes first.

    The loser is cancelled. A driver may still finish a cancelled wait with an error (redis-py does when a store
    closes under a blocked read); that outcome is retrieved so it is never reported as unhandled. An error of
    `waiting` itself, when it finished first, is raised.
    """
    waiter = asyncio.ensure_future(waiting)
    if until is None:
        await waiter
        return
    stopper = asyncio.ensure_future(until.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, stopper):
            if not task.done():
                task.cancel()
                task.add_done_callback(retrieve_outcome)
    if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
        raise waiter.exception()  # type: ignore[misc]


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback for a cancelled future nobody awaits: fetch its outcome so an error it may still finish
    with is not reported as unhandled."""
    if not future.cancelled():
        future.exception()
