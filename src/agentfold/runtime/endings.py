"""Waking `WorkflowClient.result` callers when their run ends, with one reader of the log per store.

Every append wakes a store's waiters (`EventStore.wait_for_append`). A caller of `result` that waited that way read
its run's stream again after every append anywhere in the store: a thousand callers waiting under a thousand
appends a second made a million reads a second. Here one task per store reads only the events that can end a wait
(a run finishing or suspending, through the type index where the backend has one) and wakes the callers of those
runs. A caller still reads its stream again at least every `WAKE_CHECK_SECONDS`, so a wake that is missed (the
reader failed, the store closed) delays an answer and never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Final

from agentfold.runtime import history as h
from agentfold.store import EventStore

ENDING_TYPES: Final = (*h.FINISHED_TYPES, h.WORKFLOW_SUSPENDED)
"""The events after which a waiting `result` has an answer."""
PAGE: Final = 500
WAKE_CHECK_SECONDS: Final = 5.0
"""How long the reader, and a caller of `result`, wait for a push from the store before they look again (a push is a
hint, not a promise)."""


class Endings:
    """The callers waiting for runs of one store to end, and the task that wakes them."""

    def __init__(self, store: EventStore) -> None:
        self._store = weakref.ref(store)  # a strong one would keep the store (the key of `_endings`) alive forever
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._position = -1
        """Every ending at or below it has woken its callers (-1: the reader has not started)."""
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        """Set when the last caller stops waiting: the reader ends rather than hold the store."""

    async def wait(self, workflow_id: str, read_at: int, timeout: float) -> None:
        """Return when `workflow_id` may have ended after position `read_at` (the head the caller took before it
        last read the run), or after `timeout` seconds."""
        woken = asyncio.Event()
        waiting = self._waiting.setdefault(workflow_id, set())
        waiting.add(woken)
        try:
            if self._position < 0:
                self._position = read_at  # a new reader starts where its first caller read
            elif read_at < self._position:
                return  # the reader is past the caller's read: an ending in between woke nobody, read again
            self._start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout)
        finally:
            waiting.discard(woken)
            if not waiting:
                self._waiting.pop(workflow_id, None)
            if not self._waiting:
                self._idle.set()

    def _start(self) -> None:
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read(), name="agentfold result wake-ups")

    async def _read(self) -> None:
        store = self._store()
        if store is None:
            return
        try:
            while self._waiting:
                page, scanned = await store.read_all_page(
                    self._position, PAGE, ENDING_TYPES, h.WORKFLOW_STREAM_PREFIX, blobs=False
                )
                for event in page:
                    for woken in self._waiting.get(event.stream_id[len(h.WORKFLOW_STREAM_PREFIX) :], ()):
                        woken.set()
                self._position = scanned
                if len(page) < PAGE:
                    await store.wait_for_append(scanned, WAKE_CHECK_SECONDS, until=self._idle)
        except Exception:  # the store closed or failed: every caller reads again now and sees why
            for waiting in self._waiting.values():
                for woken in waiting:
                    woken.set()
        self._position = -1  # the next reader starts where its first caller read, not where this one stopped


_endings: weakref.WeakKeyDictionary[EventStore, Endings] = weakref.WeakKeyDictionary()


def endings_of(store: EventStore) -> Endings:
    """The one `Endings` of `store` in this process."""
    found = _endings.get(store)
    if found is None:
        found = _endings[store] = Endings(store)
    return found
