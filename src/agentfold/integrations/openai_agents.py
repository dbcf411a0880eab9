"""An OpenAI Agents SDK session on agentfold: `AgentfoldSession`.

A session is one stream (`openai-session:<session id>`) and every change is an event: `ItemAdded` (one per item,
all items of one `add_items` call in one atomic append), `ItemPopped`, `SessionCleared`, and `BranchedFrom` at the
start of a branch. What it guarantees:

- `add_items` is atomic: every item of the call is stored, or none; a cancelled call finishes its append or never
  began it, then raises `CancelledError`, so nothing is left half written.
- `get_items(limit=N)` reads the session's stream backwards and costs O(N) (plus the pops and branch points it
  passes), whatever the session's length.
- `pop_item` removes the newest item exactly once, also with several writers (the pop is appended with the
  stream's expected version and retried if another change came first).
- `branch_from(item_index)` starts a new session that shares the first `item_index` items without copying them.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from agentfold.integrations import require

require("agents.memory", "openai-agents")

from agents.memory import SessionSettings  # noqa: E402
from agents.memory.session_settings import resolve_session_limit  # noqa: E402

from agentfold.errors import InvalidInput, WrongExpectedVersion  # noqa: E402
from agentfold.events import NO_STREAM, NewEvent, RecordedEvent  # noqa: E402
from agentfold.store import EventStore  # noqa: E402

T = TypeVar("T")

STREAM_PREFIX: Final = "openai-session:"
ITEM_ADDED: Final = "ItemAdded"
ITEM_POPPED: Final = "ItemPopped"
SESSION_CLEARED: Final = "SessionCleared"
BRANCHED_FROM: Final = "BranchedFrom"
_MAX_STREAM_ID: Final = 200
_POP_ATTEMPTS: Final = 50


def session_stream(session_id: str) -> str:
    """The stream holding one session."""
    readable = STREAM_PREFIX + session_id
    if len(readable) <= _MAX_STREAM_ID and readable.isprintable():
        return readable
    return STREAM_PREFIX + "#" + hashlib.sha256(session_id.encode()).hexdigest()[:40]


@dataclass
class _Found:
    """Visible items found by a backward walk, newest first, each with the (stream, version) that holds it."""

    items: list[tuple[tuple[str, int], dict[str, Any]]] = field(default_factory=list)
    hidden: set[tuple[str, int]] = field(default_factory=set)
    head_version: int = 0


class AgentfoldSession:
    """The OpenAI Agents SDK `Session` protocol over an agentfold `EventStore` (any backend)."""

    def __init__(
        self,
        session_id: str,
        store: EventStore,
        *,
        session_settings: SessionSettings | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInput(f"session_id must be a non-empty str, got {session_id!r}")
        self.session_id = session_id
        self.store = store
        self.session_settings = session_settings
        self.stream_id = session_stream(session_id)

    # -- reading -------------------------------------------------------------------------------------------------

    async def _walk(self, limit: int | None) -> _Found:
        """Visible items newest first (at most `limit`), following branch points into the sessions they share."""
        found = _Found()
        stream: str | None = self.stream_id
        before: int | None = None
        first = True
        while stream is not None:
            next_stream: str | None = None
            async for event in self._backwards(stream, before):
                if first:
                    found.head_version = event.version
                    first = False
                if event.type == ITEM_ADDED:
                    location = (stream, event.version)
                    if location not in found.hidden:
                        found.items.append((location, event.data["item"]))
                        if limit is not None and len(found.items) >= limit:
                            return found
                elif event.type == ITEM_POPPED:
                    found.hidden.add((event.data["stream"], event.data["version"]))
                elif event.type == SESSION_CLEARED:
                    return found
                elif event.type == BRANCHED_FROM:
                    found.hidden.update((entry[0], entry[1]) for entry in event.data["hidden"])
                    if event.data["stream"] is not None:
                        next_stream, before = event.data["stream"], event.data["through_version"] + 1
                    break
            stream = next_stream
        return found

    def _backwards(self, stream: str, before: int | None) -> AsyncIterator[RecordedEvent]:
        return self.store.read_stream(stream, backwards=True, before_version=before)

    async def get_items(self, limit: int | None = None) -> list[Any]:
        """The session's items in order; with `limit` (or `session_settings.limit`), the newest `limit` of them."""
        resolved = resolve_session_limit(limit, self.session_settings)
        if resolved is not None and (isinstance(resolved, bool) or not isinstance(resolved, int)):
            raise InvalidInput(f"limit must be None or an int, got {resolved!r}")
        if resolved is not None and resolved <= 0:
            return []
        found = await self._walk(resolved)
        return [item for _, item in reversed(found.items)]

    # -- changing ------------------------------------------------------------------------------------------------

    async def add_items(self, items: list[Any]) -> None:
        """Append `items` in order, atomically: all of them are stored, or none."""
        if not isinstance(items, list):
            raise InvalidInput(f"items must be a list, got {type(items).__name__}")
        if not items:
            return
        events = [NewEvent(ITEM_ADDED, {"item": item}) for item in items]  # bad items raise here, before any I/O
        await _finish_despite_cancel(self.store.append(self.stream_id, events))

    async def pop_item(self) -> Any | None:
        """Remove and return the newest item, or None when the session is empty."""
        for _ in range(_POP_ATTEMPTS):
            found = await self._walk(1)
            if not found.items:
                return None
            (stream, version), item = found.items[0]
            popped = NewEvent(ITEM_POPPED, {"stream": stream, "version": version})
            expected = found.head_version if found.head_version else NO_STREAM
            try:
                await _finish_despite_cancel(self.store.append(self.stream_id, [popped], expected_version=expected))
            except WrongExpectedVersion:
                continue  # another change came first: look again
            return item
        raise WrongExpectedVersion(self.stream_id, "a quiet moment", await self.store.stream_version(self.stream_id))

    async def clear_session(self) -> None:
        """Remove every item (the history stays in the log, behind a `SessionCleared` event)."""
        await _finish_despite_cancel(self.store.append(self.stream_id, [NewEvent(SESSION_CLEARED, {})]))

    async def branch_from(self, item_index: int, session_id: str | None = None) -> AgentfoldSession:
        """A new session holding this session's first `item_index` items, shared rather than copied.

        Changes to either session afterwards do not show in the other."""
        if isinstance(item_index, bool) or not isinstance(item_index, int) or item_index < 0:
            raise InvalidInput(f"item_index must be an int >= 0, got {item_index!r}")
        found = await self._walk(None)
        ordered = list(reversed(found.items))
        if item_index > len(ordered):
            raise InvalidInput(f"item_index {item_index} is beyond the session's {len(ordered)} items")
        branch = AgentfoldSession(
            session_id or f"{self.session_id}/branch-{uuid.uuid4().hex[:12]}",
            self.store,
            session_settings=self.session_settings,
        )
        if item_index:
            (stream, through), _ = ordered[item_index - 1]
            data: dict[str, Any] = {
                "session_id": self.session_id,
                "stream": stream,
                "through_version": through,
                "hidden": sorted([list(location) for location in found.hidden]),
            }
        else:
            data = {"session_id": self.session_id, "stream": None, "through_version": 0, "hidden": []}
        await self.store.append(branch.stream_id, [NewEvent(BRANCHED_FROM, data)], expected_version=NO_STREAM)
        return branch


async def _finish_despite_cancel(awaitable: Awaitable[T]) -> T:
    """Run a store change to its end even if the caller is cancelled meanwhile, then re-raise the cancellation:
    the change is then whole (or was refused), never cut off halfway with its outcome unknown."""
    task = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as error:
            cancelled = cancelled or error
    result = task.result()
    if cancelled is not None:
        raise cancelled
    return result
