"""The event log: the interface every backend implements, and everything the features built on it may use.

The public methods here validate input and page through results; a backend supplies a few narrow hooks that do the
I/O (`_append`, `_read_stream_page`, `_read_stream_page_backwards`, `_read_all_page`, `_stream_version`,
`head_position`, `_wait_for_append`, `_close`; a backend that reads ahead also splits a page read into
`_fetch_stream_page` and `_decode_stream_page`, or pages a stream its own way in `_raw_stream_pages` and
`_stream_pages`).
The core never imports a backend.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final, Protocol, Self

import msgspec

from agentfold import instrumentation
from agentfold.appending import RetriedAppend, check_retry_content
from agentfold.encoding import DEFAULT_MAX_EVENT_SIZE, EncodedEvent, encode_events
from agentfold.errors import InvalidInput, StoreClosed
from agentfold.events import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent
from agentfold.validation import (
    MAX_VERSION,
    check_counter,
    check_event_types,
    check_expected_version,
    check_limit,
    check_required_name,
    check_seconds,
    check_stream_id,
)
from agentfold.validation import check_stream_prefix as check_prefix
from agentfold.wakeup import retrieve_outcome, wait_unless

DEFAULT_PAGE_SIZE: Final = 1000


class RecordDecoder(Protocol):
    """Decodes one stored record into the event readers get (a `msgspec.json.Decoder(RecordedEvent)` is one);
    raises `msgspec.DecodeError` for a record it cannot read."""

    def decode(self, record: bytes | str, /) -> RecordedEvent: ...


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


LOG_SNAPSHOT_STREAM: Final = "$log"
"""The stream id under which a backend keeps log snapshots beside the stream snapshots: no stream of events has
this id (`$` streams are agentfold's own), so the two kinds never meet."""


class EventLog(abc.ABC):
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
    """

    scheme: str = ""
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    page_size: int = DEFAULT_PAGE_SIZE
    reads_ahead: bool = False
    """`read_stream_pages` asks for the next page before it decodes the current one: for backends whose pages are
    prepared by a server or another thread, which then works while this one decodes."""

    def __init__(self) -> None:
        self._closed = False

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
        `InvalidInput` subclass for bad arguments, before any I/O.
        """
        observer = instrumentation.observer
        if observer is not None:
            write = partial(self._append_observed, stream_id, expected_version)
            return await observer.append(self.scheme, stream_id, events, expected_version, write)
        # The same steps as `_append_observed`, written out here so an append with no observer makes no extra call.
        self._check_open()
        check_stream_id(stream_id)
        expected = check_expected_version(expected_version)
        encoded = encode_events(events, self.max_event_size)
        result = await self._append(stream_id, encoded, expected)
        if type(result) is RetriedAppend:  # the ids were written before: exact retry, or DuplicateEventId
            return await self._check_retry(stream_id, encoded, result)
        return result

    async def _append_observed(
        self, stream_id: str, expected_version: ExpectedVersion, events: Sequence[NewEvent]
    ) -> AppendResult:
        """`append` itself, called by the observer with the events it annotated."""
        self._check_open()
        check_stream_id(stream_id)
        expected = check_expected_version(expected_version)
        encoded = encode_events(events, self.max_event_size)
        result = await self._append(stream_id, encoded, expected)
        if type(result) is RetriedAppend:  # the ids were written before: exact retry, or DuplicateEventId
            return await self._check_retry(stream_id, encoded, result)
        return result

    async def _check_retry(self, stream_id: str, events: list[EncodedEvent], retried: RetriedAppend) -> AppendResult:
        stored = [
            event
            async for event in self.read_stream(stream_id, after_version=retried.first_version - 1, limit=len(events))
        ]
        check_retry_content(stream_id, events, retried.first_version, stored)
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
        for value, name in ((keep, "keep"), (trim_every, "trim_every")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be an int >= 1, got {value!r}")
        floor = None if keep_from is None else check_counter(keep_from, "keep_from")
        result = await self.append(stream_id, events, expected_version)
        if result.version // trim_every > (result.version - len(events)) // trim_every:
            before = result.version - keep + 1
            if floor is not None:
                before = min(before, floor)
            if before > 1:
                await self._trim_stream(stream_id, before)
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
        return await self._trim_stream(stream_id, before) if before > 1 else 0

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        limit: int | None = None,
        *,
        backwards: bool = False,
        before_version: int | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield the events of one stream with a version above `after_version`, in version order.

        With `backwards=True` the newest come first, in descending version order, and `limit` counts from the
        stream's end (or from `before_version`, exclusive): reading the last N events costs O(N), whatever the
        stream's length."""
        pages = self.read_stream_pages(
            stream_id, after_version, limit, backwards=backwards, before_version=before_version
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
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """Like `read_stream`, one list per round trip: the fast path for folds. Bad arguments raise here, at the
        call."""
        self._check_open()
        check_stream_id(stream_id)
        after = check_counter(after_version, "after_version")
        remaining = check_limit(limit)
        if not isinstance(backwards, bool):
            raise InvalidInput(f"backwards must be a bool, got {type(backwards).__name__}")
        if before_version is not None and not backwards:
            raise InvalidInput("before_version bounds a backward read: pass backwards=True")
        if backwards:
            before = MAX_VERSION + 1 if before_version is None else check_counter(before_version, "before_version")
            pages = self._backward_stream_pages(stream_id, after, remaining, before)
        else:
            pages = self._stream_pages(stream_id, after, remaining)
        observer = instrumentation.observer
        if observer is None:
            return pages
        attributes = {"stream_id": stream_id, "after_version": after, "backwards": backwards}
        return observer.read(self.scheme, "read_stream", attributes, pages)

    async def _backward_stream_pages(
        self, stream_id: str, after_version: int, remaining: int | None, before: int
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of `read_stream_pages(backwards=True)`, arguments checked: newest first."""
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page = await self._read_stream_page_backwards(stream_id, before, after_version, size)
            if not page:
                return
            if remaining is not None:
                remaining -= len(page)
            yield page
            if len(page) < size:
                return
            before = page[-1].version

    async def _stream_pages(
        self, stream_id: str, after_version: int, remaining: int | None
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of `read_stream_pages`, arguments checked. A backend may read its own way here."""
        async with contextlib.aclosing(self._raw_stream_pages(stream_id, after_version, remaining)) as pages:
            async for raw in pages:
                yield self._decode_stream_page(raw)

    async def _raw_stream_pages(
        self, stream_id: str, after_version: int, remaining: int | None
    ) -> AsyncGenerator[Any, None]:
        """The pages of `_stream_pages` as `_fetch_stream_page` returned them, not yet decoded. A backend may
        replace this with its own paging; pages still follow one another in version order."""
        after = after_version
        ahead: asyncio.Future[tuple[Any, int, int]] | None = None
        try:
            while remaining is None or remaining > 0:
                size = self.page_size if remaining is None else min(self.page_size, remaining)
                if ahead is not None:
                    fetched, ahead = await ahead, None
                else:
                    fetched = await self._fetch_stream_page(stream_id, after, size)
                raw, count, last_version = fetched
                if not count:
                    return
                if remaining is not None:
                    remaining -= count
                full = count == size
                if full and self.reads_ahead and (remaining is None or remaining > 0):
                    # Ask for the next page before decoding this one, so the server prepares it meanwhile. It is
                    # this read's own request, made after the read began: it returns what a read made at that
                    # moment returns, and it is dropped with this read.
                    next_size = self.page_size if remaining is None else min(self.page_size, remaining)
                    ahead = asyncio.ensure_future(self._fetch_stream_page(stream_id, last_version, next_size))
                    await asyncio.sleep(0)  # let it send its request before this page is decoded
                yield raw
                if not full:
                    return
                after = last_version
        finally:
            if ahead is not None:
                ahead.cancel()
                ahead.add_done_callback(retrieve_outcome)  # a page nobody will take

    def read_stream_records(
        self, stream_id: str, after_version: int = 0, limit: int | None = None
    ) -> AsyncGenerator[Sequence[Any], None]:
        """The pages of `read_stream_pages`, their events not yet decoded: lists of stored records, each turned into
        its event by `record_decoder` (the records are the events themselves when it is None). The records of one
        page may come in any order; pages follow one another in version order. For readers that keep little of
        each event (folds): decoding one record at a time frees each event as soon as it is handled, where a page of
        decoded events would stay alive, and be scanned by the garbage collector, until the page is done. Bad
        arguments raise here, at the call."""
        self._check_open()
        check_stream_id(stream_id)
        return self._raw_stream_pages(stream_id, check_counter(after_version, "after_version"), check_limit(limit))

    @property
    def record_decoder(self) -> RecordDecoder | None:
        """Decodes one record of `read_stream_records` into its event; None when the records are events already."""
        return self._record_decoder

    async def read_all(
        self,
        after_position: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield every event with a global position above `after_position`, in position order.

        `types` keeps only events of those types; `stream_prefix` only streams whose id starts with it.
        """
        async for page in self.read_all_pages(after_position, types, stream_prefix, limit):
            for event in page:
                yield event

    async def read_all_pages(
        self,
        after_position: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """Like `read_all`, one list per round trip."""
        self._check_open()
        after = check_counter(after_position, "after_position")
        type_filter = check_event_types(types)
        prefix = check_prefix(stream_prefix)
        remaining = check_limit(limit)
        observer = instrumentation.observer
        if observer is None:
            pages = self._all_pages(after, type_filter, prefix, remaining)
        else:
            attributes = {"after_position": after, "stream_prefix": prefix}
            pages = observer.read(
                self.scheme, "read_all", attributes, self._all_pages(after, type_filter, prefix, remaining)
            )
        async with contextlib.aclosing(pages):
            async for page in pages:
                yield page

    async def _all_pages(
        self, after: int, type_filter: tuple[str, ...] | None, prefix: str | None, remaining: int | None
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """The pages of `read_all_pages`, arguments checked."""
        while remaining is None or remaining > 0:
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            page, scanned_to = await self._read_all_page(after, size, type_filter, prefix)
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
    ) -> tuple[list[RecordedEvent], int]:
        """One page of `read_all`: the matching events among at most `limit` positions above `after_position`, and
        the last position scanned (equal to `after_position` when nothing is there yet). Readers that filter resume
        after the position scanned, not after the last event they got, so a long run of non-matching events is
        passed over once. The positions are final: nothing later appears at or below the position scanned."""
        self._check_open()
        size = check_limit(limit)
        if not size:
            raise InvalidInput(f"limit must be an int >= 1, got {limit!r}")
        return await self._read_all_page(
            check_counter(after_position, "after_position"), size, check_event_types(types), check_prefix(stream_prefix)
        )

    async def apply_with_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any]) -> None:
        """Run `apply(handle)` and save the checkpoint `name` = `position`: in one transaction where the backend has
        them (the handle is then its connection, so a read model written through it commits with the checkpoint:
        exactly once), else `apply(None)` first and then the checkpoint (at least once)."""
        self._check_open()
        await self._apply_with_checkpoint(check_required_name(name), check_counter(position, "position"), apply)

    def check_open(self) -> None:
        """Raise `StoreClosed` once the store is closed."""
        self._check_open()

    async def load_checkpoint(self, name: str) -> int | None:
        """The position last saved under the subscriber `name`, or None."""
        self._check_open()
        return await self._load_checkpoint(check_required_name(name))

    async def save_checkpoint(self, name: str, position: int) -> None:
        """Remember `position` for the subscriber `name`."""
        self._check_open()
        await self._save_checkpoint(check_required_name(name), check_counter(position, "position"))

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version: the version of its last event, 0 when it has none."""
        self._check_open()
        return await self._stream_version(check_stream_id(stream_id))

    @abc.abstractmethod
    async def head_position(self) -> int:
        """The global position of the last event in the store, 0 when it is empty."""

    async def close(self) -> None:
        """Release connections and threads. Calling it twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- backend hooks -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _append(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        """Write validated events atomically, enforcing expected version and id idempotency in the same step."""

    @abc.abstractmethod
    async def _stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event, 0 when it has none; `stream_id` is checked."""

    @abc.abstractmethod
    async def _read_stream_page(self, stream_id: str, after_version: int, limit: int) -> list[RecordedEvent]:
        """At most `limit` events of the stream above `after_version`, in version order."""

    @abc.abstractmethod
    async def _read_stream_page_backwards(
        self, stream_id: str, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        """At most `limit` events of the stream with a version below `before_version` and above `after_version`,
        newest first."""

    async def _fetch_stream_page(self, stream_id: str, after_version: int, limit: int) -> tuple[Any, int, int]:
        """A page of `_read_stream_page` as (the page in the backend's own form, its event count, its last version),
        for `_decode_stream_page` to turn into events; a backend that reads ahead splits its read here so the next
        request can go out before this page is decoded. The default reads and decodes at once."""
        page = await self._read_stream_page(stream_id, after_version, limit)
        return page, len(page), page[-1].version if page else after_version

    def _decode_stream_page(self, raw: Any) -> list[RecordedEvent]:
        """The events of a page `_fetch_stream_page` returned."""
        page: list[RecordedEvent] = raw
        return page

    _record_decoder: RecordDecoder | None = None
    """Set by a backend whose raw pages (`_raw_stream_pages`) are lists of stored records, each decoded by this;
    the records of a page may come in any order. A fold then decodes each event just before its handler runs, so
    an event the handler does not keep is freed at once instead of living as long as its page (whole pages of
    decoded events alive were what made the garbage collector run its full collections during folds)."""

    @abc.abstractmethod
    async def _read_all_page(
        self,
        after_position: int,
        limit: int,
        types: tuple[str, ...] | None,
        stream_prefix: str | None,
    ) -> tuple[list[RecordedEvent], int]:
        """Scan at most `limit` positions above `after_position`; return the matching events and the last position
        scanned (equal to `after_position` when nothing is there). Positions returned must be final: nothing may
        later appear at or below the scanned position."""

    async def wait_for_append(self, after_position: int, timeout: float, until: asyncio.Event | None = None) -> None:
        """Return when an event above `after_position` may exist, after `timeout` seconds, or as soon as `until`
        is set. A hint only: read again afterwards."""
        self._check_open()
        after = check_counter(after_position, "after_position")
        seconds = check_seconds(timeout, "timeout")
        if until is not None and not isinstance(until, asyncio.Event):
            raise InvalidInput(f"until must be an asyncio.Event, got {type(until).__name__}")
        await wait_unless(self._wait_for_append(after, seconds), until)

    async def _wait_for_append(self, after_position: int, timeout: float) -> None:
        """Return when an event above `after_position` may exist, or after `timeout` seconds.

        A hint only: callers re-read. The default polls; backends with push override it.
        """
        await asyncio.sleep(min(timeout, 0.05))

    # Records kept beside the log (snapshots, checkpoints). They never change the event log itself.

    async def load_snapshot(self, stream_id: str, name: str) -> StreamSnapshot | None:
        """The newest snapshot kept under `name` for the stream, or None."""
        self._check_open()
        check_stream_id(stream_id)
        kept = await self._load_snapshot(stream_id, check_required_name(name, "snapshot name"))
        return None if kept is None else StreamSnapshot(stream_id, name, kept[0], kept[1])

    async def keep_snapshot(self, snapshot: StreamSnapshot) -> None:
        """Keep `snapshot`, unless one covering a newer version is kept under its name already."""
        self._check_open()
        check_stream_id(snapshot.stream_id)
        name = check_required_name(snapshot.name, "snapshot name")
        version = check_counter(snapshot.version, "version")
        await self._save_snapshot(snapshot.stream_id, name, version, _check_state(snapshot.state))

    async def load_log_snapshot(self, name: str) -> LogSnapshot | None:
        """The newest log snapshot kept under `name`, or None."""
        self._check_open()
        kept = await self._load_snapshot(LOG_SNAPSHOT_STREAM, check_required_name(name, "snapshot name"))
        return None if kept is None else LogSnapshot(name, kept[0], kept[1])

    async def keep_log_snapshot(self, snapshot: LogSnapshot) -> None:
        """Keep `snapshot`, unless one covering a later position is kept under its name already."""
        self._check_open()
        name = check_required_name(snapshot.name, "snapshot name")
        position = check_counter(snapshot.position, "position")
        await self._save_snapshot(LOG_SNAPSHOT_STREAM, name, position, _check_state(snapshot.state))

    # The hooks behind them, one pair per kind of record; a log snapshot is kept as the snapshot of
    # `LOG_SNAPSHOT_STREAM`, the number beside it being a position.

    @abc.abstractmethod
    async def _load_snapshot(self, stream_id: str, name: str) -> tuple[int, bytes] | None:
        """The latest snapshot saved under `name` for the stream: (version it covers, encoded state), or None."""

    @abc.abstractmethod
    async def _save_snapshot(self, stream_id: str, name: str, version: int, state: bytes) -> None:
        """Keep `state` as the snapshot `name` of the stream at `version`, unless a newer one is already kept."""

    @abc.abstractmethod
    async def _trim_stream(self, stream_id: str, before_version: int) -> int:
        """Delete the stream's events with a version below `before_version` and return how many went.

        The stream's version, the other streams and every position stay as they were.
        """

    @abc.abstractmethod
    async def _load_checkpoint(self, name: str) -> int | None:
        """The position last saved under the subscriber `name`, or None."""

    @abc.abstractmethod
    async def _save_checkpoint(self, name: str, position: int) -> None:
        """Remember `position` for the subscriber `name`."""

    async def _apply_with_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any]) -> None:
        """Run `apply(handle)` for a read model and save the checkpoint `name` = `position`.

        Backends with transactions override this to do both in one transaction (exactly once); this default runs
        `apply(None)` first and then saves the checkpoint (at least once).
        """
        outcome = apply(None)
        if inspect.isawaitable(outcome):
            await outcome
        await self._save_checkpoint(name, position)

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release the backend's resources."""

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the {self.scheme or 'event'} store is closed")


__all__ = [
    "DEFAULT_PAGE_SIZE",
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
