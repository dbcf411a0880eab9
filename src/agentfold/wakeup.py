"""Wake-ups: how backends tell waiting readers that the log may have grown, and how readers wait for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, Final


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
        await wait_event(ticket, timeout)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds pass (False); a cancellation is always raised.

    Why not `asyncio.wait_for`: on Python 3.11 it returns normally when the task is cancelled in the same loop
    iteration as the awaited event is set, and the cancellation is lost. One append wakes every waiter of a
    process at once, so under load some cancelled waiter always lands there, and a loop around it (a client
    awaiting a result, a worker following the log) runs on after its cancellation, holding event-loop shutdown.
    `asyncio.timeout` counts cancellations and never loses one.
    """
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
            return True
    return False


LOSER_GRACE_SECONDS: Final = 1.0
"""How long `wait_unless` lets the cancelled loser end before it returns: so a component that stops leaves no wait
of its own still running, and a driver that swallows a cancellation cannot hold it up for longer."""


async def wait_unless(waiting: Awaitable[Any], until: asyncio.Event | None) -> None:
    """Await `waiting`, or stop as soon as `until` is set, whichever comes first.

    The loser is cancelled, and has ended when this returns (unless it takes more than `LOSER_GRACE_SECONDS`). A
    cancellation of the calling task during the wait is always raised, even when
    `waiting` swallowed it. A driver may still finish a cancelled wait with an error (redis-py does when a store
    closes under a blocked read); that outcome is retrieved so it is never reported as unhandled. An error of
    `waiting` itself, when it finished first, is raised.
    """
    current = asyncio.current_task()
    cancelling = 0 if current is None else current.cancelling()
    waiter = asyncio.ensure_future(waiting)
    if until is None:
        await waiter
    else:
        stopper = asyncio.ensure_future(until.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            losers = [task for task in (waiter, stopper) if not task.done()]
            for task in losers:
                task.cancel()
                task.add_done_callback(retrieve_outcome)
            if losers:  # they end before this returns (a driver cancelling a query takes a round trip), within reason
                await asyncio.wait(losers, timeout=LOSER_GRACE_SECONDS)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]
    if current is not None and current.cancelling() > cancelling:
        # This task was cancelled during the wait and something below swallowed it (a driver's own
        # `asyncio.wait_for` on Python 3.11, see `wait_event`): raise it here, where every idle loop passes.
        raise asyncio.CancelledError


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback for a cancelled future nobody awaits: fetch its outcome so an error it may still finish
    with is not reported as unhandled."""
    if not future.cancelled():
        future.exception()
