"""The rules every backend applies to an append, written once: expected versions and exact retries.

Backends differ in how they look things up (a dict, an SQL query, a Lua script), not in what they decide.
A retry is exact or refused: `find_retry` decides by ids, order and stream (in the backend's own step), and returns
a `RetriedAppend`; the store then reads the original events back and `check_retry_content` compares their types,
data and metadata with the retry's (all but the metadata's trace context, `TRACE_KEYS`, which says where the
retry was made from). Only a retry pays for that read; an ordinary append pays nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, NamedTuple

from agentfold.encoding import EncodedEvent, decode_object, encode_json
from agentfold.errors import DuplicateEventId, WrongExpectedVersion
from agentfold.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    TRACE_KEYS,
    AppendResult,
    ExpectedVersion,
    RecordedEvent,
)


class Outcome(enum.IntEnum):
    """How one append of a group was decided: the wire codes the PostgreSQL function and the Redis script answer
    with, both rendered from this one table (`render_outcome_codes`)."""

    WRITTEN = 0
    """Written: the reply carries the stream's new version and the global position of its last event."""
    WRONG_EXPECTED_VERSION = 1
    """Nothing written, the stream is not at the expected version: the reply carries its actual version."""
    IDS_KNOWN = 2
    """Nothing written, some of its event ids are known: whether it is an exact retry is decided from their records."""


def render_outcome_codes(source: str) -> str:
    """`source` (SQL or Lua) with each ``{outcome.NAME}`` replaced by that outcome's wire code."""
    for outcome in Outcome:
        source = source.replace(f"{{outcome.{outcome.name}}}", str(outcome.value))
    return source


def check_expected(stream_id: str, expected: ExpectedVersion, current: int) -> None:
    """Raise `WrongExpectedVersion` unless a stream at version `current` satisfies `expected`."""
    if expected is ANY:
        return
    if expected is NO_STREAM:
        ok = current == 0
    elif expected is STREAM_EXISTS:
        ok = current > 0
    else:
        ok = current == expected
    if not ok:
        raise WrongExpectedVersion(stream_id, expected, current)


class IdRecord(NamedTuple):
    """Where an event id was written, and the batch it was written in: what an exact retry must match."""

    stream_id: str
    version: int
    batch_first: int
    """The version of the first event of the append that wrote this id."""
    batch_last: int
    """The version of the last event of that append."""
    position: int


class Watched(NamedTuple):
    """A condition an append may carry (`EventLog.append_watching`): the stream `stream_id` must be at `version`
    when the append is written, checked in the append's own transaction."""

    stream_id: str
    version: int


class WatchedStreamMoved(Exception):
    """The stream an append watched was no longer at the version it named: nothing was written. Not an
    `AgentfoldError`: the caller that set the condition handles it and never shows it to anyone."""

    def __init__(self, watched: Watched, actual: int) -> None:
        super().__init__(f"stream {watched.stream_id!r} moved from version {watched.version} to {actual}")
        self.watched = watched
        self.actual = actual


def check_watched(watched: Watched | None, current: int) -> None:
    """Raise `WatchedStreamMoved` unless the watched stream, at version `current`, is still where `watched` says."""
    if watched is not None and current != watched.version:
        raise WatchedStreamMoved(watched, current)


class RetriedAppend(AppendResult, frozen=True):
    """What a backend's `_append` returns for a retry: the original append's result, and the version of its first
    event, so the store can compare the retry's content with what was written (`check_retry_content`)."""

    first_version: int


def find_retry(
    stream_id: str, events: Sequence[EncodedEvent], records: Sequence[IdRecord | None]
) -> RetriedAppend | None:
    """The original append's result when `events` repeat its ids; None when no id is known; else raise.

    `records[i]` is what the store knows of `events[i].id`. A retry has every id known, on this stream, as one
    whole earlier append in the same order; any other reuse of an id raises `DuplicateEventId`. Whether the content
    is the same too is decided afterwards, by `check_retry_content`.
    """
    if all(record is None for record in records):
        return None
    for event, record in zip(events, records, strict=True):
        if record is None:
            known = next(e.id for e, r in zip(events, records, strict=True) if r is not None)
            raise DuplicateEventId(
                known,
                stream_id,
                "only part of this batch was appended before; a retry must repeat the whole original batch",
            )
        if record.stream_id != stream_id:
            raise DuplicateEventId(event.id, stream_id, f"already appended to stream {record.stream_id!r}")
    first = records[0]
    assert first is not None
    if (
        first.batch_first != first.version
        or first.batch_last != first.version + len(events) - 1
        or [record.version for record in records if record] != list(range(first.version, first.batch_last + 1))
    ):
        raise DuplicateEventId(
            events[0].id, stream_id, "already appended in a different batch or order; not an exact retry"
        )
    # The events of one append have consecutive versions and consecutive positions, on every backend.
    return RetriedAppend(first.batch_last, first.position + (first.batch_last - first.version), first.version)


def check_retry_content(
    stream_id: str, events: Sequence[EncodedEvent], first_version: int, stored: Sequence[RecordedEvent]
) -> None:
    """Raise `DuplicateEventId` unless `stored`, the events of the stream from `first_version` on, are the ones a
    retry's ids were first written with, carrying the same ids, types, data and metadata as `events`, in order.
    The metadata's trace context (`TRACE_KEYS`) is not compared: it says where an append was made from.

    Stored JSON is compared in its canonical encoding, so `1` and `1.0`, or `{"a": 1, "b": 2}` and
    `{"b": 2, "a": 1}`, are different content.
    """
    if [event.version for event in stored] != list(range(first_version, first_version + len(events))):
        raise DuplicateEventId(
            events[0].id,
            stream_id,
            "already appended, and the original events were trimmed since: the retry cannot be checked against "
            "them, so it is refused",
        )
    for event, original in zip(events, stored, strict=True):
        if str(original.id) != event.id:
            raise DuplicateEventId(event.id, stream_id, "already appended, in a different order")
        if original.type != event.type:
            raise DuplicateEventId(
                event.id, stream_id, f"already appended with type {original.type!r}, not {event.type!r}"
            )
        if encode_json(original.data) != event.data:
            raise DuplicateEventId(event.id, stream_id, "already appended with other data; not an exact retry")
        if encode_json(original.metadata) != event.metadata and not _same_but_trace(original.metadata, event.metadata):
            raise DuplicateEventId(event.id, stream_id, "already appended with other metadata; not an exact retry")


def _same_but_trace(stored: dict[str, Any], retried: bytes) -> bool:
    """Whether two events' metadata differ only in their trace context (`TRACE_KEYS`): a retry made from another
    span (a resumed run repeating a hand-off, a request retried by another process) is still the same append."""
    again = decode_object(retried)
    if not (TRACE_KEYS & stored.keys() or TRACE_KEYS & again.keys()):
        return False
    kept = {key: value for key, value in stored.items() if key not in TRACE_KEYS}
    return encode_json(kept) == encode_json({key: value for key, value in again.items() if key not in TRACE_KEYS})
