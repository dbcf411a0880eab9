"""The event log: everything the features built on it may use, over one `agentfold.backend.Backend`.

The public methods here validate input, encode events, decide exact retries, page backward and global reads, decode
stream records and keep snapshots as side records; the backend it composes does only the I/O of its database.
The core never imports a backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final, Self

import msgspec

from agentfold import instrumentation
from agentfold.appending import RetriedAppend, Watched, check_retry_content
from agentfold.backend import (
    DEFAULT_PAGE_SIZE,
    Backend,
    BlobStorage,
    OpenRunsStorage,
    RecordDecoder,
    RunsIndexStorage,
    WatchingAppends,
)
from agentfold.blobs import (
    BLOBS_KEY,
    READ_BATCH_BYTES,
    BlobPolicy,
    BlobUsage,
    batches,
    digests_of,
    joined,
    with_contents,
)
from agentfold.encoding import EncodedEvent, encode_events
from agentfold.errors import (
    AgentfoldError,
    CapabilityMissing,
    DuplicateEventId,
    EventsTrimmed,
    InvalidInput,
    StoreClosed,
    StoreCorrupted,
)
from agentfold.events import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent
from agentfold.openruns import OpenRun
from agentfold.validation import (
    MAX_VERSION,
    check_counter,
    check_event_types,
    check_expected_version,
    check_integer,
    check_limit,
    check_required_name,
    check_seconds,
    check_stream_id,
)
from agentfold.validation import check_stream_prefix as check_prefix
from agentfold.wakeup import wait_unless


class StreamSnapshot(msgspec.Struct, frozen=True):
    """A record kept beside the log: a state folded from one stream's events up to `version` (a snapshot)."""

    stream_id: str
    name: str
    version: int
    """The stream version the state covers: the events after it are folded on top."""
    state: bytes


class LogSnapshot(msgspec.Struct, frozen=True):
    """A record kept beside the log: a state folded from the whole log up to global `position` (what a follower of
    `read_all` knew there), so a process joining later reads on from `position` instead of from the start."""

    name: str
    position: int
    """The global position the state covers: the events after it are read on top."""
    state: bytes


TRIM_RACE_ATTEMPTS: Final = 5
"""How many times `read_all_page` reads a page again when a trim removed events of it (and their blobs) before
their blobs were loaded."""

LOG_SNAPSHOT_STREAM: Final = "$log"
"""The stream id under which a backend keeps log snapshots beside the stream snapshots: no stream of events has
this id (`$` streams are agentfold's own), so the two kinds never meet."""


class EventLog:
    """An append-only log of events, grouped into streams, in one global order.

    Guarantees, on every backend:

    - `append` is atomic: all events of one call are written, or none.
    - `expected_version` is checked in the same step as the write, so two writers expecting the same version never
      both succeed.
    - A retry is exact or refused: appending events whose ids were all written by one earlier call, in the same
      order to the same stream, with the same types, data and metadata (its trace context aside), returns that
      call's `AppendResult` and writes nothing (also after a restart); any other reuse of an id raises
      `DuplicateEventId` naming it.
    - The order `read_all` shows is final: a reader never sees a position and later finds a smaller one filled in.
    - Large payloads (`agentfold.blobs`), where the backend keeps blobs: top-level data fields of at least
      `blob_threshold` bytes are stored once per content, written in the same step as their event and removed with
      the last event that refers to them; readers get them back in place.

    The log composes a `Backend` (``EventLog(backend)``), which does the I/O; `agentfold.connect` builds both.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        """The backend this log writes through; backend-specific settings are its attributes."""
        self._closed = False
        self._blob_storage: BlobStorage | None = backend if isinstance(backend, BlobStorage) else None
        self._open_runs: OpenRunsStorage | None = backend if isinstance(backend, OpenRunsStorage) else None
        self._runs_index: RunsIndexStorage | None = backend if isinstance(backend, RunsIndexStorage) else None
        self._watching: WatchingAppends | None = backend if isinstance(backend, WatchingAppends) else None
        self._blob_batch_bytes = READ_BATCH_BYTES

    @property
    def scheme(self) -> str:
        """The URL scheme of the backend (``"memory"``, ``"sqlite"``, ``"postgresql"``, ``"redis"``)."""
        return self.backend.scheme

    @property
    def max_event_size(self) -> int:
        """The largest encoded event `append` accepts, in bytes."""
        return self.backend.max_event_size

    @property
    def keeps_blobs(self) -> bool:
        """Whether the backend keeps large data fields as blobs (`agentfold.blobs`); without it, `append` refuses
        events above `max_event_size` whole."""
        return self._blob_storage is not None

    @property
    def blob_policy(self) -> BlobPolicy | None:
        """When `append` makes blobs (the backend's `blob_threshold` and `max_blob_size`), None without blobs."""
        storage = self._blob_storage
        return None if storage is None else BlobPolicy(storage.blob_threshold, storage.max_blob_size)

    @property
    def blob_batch_bytes(self) -> int:
        """Readers load the blobs of a page in batches of about this many bytes (at least one event each): a stream
        page comes as several lists, a `read_all_page` ends after the first batch. Lower it to hold less."""
        return self._blob_batch_bytes

    @blob_batch_bytes.setter
    def blob_batch_bytes(self, value: int) -> None:
        self._blob_batch_bytes = check_integer(value, "blob_batch_bytes", minimum=1)

    @property
    def page_size(self) -> int:
        """Events per page read (a backend's own choice; lower it to read in smaller steps)."""
        return self.backend.page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        self.backend.page_size = check_limit(value, "page_size") or self.backend.page_size

    @property
    def reads_ahead(self) -> bool:
        """Whether a stream read asks for the next page before the current one is taken: for backends whose pages
        are prepared by a server or another thread, which then works while this one decodes."""
        return self.backend.reads_ahead

    @reads_ahead.setter
    def reads_ahead(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidInput(f"reads_ahead must be a bool, got {type(value).__name__}")
        self.backend.reads_ahead = value

    # -- public API ----------------------------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append `events` to `stream_id` atomically and return where the last one landed.

        Raises `WrongExpectedVersion` (nothing written) when the stream is not at `expected_version`;
        `DuplicateEventId` when an id was already used other than by an exact retry of its append; an
        `InvalidInput` subclass for bad arguments, before any I/O (`EventTooLarge` for an event above
        `max_event_size`, `BlobTooLarge` naming a data field above `max_blob_size`).

        Where the backend keeps blobs, each top-level data field of at least `blob_threshold` bytes is stored as a
        blob, once per content, in the same step as the event (`agentfold.blobs`); `max_event_size` counts the
        event without them. A retry writes no blob either.
        """
        observer = instrumentation.observer
        if observer is None:
            return await self._append(stream_id, expected_version, events)
        write = partial(self._append, stream_id, expected_version)
        return await observer.append(self.scheme, stream_id, events, expected_version, write)

    @property
    def watches_streams(self) -> bool:
        """Whether `append_watching` is available: the backend checks another stream's version in the append's own
        transaction (`agentfold.backend.WatchingAppends`)."""
        return self._watching is not None

    async def append_watching(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion,
        watched: Watched,
    ) -> AppendResult:
        """`append`, written only if the stream `watched.stream_id` is at `watched.version` when the append is
        written: checked in the append's own transaction, so no write to that stream can come between the check and
        the append. When it moved, nothing is written and `agentfold.appending.WatchedStreamMoved` is raised; an
        exact retry is answered only once the watched stream passes the check too.

        For a caller that decided to append from what it read of another stream (the HTTP API checks a token
        against the tokens it folded, `agentfold.tokens`), without reading that stream again first. Only where
        `watches_streams` is true (SQLite); `CapabilityMissing` elsewhere."""
        if not self.watches_streams:
            raise CapabilityMissing(f"the {self.scheme} backend does not check watched streams in an append")
        check_stream_id(watched.stream_id)
        observer = instrumentation.observer
        if observer is None:
            return await self._append(stream_id, expected_version, events, watched)
        write = partial(self._append, stream_id, expected_version, watched=watched)
        return await observer.append(self.scheme, stream_id, events, expected_version, write)

    async def _append(
        self,
        stream_id: str,
        expected_version: ExpectedVersion,
        events: Sequence[NewEvent],
        watched: Watched | None = None,
    ) -> AppendResult:
        """`append` itself; with an observer, it is called with the events the observer annotated."""
        self._check_open()
        check_stream_id(stream_id)
        expected = check_expected_version(expected_version)
        encoded = encode_events(events, self.max_event_size, self.blob_policy)
        if watched is None:
            result = await self.backend.append(stream_id, encoded, expected)
        else:
            assert self._watching is not None  # `append_watching` checked
            result = await self._watching.append_watching(stream_id, encoded, expected, watched)
        if type(result) is RetriedAppend:  # the ids were written before: exact retry, or DuplicateEventId
            return await self._check_retry(stream_id, encoded, result)
        return result

    async def _check_retry(self, stream_id: str, events: list[EncodedEvent], retried: RetriedAppend) -> AppendResult:
        """Compare a retry with the events stored, references and all (equal references: equal contents, by hash);
        when they differ and blobs are involved, compare the whole events (the store's blob threshold may have
        changed between the append and its retry)."""
        pages = self._stream_pages(stream_id, retried.first_version - 1, len(events), blobs=False)
        stored = [event async for page in pages for event in page]
        try:
            check_retry_content(stream_id, events, retried.first_version, stored)
        except DuplicateEventId:
            if not any(event.blobs for event in events) and not any(_marked(event) for event in stored):
                raise
            whole = [
                msgspec.structs.replace(event, data=data, metadata=metadata, blobs=())
                for event in events
                for data, metadata in [joined(event.data, event.metadata, event.blobs)]
            ]
            check_retry_content(stream_id, whole, retried.first_version, await self._load(stored))
        return AppendResult(retried.version, retried.position)

    async def append_capped(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
        *,
        keep: int,
        trim_every: int = 64,
        keep_from: int | None = None,
    ) -> AppendResult:
        """Append `events` as `append` does, keeping only the stream's last `keep` events: for streams of which only
        the tail matters (heartbeats, leases, a breaker's recent failures).

        Each time the stream's version passes a multiple of `trim_every`, the events before the last `keep` are
        deleted, never those from version `keep_from` on. The trim follows the append (it is not part of it): after
        a crash between the two the stream holds more events, and the next trim removes them. The stream's version,
        the other streams and every position stay as they were.
        """
        check_integer(keep, "keep", minimum=1)
        check_integer(trim_every, "trim_every", minimum=1)
        floor = None if keep_from is None else check_counter(keep_from, "keep_from")
        result = await self.append(stream_id, events, expected_version)
        if result.version // trim_every > (result.version - len(events)) // trim_every:
            before = result.version - keep + 1
            if floor is not None:
                before = min(before, floor)
            if before > 1:
                await self.backend.trim_stream(stream_id, before)
        return result

    async def trim_stream(self, stream_id: str, before_version: int) -> int:
        """Delete the stream's events with a version below `before_version`; return how many went.

        The primitive under `agentfold.trim` and `append_capped`, which decide what may go: this checks no snapshot,
        so a projection folding the stream from the beginning afterwards raises `HistoryTrimmed`. The stream's
        version, the other streams and every global position stay as they were; the ids of trimmed events stay
        known (a retry of them is refused)."""
        self._check_open()
        check_stream_id(stream_id)
        before = check_counter(before_version, "before_version")
        return await self.backend.trim_stream(stream_id, before) if before > 1 else 0

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        limit: int | None = None,
        *,
        backwards: bool = False,
        before_version: int | None = None,
        blobs: bool = True,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield the events of one stream with a version above `after_version`, in version order.

        With `backwards=True` the newest come first, in descending version order, and `limit` counts from the
        stream's end (or from `before_version`, exclusive): reading the last N events costs O(N), whatever the
        stream's length. Blobs are loaded back into their fields (`agentfold.blobs`) unless `blobs=False`, which
        leaves the references (``{"$blob": digest, "size": bytes}``) and the metadata's ``$blobs`` key in place.
        A read that meets events trimmed before it loaded their blobs raises `EventsTrimmed` (read again)."""
        pages = self.read_stream_pages(
            stream_id, after_version, limit, backwards=backwards, before_version=before_version, blobs=blobs
        )
        async for page in pages:
            for event in page:
                yield event

    def read_stream_pages(
        self,
        stream_id: str,
        after_version: int = 0,
        limit: int | None = None,
        *,
        backwards: bool = False,
        before_version: int | None = None,
        blobs: bool = True,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """Like `read_stream`, one list per round trip (a page whose blobs add up to more than `blob_batch_bytes`
        comes as several lists). Bad arguments raise here, at the call."""
        self._check_open()
        check_stream_id(stream_id)
        after = check_counter(after_version, "after_version")
        remaining = check_limit(limit)
        if not isinstance(backwards, bool):
            raise InvalidInput(f"backwards must be a bool, got {type(backwards).__name__}")
        if before_version is not None and not backwards:
            raise InvalidInput("before_version bounds a backward read: pass backwards=True")
        _check_bool(blobs, "blobs")
        if backwards:
            before = MAX_VERSION + 1 if before_version is None else check_counter(before_version, "before_version")
            pages = self._backward_stream_pages(stream_id, after, remaining, before, blobs)
        else:
            pages = self._stream_pages(stream_id, after, remaining, blobs)
        observer = instrumentation.observer
        if observer is None:
            return pages
        attributes = {"stream_id": stream_id, "after_version": after, "backwards": backwards}
        return observer.read(self.scheme, "read_stream", attributes, pages)

    async def _backward_stream_pages(
        self, stream_id: str, after_version: int, remaining: int | None, before: int, blobs: bool
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of `read_stream_pages(backwards=True)`, arguments checked: newest first."""
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page = await self.backend.read_stream_backwards(stream_id, before, after_version, size)
            if not page:
                return
            if remaining is not None:
                remaining -= len(page)
            if blobs and _any_marked(page):
                for run in batches(page, self.blob_batch_bytes):
                    yield await self._load(run)
            else:
                yield page
            if len(page) < size:
                return
            before = page[-1].version

    async def _stream_pages(
        self, stream_id: str, after_version: int, remaining: int | None, blobs: bool = True
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of `read_stream_pages`, arguments checked: the backend's records decoded, in version order."""
        decoder = self.backend.record_decoder
        pages = self.backend.read_stream_records(stream_id, after_version, remaining)
        async with contextlib.aclosing(pages):
            async for records in pages:
                if decoder is None:
                    page: list[RecordedEvent] = list(records)
                else:
                    try:
                        page = list(map(decoder.decode, records))
                    except msgspec.DecodeError as error:
                        message = f"a stored event of stream {stream_id!r} does not decode: {error}"
                        raise StoreCorrupted(message) from None
                versions = [event.version for event in page]
                if versions != sorted(versions):  # the records of a page may come in any order
                    page.sort(key=_version_of)
                if blobs and _any_marked(page):
                    for run in batches(page, self.blob_batch_bytes):
                        yield await self._load(run)
                else:
                    yield page

    def read_stream_records(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> AsyncGenerator[Sequence[Any], None]:
        """The pages of `read_stream_pages`, their events not yet decoded: lists of stored records, each turned into
        its event by `record_decoder` (the records are the events themselves when it is None). The records of one
        page may come in any order; pages follow one another in version order. For readers that keep little of
        each event (folds): decoding one record at a time frees each event as soon as it is handled, where a page of
        decoded events would stay alive, and be scanned by the garbage collector, until the page is done. The
        events hold blob references, as `read_stream(blobs=False)` gives them; `load_blobs` loads them. Bad
        arguments raise here, at the call."""
        self._check_open()
        check_stream_id(stream_id)
        return self.backend.read_stream_records(
            stream_id, check_counter(after_version, "after_version"), check_limit(limit)
        )

    @property
    def record_decoder(self) -> RecordDecoder | None:
        """Decodes one record of `read_stream_records` into its event; None when the records are events already."""
        return self.backend.record_decoder

    async def read_all(
        self,
        after_position: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
        *,
        blobs: bool = True,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield every event with a global position above `after_position`, in position order.

        `types` keeps only events of those types; `stream_prefix` only streams whose id starts with it. Blobs as
        in `read_stream`.
        """
        async for page in self.read_all_pages(after_position, types, stream_prefix, limit, blobs=blobs):
            for event in page:
                yield event

    async def read_all_pages(
        self,
        after_position: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
        *,
        blobs: bool = True,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """Like `read_all`, one list per round trip."""
        self._check_open()
        after = check_counter(after_position, "after_position")
        type_filter = check_event_types(types)
        prefix = check_prefix(stream_prefix)
        remaining = check_limit(limit)
        _check_bool(blobs, "blobs")
        observer = instrumentation.observer
        if observer is None:
            pages = self._all_pages(after, type_filter, prefix, remaining, blobs)
        else:
            attributes = {"after_position": after, "stream_prefix": prefix}
            pages = observer.read(
                self.scheme, "read_all", attributes, self._all_pages(after, type_filter, prefix, remaining, blobs)
            )
        async with contextlib.aclosing(pages):
            async for page in pages:
                yield page

    async def _all_pages(
        self,
        after: int,
        type_filter: tuple[str, ...] | None,
        prefix: str | None,
        remaining: int | None,
        blobs: bool,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of `read_all_pages`, arguments checked."""
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page, scanned_to = await self._read_all_page(after, size, type_filter, prefix, blobs)
            if page:
                yield page
                if remaining is not None:
                    remaining -= len(page)
            if scanned_to <= after:
                return
            after = scanned_to

    async def read_all_page(
        self,
        after_position: int,
        limit: int,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        *,
        blobs: bool = True,
    ) -> tuple[list[RecordedEvent], int]:
        """One page of `read_all`: at most `limit` matching events above `after_position`, and the position up to
        which they are every match, the position scanned (equal to `after_position` when nothing is there yet).
        Without an index for the filters a backend scans at most `limit` positions; SQLite and PostgreSQL read
        type and stream-category filters from an index, Redis the categories of agentfold's own streams
        (``$worker-``...), and may report up to their head (Redis: its index's position) when nothing more
        matches. Readers that filter resume after the position scanned, not after the last event they got, so a
        long run of non-matching events is passed over once. The positions are final: nothing later appears at or
        below the position scanned.

        Blobs as in `read_stream`; a page whose blobs add up to more than `blob_batch_bytes` ends early (at least
        one event), the position scanned being its last event's. A page that meets events trimmed
        before their blobs were loaded is read again."""
        self._check_open()
        size = check_limit(limit)
        if not size:
            raise InvalidInput(f"limit must be an int >= 1, got {limit!r}")
        after = check_counter(after_position, "after_position")
        type_filter = check_event_types(types)
        prefix = check_prefix(stream_prefix)
        _check_bool(blobs, "blobs")
        return await self._read_all_page(after, size, type_filter, prefix, blobs)

    async def _read_all_page(
        self, after: int, size: int, types: tuple[str, ...] | None, prefix: str | None, blobs: bool
    ) -> tuple[list[RecordedEvent], int]:
        """`read_all_page`, arguments checked."""
        attempt = 1
        while True:
            page, scanned_to = await self.backend.read_all_page(after, size, types, prefix)
            if not blobs or not _any_marked(page):
                return page, scanned_to
            runs = batches(page, self.blob_batch_bytes)
            if len(runs) > 1:  # cut after the first batch: the next page reads on from its last event
                page = runs[0]
                scanned_to = page[-1].position
            try:
                return await self._load(page), scanned_to
            except EventsTrimmed:
                if attempt >= TRIM_RACE_ATTEMPTS:
                    raise
                attempt += 1

    # -- blobs ---------------------------------------------------------------------------------------------------

    async def load_blobs(self, events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
        """`events` with their blobs loaded back into their fields (`agentfold.blobs`): for events read with
        `blobs=False` or through `read_stream_records`. Events without blobs come back as they are.
        Raises `EventsTrimmed` when an event was trimmed since it was read, with the blobs only it referred to."""
        self._check_open()
        if not isinstance(events, list | tuple) or not all(isinstance(event, RecordedEvent) for event in events):
            raise InvalidInput("load_blobs takes a list of RecordedEvent")
        return await self._load(list(events))

    async def blob_usage(self) -> BlobUsage:
        """How many blobs the store holds and their bytes, each content once (0, 0 without blobs)."""
        self._check_open()
        storage = self._blob_storage
        return BlobUsage(0, 0) if storage is None else await storage.blob_usage()

    async def _load(self, events: list[RecordedEvent]) -> list[RecordedEvent]:
        """`load_blobs`, with one `get_blobs` call for the whole list."""
        marked = [event for event in events if _marked(event)]
        if not marked:
            return events
        storage = self._blob_storage
        if storage is None:
            raise StoreCorrupted(f"the {self.scheme} backend keeps no blobs, yet a stored event refers to some")
        contents = await storage.get_blobs(digests_of(marked))
        loaded: list[RecordedEvent] = []
        for event in events:
            if _marked(event):
                whole = with_contents(event, contents)
                if whole is None:
                    raise await self._missing_blob(event)
                event = whole
            loaded.append(event)
        return loaded

    async def _missing_blob(self, event: RecordedEvent) -> AgentfoldError:
        """Why a blob of `event` is missing: the event was trimmed after it was read (`EventsTrimmed`: the backend
        removes an event and the blobs only it referred to in one step), or the store is damaged."""
        still = await self.backend.read_stream_backwards(event.stream_id, event.version + 1, event.version - 1, 1)
        if still:
            return StoreCorrupted(
                f"the stored event at version {event.version} of stream {event.stream_id!r} refers to a blob the "
                "store does not hold"
            )
        return EventsTrimmed(event.stream_id, event.version)

    # -- open runs -----------------------------------------------------------------------------------------------

    async def open_runs(self) -> tuple[int, list[OpenRun]] | None:
        """(a position, every unfinished workflow run as of a committed position at or after it) where the backend
        keeps them with each append (`agentfold.openruns`), else None: read the log instead. A reader that follows
        the log from the position returned, applying what it reads in order, misses nothing and ends exact."""
        self._check_open()
        storage = self._open_runs
        return None if storage is None else await storage.open_runs()

    async def rebuild_open_runs(self) -> int | None:
        """Fold the open runs from the log again, replacing what the backend kept (a repair: the rows are kept
        exact by every append of this agentfold); how many are open, or None where the backend keeps none."""
        self._check_open()
        storage = self._open_runs
        return None if storage is None else await storage.rebuild_open_runs()

    # -- runs index ----------------------------------------------------------------------------------------------

    @property
    def keeps_runs_index(self) -> bool:
        """True where the backend keeps the runs index with each append (`agentfold.runrows`): its rows are then
        always as current as the log, and nobody folds the log to read them."""
        return self._runs_index is not None

    async def rebuild_runs_index(self) -> int | None:
        """Fold the runs index from the log again, replacing what the backend kept (a repair); how many runs it
        holds, or None where the backend keeps none."""
        self._check_open()
        storage = self._runs_index
        return None if storage is None else await storage.rebuild_runs_index()

    async def apply_with_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any]) -> None:
        """Run `apply(handle)` and save the checkpoint `name` = `position`: in one transaction where the backend has
        them (the handle is then its connection, so a read model written through it commits with the checkpoint:
        exactly once), else `apply(None)` first and then the checkpoint (at least once)."""
        self._check_open()
        await self.backend.save_checkpoint(check_required_name(name), check_counter(position, "position"), apply)

    def check_open(self) -> None:
        """Raise `StoreClosed` once the store is closed."""
        self._check_open()

    async def load_checkpoint(self, name: str) -> int | None:
        """The position last saved under the subscriber `name`, or None."""
        self._check_open()
        return await self.backend.load_checkpoint(check_required_name(name))

    async def save_checkpoint(self, name: str, position: int) -> None:
        """Remember `position` for the subscriber `name`."""
        self._check_open()
        await self.backend.save_checkpoint(check_required_name(name), check_counter(position, "position"))

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version: the version of its last event, 0 when it has none."""
        self._check_open()
        return await self.backend.stream_version(check_stream_id(stream_id))

    async def head_position(self) -> int:
        """The global position of the last event in the store, 0 when it is empty."""
        self._check_open()
        return await self.backend.head_position()

    async def close(self) -> None:
        """Release connections and threads. Calling it twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self.backend.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_for_append(self, after_position: int, timeout: float, until: asyncio.Event | None = None) -> None:
        """Return when an event above `after_position` may exist, after `timeout` seconds, or as soon as `until`
        is set. A hint only: read again afterwards."""
        self._check_open()
        after = check_counter(after_position, "after_position")
        seconds = check_seconds(timeout, "timeout")
        if until is not None and not isinstance(until, asyncio.Event):
            raise InvalidInput(f"until must be an asyncio.Event, got {type(until).__name__}")
        await wait_unless(self.backend.wait_for_append(after, seconds), until)

    # Records kept beside the log (snapshots, checkpoints). They never change the event log itself.

    async def load_snapshot(self, stream_id: str, name: str) -> StreamSnapshot | None:
        """The newest snapshot kept under `name` for the stream, or None."""
        self._check_open()
        check_stream_id(stream_id)
        kept = await self.backend.load_snapshot(stream_id, check_required_name(name, "snapshot name"))
        return None if kept is None else StreamSnapshot(stream_id, name, kept[0], kept[1])

    async def keep_snapshot(self, snapshot: StreamSnapshot) -> None:
        """Keep `snapshot`, unless one covering a newer version is kept under its name already."""
        self._check_open()
        check_stream_id(snapshot.stream_id)
        name = check_required_name(snapshot.name, "snapshot name")
        version = check_counter(snapshot.version, "version")
        await self.backend.save_snapshot(snapshot.stream_id, name, version, _check_state(snapshot.state))

    async def load_log_snapshot(self, name: str) -> LogSnapshot | None:
        """The newest log snapshot kept under `name`, or None."""
        self._check_open()
        kept = await self.backend.load_snapshot(LOG_SNAPSHOT_STREAM, check_required_name(name, "snapshot name"))
        return None if kept is None else LogSnapshot(name, kept[0], kept[1])

    async def keep_log_snapshot(self, snapshot: LogSnapshot) -> None:
        """Keep `snapshot`, unless one covering a later position is kept under its name already."""
        self._check_open()
        name = check_required_name(snapshot.name, "snapshot name")
        position = check_counter(snapshot.position, "position")
        await self.backend.save_snapshot(LOG_SNAPSHOT_STREAM, name, position, _check_state(snapshot.state))

    # A log snapshot is kept as the side record of `LOG_SNAPSHOT_STREAM`, the number beside it being a position.

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the {self.scheme or 'event'} store is closed")


_version_of: Final = operator.attrgetter("version")


def _any_marked(events: list[RecordedEvent]) -> bool:
    """Whether any of the stored events refers to blobs: the check every page read pays (about 50 ns an event)."""
    return any(BLOBS_KEY in event.metadata for event in events)


def _marked(event: RecordedEvent) -> bool:
    """Whether the stored event refers to blobs (`agentfold.blobs.has_blobs`, here for the read paths)."""
    metadata = event.metadata
    return bool(metadata) and BLOBS_KEY in metadata


def _check_bool(value: object, what: str) -> None:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be a bool, got {type(value).__name__}")


__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Backend",
    "EventLog",
    "RecordDecoder",
    "check_counter",
    "check_limit",
    "check_prefix",
    "check_required_name",
]


def _check_state(state: object) -> bytes:
    if not isinstance(state, bytes):
        raise InvalidInput(f"a snapshot's state must be bytes, got {type(state).__name__}")
    return state
