"""Upcasting: turn events written in an old shape into the current shape as they are read.

Events carry their schema version in the metadata key ``schema_version`` (absent means 1). An upcaster registered
for ``(event type, from_version)`` receives the event's data in that shape and returns it in shape
``from_version + 1`` (optionally under a new event type); upcasters chain until none matches. The log itself never
changes: upcasting happens on read, before the fold, so old streams still fold after the event schema changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import msgspec

from agentfold.errors import InvalidInput, UpcastFailed
from agentfold.events import RecordedEvent
from agentfold.validation import check_event_type

SCHEMA_VERSION: Final = "schema_version"
"""The metadata key holding an event's schema version (an int >= 1; absent means 1)."""

MAX_UPCAST_STEPS: Final = 1000

EventData = dict[str, Any]
Upcaster = Callable[[EventData], EventData]
"""Takes the event's data in shape ``from_version`` and returns a new dict in shape ``from_version + 1``."""

_U = TypeVar("_U", bound=Upcaster)


def schema_version_of(event: RecordedEvent) -> int:
    """The event's schema version: its ``schema_version`` metadata, or 1 when absent."""
    value = event.metadata.get(SCHEMA_VERSION, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UpcastFailed(event, 0, f"metadata {SCHEMA_VERSION!r} must be an int >= 1, got {value!r}")
    return value


class Upcasters:
    """A registry of upcasters, keyed by (event type, schema version they read).

    Registration is additive and checked: registering the same key twice raises `InvalidInput`. Reading never
    changes the stored events: an upcast event is a new `RecordedEvent` with the new type, data and
    ``schema_version``; its stream, version, position, id and time stay the same.
    """

    __slots__ = ("_steps", "_types")

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], tuple[Upcaster, str]] = {}
        self._types: frozenset[str] = frozenset()

    def register(self, event_type: str, from_version: int, *, rename_to: str | None = None) -> Callable[[_U], _U]:
        """Decorator: register the function as the upcaster of `event_type` events in schema `from_version`.

        With `rename_to`, the upcast event also takes that type (and further upcasters of the new type apply).
        """

        def decorate(function: _U) -> _U:
            self.add(event_type, from_version, function, rename_to=rename_to)
            return function

        return decorate

    def add(self, event_type: str, from_version: int, upcaster: Upcaster, *, rename_to: str | None = None) -> None:
        """Register `upcaster` for `event_type` events in schema `from_version` (see `register`)."""
        check_event_type(event_type)
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version < 1:
            raise InvalidInput(f"from_version must be an int >= 1, got {from_version!r}")
        if not callable(upcaster):
            raise InvalidInput(f"the upcaster of {event_type!r} v{from_version} is not callable")
        target = event_type if rename_to is None else check_event_type(rename_to)
        key = (event_type, from_version)
        if key in self._steps:
            raise InvalidInput(f"an upcaster for {event_type!r} schema version {from_version} is already registered")
        self._steps[key] = (upcaster, target)
        self._types = frozenset(step_type for step_type, _ in self._steps)

    @property
    def event_types(self) -> frozenset[str]:
        """The event types some upcaster reads: events of other types pass through untouched."""
        return self._types

    def __bool__(self) -> bool:
        return bool(self._steps)

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """The event in its newest known shape (the same object when no upcaster applies)."""
        if event.type not in self._types:
            return event
        event_type = event.type
        schema = schema_version_of(event)
        step = self._steps.get((event_type, schema))
        if step is None:
            return event
        data = event.data
        steps = 0
        while step is not None:
            upcaster, target = step
            try:
                upcast_data = upcaster(dict(data))
            except Exception as error:
                raise UpcastFailed(event, schema, f"{type(error).__name__}: {error}") from error
            if not isinstance(upcast_data, dict):
                raise UpcastFailed(event, schema, f"the upcaster returned {type(upcast_data).__name__}, not a dict")
            data = upcast_data
            event_type = target
            schema += 1
            steps += 1
            if steps > MAX_UPCAST_STEPS:
                raise UpcastFailed(event, schema, f"more than {MAX_UPCAST_STEPS} upcasts in a row (a cycle?)")
            step = self._steps.get((event_type, schema))
        metadata = dict(event.metadata)
        metadata[SCHEMA_VERSION] = schema
        return msgspec.structs.replace(event, type=event_type, data=data, metadata=metadata)

    def upcast_all(self, events: Iterable[RecordedEvent]) -> list[RecordedEvent]:
        """Every event upcast, in order."""
        upcast = self.upcast
        return [upcast(event) for event in events]
