"""Read models kept up to date from a named subscription, with the checkpoint in the read model's transaction.

A projector reads a page of events after its checkpoint, hands the page to `update` together with the backend's
transaction handle, and stores the new checkpoint in the same transaction. On SQLite and PostgreSQL, where the read
model lives in the same database, a crash anywhere leaves either both the changes and the checkpoint or neither:
each event is applied exactly once. Elsewhere the update runs before the checkpoint is saved, so an event can be
applied again after a crash (at least once); make such updates idempotent.

What `update(handle, events)` receives as `handle`:

- SQLite: the `sqlite3.Connection` of the writer, inside its transaction; `update` must be a plain function.
- PostgreSQL: a `psycopg.AsyncConnection` inside a transaction; `update` may be a plain or an async function.
- memory and Redis: None; keep the read model yourself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentfold.events import RecordedEvent
from agentfold.subscription import IDLE_WAIT_SECONDS

if TYPE_CHECKING:
    from agentfold.log import EventLog

ReadModelUpdate = Callable[[Any, list[RecordedEvent]], Any]


class Projector:
    """Apply every event after the checkpoint `name` to a read model, page by page, until stopped.

    Made by `EventStore.projector`, which checks the arguments."""

    def __init__(
        self,
        store: EventLog,
        name: str,
        update: ReadModelUpdate,
        types: tuple[str, ...] | None = None,
        stream_prefix: str | None = None,
        page_size: int = 500,
    ) -> None:
        self.store = store
        self.name = name
        self.update = update
        self.types = types
        self.stream_prefix = stream_prefix
        self.page_size = page_size
        self.position = 0
        self.applied = 0
        self._stopping = asyncio.Event()

    async def catch_up(self) -> int:
        """Apply everything appended so far; return how many events were applied."""
        stored = await self.store.load_checkpoint(self.name)
        self.position = stored or 0
        applied = 0
        while True:
            page, scanned_to = await self.store.read_all_page(
                self.position, self.page_size, self.types, self.stream_prefix
            )
            if scanned_to <= self.position:
                return applied
            if page:
                await self.store.apply_with_checkpoint(self.name, scanned_to, self._bind(page))
            else:
                await self.store.save_checkpoint(self.name, scanned_to)
            self.position = scanned_to
            applied += len(page)
            self.applied += len(page)

    def _bind(self, page: list[RecordedEvent]) -> Callable[[Any], Any]:
        update = self.update
        return lambda handle: update(handle, page)

    async def run(self) -> None:
        """Catch up, then follow new events until `stop()`."""
        while not self._stopping.is_set():
            await self.catch_up()
            await self.store.wait_for_append(self.position, IDLE_WAIT_SECONDS, until=self._stopping)

    def stop(self) -> None:
        """Make `run()` return after the page it is applying."""
        self._stopping.set()
