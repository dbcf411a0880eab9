"""The one interface between the store and a database: `Backend`, and the small helpers a backend may use.

`agentfold.EventStore` composes a backend (as an HTTP client composes a transport): the store validates arguments,
encodes events, decides exact retries, pages backward and global reads, decodes stream records, keeps snapshots as
side records, observes, and builds the features; a backend only does the I/O of its database. A backend that
passes `tests/test_conformance.py` gives every guarantee in `docs/guarantees.md`; `docs/backends.md` shows how to
write one, and `agentfold.backends.memory` is the short example.

The store calls a backend only with checked arguments (stream ids, versions, positions and names already valid,
`limit >= 1`), never after `close`, and may call it from many tasks of one event loop at once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Final, NamedTuple, Protocol, runtime_checkable

from agentfold.appending import Watched
from agentfold.blobs import BlobUsage
from agentfold.encoding import EncodedEvent
from agentfold.events import AppendResult, ExpectedVersion, RecordedEvent
from agentfold.openruns import OpenRun
from agentfold.wakeup import retrieve_outcome

DEFAULT_PAGE_SIZE: Final = 1000
"""Events per page unless a backend chooses otherwise."""


class RecordDecoder(Protocol):
    """Decodes one stored record into the event readers get (a `msgspec.json.Decoder(RecordedEvent)` is one);
    raises `msgspec.DecodeError` for a record it cannot read."""

    def decode(self, record: bytes | str, /) -> RecordedEvent: ...


@runtime_checkable
class Backend(Protocol):
    """What a database must do for `EventStore`. Each method's docstring says what the store relies on."""

    scheme: str
    """The URL scheme the backend serves (``"memory"``, ``"sqlite"``, ...): names it in errors and traces."""
    max_event_size: int
    """The largest encoded event, in bytes, `append` accepts; the store refuses bigger ones before any I/O."""
    page_size: int
    """Events per page read, the store's and the backend's own paging alike (tests lower it)."""
    reads_ahead: bool
    """Whether `read_stream_records` asks for the next page before the current one is taken (a backend may
    ignore it; tests switch it to check both ways give the same events)."""
    record_decoder: RecordDecoder | None
    """Decodes one record of `read_stream_records`; None when the records are `RecordedEvent`s already."""

    async def append(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        """Write one append's prepared events atomically, enforcing `expected_version` in the same step.

        Return the stream's new version and the position of the last event. When every id is known from one
        earlier append, write nothing and return `agentfold.appending.find_retry`'s `RetriedAppend` (the store
        then compares the content); raise `WrongExpectedVersion` or `DuplicateEventId` as `find_retry` and
        `check_expected` decide. Positions grow in commit order: a reader never sees a position and later finds a
        smaller one filled in."""
        ...

    def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[Any], None]:
        """The stream's events above `after_version` (at most `limit`, all when None) as pages of stored records,
        each decoded by `record_decoder`. Pages follow one another in version order; the records of one page may
        come in any order. At most `page_size` records a page; an empty page only at the end."""
        ...

    async def read_stream_backwards(
        self, stream_id: str, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        """At most `limit` events of the stream with a version below `before_version` and above `after_version`,
        newest first."""
        ...

    async def read_all_page(
        self, after_position: int, limit: int, types: tuple[str, ...] | None, stream_prefix: str | None
    ) -> tuple[list[RecordedEvent], int]:
        """The events above `after_position` that match `types` and `stream_prefix`, in position order, at most
        `limit` of them, and the position up to which they are every match: the position scanned
        (`after_position` when nothing is there). A backend without an index for the filters scans at most `limit`
        positions and reports the last one; one with an index may report the last match it returns, or its head
        when no more match. Nothing may later appear at or below the position scanned."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event (trimmed or not), 0 when it has none."""
        ...

    async def head_position(self) -> int:
        """The global position of the last event, 0 when the store is empty."""
        ...

    async def wait_for_append(self, after_position: int, timeout: float) -> None:
        """Return when an event above `after_position` may exist, or after `timeout` seconds; promptly once the
        backend is closed. A hint only: the store's callers read again."""
        ...

    async def load_snapshot(self, owner: str, name: str) -> tuple[int, bytes] | None:
        """The side record `name` kept for `owner` (a stream id, or the log's own name): (the version or position
        it covers, its state), or None."""
        ...

    async def save_snapshot(self, owner: str, name: str, mark: int, state: bytes) -> None:
        """Keep `state` as the side record `name` of `owner` covering `mark`, unless one with a higher mark is kept."""
        ...

    async def load_checkpoint(self, name: str) -> int | None:
        """The position last saved under the subscriber `name`, or None."""
        ...

    async def save_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any] | None = None) -> None:
        """Remember `position` for the subscriber `name`. With `apply`, first run `apply(handle)` (plain or async):
        in the same transaction where the backend has them (the handle is then its connection: exactly once), else
        `apply(None)` before saving (`apply_then`: at least once)."""
        ...

    async def trim_stream(self, stream_id: str, before_version: int) -> int:
        """Delete the stream's events with a version below `before_version` (> 1); return how many went. The
        stream's version, the other streams, every position and the ids' retry records stay as they were."""
        ...

    async def close(self) -> None:
        """Finish what was accepted (queued appends commit), then release connections and threads. Called once."""
        ...


@runtime_checkable
class BlobStorage(Protocol):
    """What a backend adds to `Backend` to keep large payloads (`agentfold.blobs`). Optional: the store splits
    events into blobs only for a backend that has it, and refuses events above `max_event_size` otherwise.

    A backend that has it promises, besides these members:

    - `append` writes each written event's `EncodedEvent.blobs` and one link per (event, blob digest) in the same
      step as the event: all of the append, its blobs and links, or none of it. A blob already stored under its
      digest is kept as it is (same digest, same content). An append that writes nothing (a retry, a refusal)
      writes no blob and no link.
    - `trim_stream` removes the links of the events it deletes and every blob no event links to any more, in the
      same step as the deletion: no remaining event refers to a missing blob, and no blob outlives its last event.
    """

    blob_threshold: int
    """A top-level data field whose JSON is at least this many bytes is kept as a blob."""
    max_blob_size: int
    """The largest blob `append` accepts, in bytes."""

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        """The contents of the blobs stored under `digests`; a digest with no blob is left out."""
        ...

    async def blob_usage(self) -> BlobUsage:
        """How many blobs the store holds, and their bytes."""
        ...


@runtime_checkable
class OpenRunsStorage(Protocol):
    """What a backend adds to `Backend` to keep the open runs (`agentfold.openruns`). Optional: without it, a
    worker folds them from the log.

    A backend that has it promises, besides `open_runs`: `append` applies `agentfold.openruns.changes` of each
    written append's events to its rows in the same step as the events, in position order, so that at every
    committed position the rows equal `agentfold.openruns.fold` of the log up to it. An append that writes nothing
    (a retry, a refusal, a failure) changes no row. A store that held events before the backend kept the rows gets
    them folded from its log once, when it is opened.
    """

    async def open_runs(self) -> tuple[int, list[OpenRun]]:
        """(a position, every open run as of a committed position at or after it), in no particular order: a
        reader that follows the log from the position returned and applies what it reads misses nothing."""
        ...

    async def rebuild_open_runs(self) -> int:
        """Replace the rows with `agentfold.openruns.fold` of the log, in one step that no append interleaves with
        (an append waits for it, or commits before it and is folded); return how many runs are open."""
        ...


@runtime_checkable
class RunsIndexStorage(Protocol):
    """What a backend adds to `Backend` to keep the runs index (`agentfold.runrows`) with each append. Optional:
    without it, a reader of the index folds the log into it with a projector.

    A backend that has it promises: `append` applies `agentfold.runrows.written` of each written append to its
    rows in the same step as the events, in position order (the rows `agentfold.runrows.Rows` would hold), so that
    at every committed position they equal the fold of the log up to it; an append that writes nothing changes no
    row. A store that held events before the backend kept the rows gets them folded from its log once, when opened.
    """

    async def rebuild_runs_index(self) -> int:
        """Replace the rows with the fold of the log, in one step that no append interleaves with; return how many
        runs there are."""
        ...


@runtime_checkable
class WatchingAppends(Protocol):
    """What a backend adds to `Backend` to make an append depend on another stream's version. Optional: without it,
    a caller that decided to append from what it read of another stream reads that stream again first.

    A backend that has it promises: `append_watching` writes the append only if the stream `watched.stream_id` is
    at `watched.version` in the same step as the append (no write to that stream can come between), raising
    `agentfold.appending.WatchedStreamMoved` and writing nothing otherwise; else it is `Backend.append`.
    """

    async def append_watching(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion, watched: Watched
    ) -> AppendResult:
        """`append`, under the condition `watched`."""
        ...


async def apply_then(apply: Callable[[Any], Any] | None) -> None:
    """Run `apply(None)` (plain or async), for a backend without transactions before it saves a checkpoint."""
    if apply is None:
        return
    outcome = apply(None)
    if inspect.isawaitable(outcome):
        await outcome


STREAM_CATEGORY_SEPARATOR: Final = "-"


def prefix_category(stream_prefix: str) -> str | None:
    """The stream category of every stream id starting with `stream_prefix`: the id up to and including its first
    ``-`` (``workflow-``, ``$worker-``, ``order-``). None when the prefix holds no ``-``: streams of several
    categories (and streams without one) may start with it. A backend indexing events by category
    (`stream_category`) serves a prefix filter from that index when this is not None."""
    dash = stream_prefix.find(STREAM_CATEGORY_SEPARATOR)
    return None if dash < 0 else stream_prefix[: dash + 1]


def stream_category(stream_id: str) -> str:
    """A stream's category: its id up to and including the first ``-``, or ``""`` when it has none."""
    dash = stream_id.find(STREAM_CATEGORY_SEPARATOR)
    return "" if dash < 0 else stream_id[: dash + 1]


class RecordPage(NamedTuple):
    """One page a backend fetched: its stored records, their number of events, and the last version among them
    (`after_version` when the page is empty)."""

    records: Sequence[Any]
    size: int
    """How many events the records are."""
    last_version: int


async def read_pages(
    fetch: Callable[[str, int, int], Awaitable[RecordPage]],
    stream_id: str,
    after_version: int,
    limit: int | None,
    page_size: int,
    ahead: bool,
) -> AsyncGenerator[Sequence[Any], None]:
    """`Backend.read_stream_records` from a function that fetches one page: pages of `page_size` until the stream
    ends or `limit` is reached. With `ahead`, the next page is asked for before the current one is yielded, so a
    server prepares it while this process decodes (the request is this read's own, made after the read began, and
    dropped with it)."""
    remaining = limit
    after = after_version
    pending: asyncio.Future[RecordPage] | None = None
    try:
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            if pending is not None:
                page, pending = await pending, None
            else:
                page = await fetch(stream_id, after, size)
            if not page.size:
                return
            if remaining is not None:
                remaining -= page.size
            full = page.size == size
            if full and ahead and (remaining is None or remaining > 0):
                next_size = page_size if remaining is None else min(page_size, remaining)
                pending = asyncio.ensure_future(fetch(stream_id, page.last_version, next_size))
                await asyncio.sleep(0)  # let it send its request before this page is decoded
            yield page.records
            if not full:
                return
            after = page.last_version
    finally:
        if pending is not None:
            pending.cancel()
            pending.add_done_callback(retrieve_outcome)  # a page nobody will take


__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Backend",
    "BlobStorage",
    "OpenRunsStorage",
    "RecordDecoder",
    "RecordPage",
    "RunsIndexStorage",
    "WatchingAppends",
    "apply_then",
    "prefix_category",
    "read_pages",
    "stream_category",
]
