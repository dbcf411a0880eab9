"""Every error agentfold raises on purpose.

Each error names what was wrong. Errors marked *retryable* leave the store in a state where repeating the same call
is safe: appends are idempotent by event id, so a retried append is applied at most once.
"""

from __future__ import annotations

from typing import Any


class AgentfoldError(Exception):
    """Base class of every agentfold error."""

    retryable: bool = False


class InvalidInput(AgentfoldError, ValueError):
    """An argument was refused before anything was written."""


class InvalidStreamId(InvalidInput):
    """A stream id is empty, too long, or holds non-printable characters."""


class InvalidEventType(InvalidInput):
    """An event type is empty, too long, or holds non-printable characters."""


class InvalidEventData(InvalidInput):
    """Event data or metadata is not a JSON object of finite numbers, strings, lists and objects.

    `path` points at the offending value, e.g. ``data.items[3].price``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class EventTooLarge(InvalidInput):
    """An encoded event is larger than the store's `max_event_size`."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        super().__init__(f"event {event_type!r} is {size} bytes encoded; the limit is {limit} bytes")
        self.event_type = event_type
        self.size = size
        self.limit = limit


class InvalidExpectedVersion(InvalidInput):
    """`expected_version` is neither ANY, NO_STREAM, STREAM_EXISTS nor a non-negative int."""


class InvalidURL(InvalidInput):
    """A store URL cannot be used: unknown scheme, bad option, or a missing part."""


class WrongExpectedVersion(AgentfoldError):
    """The stream's version is not the one the caller expected; nothing was written."""

    def __init__(self, stream_id: str, expected: Any, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {_describe_expected(expected)}, actual version {actual}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventId(AgentfoldError):
    """An event id was reused in a way that is not an exact retry of its original append; nothing was written."""

    def __init__(self, event_id: Any, stream_id: str, reason: str) -> None:
        super().__init__(f"event id {event_id} on stream {stream_id!r}: {reason}")
        self.event_id = event_id
        self.stream_id = stream_id
        self.reason = reason


class StoreUnavailable(AgentfoldError):
    """The backend could not be reached or dropped the connection. Retryable: appends are idempotent."""

    retryable = True


class StoreTimeout(AgentfoldError):
    """A lock, statement or pool wait ran out of time. Retryable: appends are idempotent."""

    retryable = True


class StoreCorrupted(AgentfoldError):
    """A stored record could not be decoded; the store holds data agentfold did not write."""


class StoreClosed(AgentfoldError):
    """The store was used after `close()`."""


class StoreFull(AgentfoldError):
    """The backend refused a write for lack of space; nothing of the failed append was written."""


class StoreReadOnly(AgentfoldError):
    """The backend refused a write because it is read-only; nothing was written."""


def _describe_expected(expected: Any) -> str:
    return expected.name if hasattr(expected, "name") else repr(expected)
