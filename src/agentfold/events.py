"""The event types every store speaks: what callers append and what readers get back."""

from __future__ import annotations

import enum
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from agentfold.errors import InvalidInput, StoreCorrupted

# Metadata keys with a meaning of their own. Any other key is the caller's.
AGENT_ID: Final = "agent_id"
WORKFLOW_ID: Final = "workflow_id"
CORRELATION_ID: Final = "correlation_id"
CAUSATION_ID: Final = "causation_id"
TRACEPARENT: Final = "traceparent"
"""The W3C trace context of the append that wrote the event, when an observer records it (`agentfold.otel`)."""
TRACESTATE: Final = "tracestate"
TRACE_KEYS: Final = frozenset({TRACEPARENT, TRACESTATE})
"""Metadata keys that say where an append was made from, not what it wrote: an exact retry may differ in them."""


class StreamState(enum.Enum):
    """Symbolic expected versions for `append`."""

    ANY = "any"
    """Append whatever the stream's version is."""
    NO_STREAM = "no_stream"
    """Append only if the stream has no events (the same as expected version 0)."""
    STREAM_EXISTS = "stream_exists"
    """Append only if the stream has at least one event."""


ANY: Final = StreamState.ANY
NO_STREAM: Final = StreamState.NO_STREAM
STREAM_EXISTS: Final = StreamState.STREAM_EXISTS

ExpectedVersion = StreamState | int
"""`ANY`, `NO_STREAM`, `STREAM_EXISTS`, or the stream's exact current version (0: no stream)."""


_UUID7_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))
_UUID7_SET: Final = (0x7 << 76) | (0x2 << 62)  # version 7, RFC 4122 variant


def new_event_id() -> uuid.UUID:
    """A time-ordered UUID (version 7, RFC 9562): unique like uuid4, but ids made later sort later, which keeps
    the stores' event-id indexes appending at their right edge instead of writing all over the index."""
    # os.urandom, not the random module: user code (and test tools) seed that one, and equal seeds would give
    # equal ids, which the stores would take for retries of events already written.
    value = ((time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10))) & _UUID7_CLEAR | _UUID7_SET
    # Built the way uuid.UUID(int=...) builds it, minus the range check this value passes by construction: one id
    # per appended event, so its cost is paid on every append (half the time: docs/measurements.md).
    event_id = object.__new__(uuid.UUID)
    object.__setattr__(event_id, "int", value)
    object.__setattr__(event_id, "is_safe", uuid.SafeUUID.unknown)
    return event_id


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. `data` and `metadata` are JSON objects.

    `id` identifies the event forever: appending the same ids again is an idempotent retry. When absent, a new
    time-ordered UUID is chosen now, so retrying the same `NewEvent` object is idempotent too.
    """

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    id: uuid.UUID = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.id is None:
            object.__setattr__(self, "id", new_event_id())
        elif isinstance(self.id, str):
            try:
                object.__setattr__(self, "id", uuid.UUID(self.id))
            except ValueError:
                raise InvalidInput(f"event id {self.id!r} is not a UUID") from None
        elif not isinstance(self.id, uuid.UUID):
            raise InvalidInput(f"event id must be a UUID, got {type(self.id).__name__}")


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: its stream, its place in the stream and in the whole store, and when it was written.

    `version` is 1-based within the stream; `position` is global and only increases, and the order readers see is
    final (no event ever appears later below a position already read).
    """

    stream_id: str
    version: int
    position: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    _id: str
    _recorded_at_us: int

    @property
    def id(self) -> uuid.UUID:
        """The event's id, as given at append time. `StoreCorrupted` if the stored id is not a UUID."""
        try:
            return uuid.UUID(self._id)
        except ValueError:
            raise StoreCorrupted(f"the stored event at position {self.position} has an id that is not a UUID") from None

    @property
    def id_text(self) -> str:
        """The event's id as it is stored: the text of `id`, read without parsing it as a UUID."""
        return self._id

    @property
    def recorded_at(self) -> datetime:
        """When the event was written (UTC). `StoreCorrupted` if the stored time is not a representable date."""
        try:
            return datetime.fromtimestamp(self._recorded_at_us / 1_000_000, UTC)
        except (OverflowError, ValueError, OSError):
            raise StoreCorrupted(
                f"the stored event at position {self.position} has an impossible time {self._recorded_at_us}"
            ) from None

    @property
    def recorded_at_us(self) -> int:
        """When the event was written, in microseconds since the Unix epoch (UTC)."""
        return self._recorded_at_us


class AppendResult(msgspec.Struct, frozen=True):
    """Where the last event of an append landed."""

    version: int
    """The stream's version after the append (the version of its last event)."""
    position: int
    """The global position of the append's last event."""
