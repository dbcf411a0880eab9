"""`memory://`: a complete backend in process memory, for tests and for trying things out.

It is a real implementation that passes the same conformance suite as the durable backends; it only forgets
everything when the process ends. It uses only the public `agentfold.backend.Backend` protocol and the public
helpers beside it, so it is also the example to read first when writing a backend (`docs/backends.md`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Final, cast

from agentfold.appending import IdRecord, check_expected, find_retry
from agentfold.backend import DEFAULT_PAGE_SIZE, RecordDecoder, apply_then
from agentfold.blobs import DEFAULT_BLOB_THRESHOLD, DEFAULT_MAX_BLOB_SIZE, BlobUsage
from agentfold.encoding import DEFAULT_MAX_EVENT_SIZE, EncodedEvent, decode_object
from agentfold.errors import InvalidURL
from agentfold.events import AppendResult, ExpectedVersion, RecordedEvent
from agentfold.openruns import OpenRun, apply, changes, fold
from agentfold.options import BLOB_OPTIONS, MAX_EVENT_SIZE, parse_options, redact, split_url
from agentfold.store import EventStore
from agentfold.wakeup import Broadcast


class MemoryBackend:
    """Events in lists and dicts; every append runs without yielding to the event loop, so it is atomic."""

    scheme = "memory"
    reads_ahead = False  # nothing to wait for: a page is a slice of a list
    record_decoder: RecordDecoder | None = None  # the records are the events themselves

    def __init__(
        self,
        max_event_size: int | None = None,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
    ) -> None:
        self.max_event_size = DEFAULT_MAX_EVENT_SIZE if max_event_size is None else max_event_size
        self.blob_threshold = blob_threshold
        self.max_blob_size = max_blob_size
        self.page_size = DEFAULT_PAGE_SIZE
        self._log: list[RecordedEvent | None] = []  # None where an event was trimmed
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: dict[str, IdRecord] = {}
        self._appended = Broadcast()
        self._snapshots: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._checkpoints: dict[str, int] = {}
        self._trimmed: dict[str, int] = {}
        self._blobs: dict[str, bytes] = {}
        self._blob_links: dict[str, int] = {}  # digest -> how many events link to it
        self._event_blobs: dict[int, tuple[str, ...]] = {}  # position -> the digests its event links to
        self._runs: dict[str, OpenRun] = {}  # the open runs (agentfold.openruns), kept by `append`
        self._closed = False

    async def append(
        self, stream_id: str, events: list[EncodedEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        stream = self._streams.get(stream_id)
        current = self._version(stream_id)
        retry = find_retry(stream_id, events, [self._ids.get(event.id) for event in events])
        if retry is not None:
            return retry
        check_expected(stream_id, expected_version, current)
        opened = changes(stream_id, ((event.type, event.data) for event in events))
        if stream is None:
            stream = self._streams[stream_id] = []
        now = time.time_ns() // 1000
        first = current + 1
        last = current + len(events)
        for offset, event in enumerate(events):
            recorded = RecordedEvent(
                stream_id,
                first + offset,
                len(self._log) + 1,
                event.type,
                decode_object(event.data),
                decode_object(event.metadata),
                event.id,
                now,
            )
            self._log.append(recorded)
            stream.append(recorded)
            self._ids[event.id] = IdRecord(stream_id, first + offset, first, last, len(self._log))
            if event.blobs:
                for blob in event.blobs:
                    self._blobs.setdefault(blob.digest, blob.content)
                    self._blob_links[blob.digest] = self._blob_links.get(blob.digest, 0) + 1
                self._event_blobs[len(self._log)] = tuple(blob.digest for blob in event.blobs)
        apply(self._runs, opened)
        self._appended.wake()
        return AppendResult(last, len(self._log))

    async def open_runs(self) -> tuple[int, list[OpenRun]]:
        return len(self._log), list(self._runs.values())

    async def rebuild_open_runs(self) -> int:
        self._runs = fold((e.stream_id, e.type, e.data) for e in self._log if e is not None)
        return len(self._runs)

    async def read_stream_records(
        self, stream_id: str, after_version: int, limit: int | None
    ) -> AsyncGenerator[Sequence[RecordedEvent], None]:
        remaining = limit
        while remaining is None or remaining > 0:
            stream = self._streams.get(stream_id)
            if not stream:
                return
            size = self.page_size if remaining is None else min(self.page_size, remaining)
            start = max(0, after_version - self._trimmed.get(stream_id, 0))
            page = stream[start : start + size]
            if not page:
                return
            yield page
            if len(page) < size:
                return
            after_version = page[-1].version
            if remaining is not None:
                remaining -= len(page)

    async def read_stream_backwards(
        self, stream_id: str, before_version: int, after_version: int, limit: int
    ) -> list[RecordedEvent]:
        stream = self._streams.get(stream_id)
        if not stream:
            return []
        trimmed = self._trimmed.get(stream_id, 0)
        stop = max(0, min(len(stream), before_version - 1 - trimmed))  # index past the newest event to return
        start = max(0, after_version - trimmed, stop - limit)
        return stream[start:stop][::-1]

    async def read_all_page(
        self,
        after_position: int,
        limit: int,
        types: tuple[str, ...] | None,
        stream_prefix: str | None,
    ) -> tuple[list[RecordedEvent], int]:
        scanned = self._log[after_position : after_position + limit]
        if not scanned:
            return [], after_position
        matching = [
            event
            for event in scanned
            if event is not None
            and (types is None or event.type in types)
            and (stream_prefix is None or event.stream_id.startswith(stream_prefix))
        ]
        return matching, after_position + len(scanned)

    async def stream_version(self, stream_id: str) -> int:
        return self._version(stream_id)

    def _version(self, stream_id: str) -> int:
        stream = self._streams.get(stream_id)
        return self._trimmed.get(stream_id, 0) + len(stream) if stream is not None else 0

    async def head_position(self) -> int:
        return len(self._log)

    async def wait_for_append(self, after_position: int, timeout: float) -> None:
        if len(self._log) <= after_position:
            await Broadcast.wait(self._appended.ticket(), timeout)

    async def load_snapshot(self, owner: str, name: str) -> tuple[int, bytes] | None:
        return self._snapshots.get((owner, name))

    async def save_snapshot(self, owner: str, name: str, mark: int, state: bytes) -> None:
        kept = self._snapshots.get((owner, name))
        if kept is None or kept[0] <= mark:
            self._snapshots[(owner, name)] = (mark, state)

    async def trim_stream(self, stream_id: str, before_version: int) -> int:
        stream = self._streams.get(stream_id)
        if not stream:
            return 0
        trimmed = self._trimmed.get(stream_id, 0)
        count = max(0, min(before_version - 1 - trimmed, len(stream)))
        for event in stream[:count]:
            self._log[event.position - 1] = None
            for digest in self._event_blobs.pop(event.position, ()):
                self._blob_links[digest] -= 1
                if not self._blob_links[digest]:  # the last event linking to it went
                    del self._blob_links[digest], self._blobs[digest]
        del stream[:count]
        self._trimmed[stream_id] = trimmed + count
        return count

    async def get_blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        return {digest: self._blobs[digest] for digest in digests if digest in self._blobs}

    async def blob_usage(self) -> BlobUsage:
        return BlobUsage(len(self._blobs), sum(map(len, self._blobs.values())))

    async def load_checkpoint(self, name: str) -> int | None:
        return self._checkpoints.get(name)

    async def save_checkpoint(self, name: str, position: int, apply: Callable[[Any], Any] | None = None) -> None:
        await apply_then(apply)  # no transactions here: the read model first, then its checkpoint (at least once)
        self._checkpoints[name] = position

    async def close(self) -> None:
        self._closed = True
        self._appended.wake()


class MemoryStore(EventStore):
    """An `EventStore` over a `MemoryBackend` (what ``connect("memory://")`` returns)."""

    backend: MemoryBackend

    def __init__(
        self,
        max_event_size: int | None = None,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
    ) -> None:
        super().__init__(MemoryBackend(max_event_size, blob_threshold, max_blob_size))


OPTIONS: Final = (MAX_EVENT_SIZE, *BLOB_OPTIONS)
"""What `memory://` accepts, in its query or as keywords: `max_event_size`, `blob_threshold` and `max_blob_size`
in bytes."""


async def open_store(url: str, *, create: bool = True, **options: Any) -> MemoryStore:
    """Open a fresh, empty memory store (each call is independent; `create` changes nothing). Bad options raise
    `InvalidURL`."""
    parts = split_url(url, ("memory",))
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise InvalidURL(f"{redact(url)!r}: a memory:// URL takes options only (memory://?max_event_size=...)")
    values = parse_options(url, OPTIONS, options)
    return MemoryStore(
        cast(int, values["max_event_size"]), cast(int, values["blob_threshold"]), cast(int, values["max_blob_size"])
    )
