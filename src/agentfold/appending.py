"""The rules every backend applies to an append, written once: expected versions and exact retries.

Backends differ in how they look things up (a dict, an SQL query, a Lua script), not in what they decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from agentfold.encoding import EncodedEvent
from agentfold.errors import DuplicateEventId, WrongExpectedVersion
from agentfold.events import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion


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


def find_retry(
    stream_id: str, events: Sequence[EncodedEvent], records: Sequence[IdRecord | None]
) -> AppendResult | None:
    """The original append's result when `events` repeat it exactly; None when no id is known; else raise.

    `records[i]` is what the store knows of `events[i].id`. An exact retry has every id known, on this stream, as one
    whole earlier append in the same order; any other reuse of an id raises `DuplicateEventId`.
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
    return AppendResult(first.batch_last, first.position + (first.batch_last - first.version))
