"""Triggers: "when `OrderPaid` appears on `order-*`, start `fulfil_order`", once per triggering event.

Workers deliver the triggering events through one consumer group (`TRIGGER_GROUP`): each event reaches one worker
at a time, at least once (again after a crash before the group's checkpoint). The run it starts has a workflow id
derived from the trigger and the event id, and starting is idempotent on that id, so however often the event is
delivered, and by however many workers, exactly one run exists per triggering event. The run gets the event as its
input, a `TriggerEvent` JSON object.

A trigger covers the whole log: events appended before the first worker with the trigger started are delivered too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agentfold.errors import InvalidInput
from agentfold.events import RecordedEvent
from agentfold.validation import check_event_type, check_stream_id

TRIGGER_GROUP: Final = "agentfold-triggers"
MAX_TRIGGER_NAME: Final = 100

TriggerEvent = dict[str, Any]
"""What a triggered run receives: ``{"event_id", "stream_id", "type", "version", "position", "data",
"metadata", "recorded_at_us"}``."""


@dataclass(frozen=True)
class Trigger:
    """Start `workflow` for every event of `event_type` on streams starting with `stream_prefix` (None: any)."""

    name: str
    workflow: str
    event_type: str
    stream_prefix: str | None = None

    @classmethod
    def of(cls, workflow: str, event_type: str, stream_prefix: str | None, name: str | None) -> Trigger:
        """A validated trigger; the default name is ``<workflow>-on-<event type>``."""
        check_event_type(event_type)
        if stream_prefix is not None:
            check_stream_id(stream_prefix)
            if stream_prefix.startswith("$"):
                raise InvalidInput(f"stream_prefix {stream_prefix!r}: streams starting with '$' are agentfold's own")
        chosen = name or f"{workflow}-on-{event_type}"
        if not isinstance(chosen, str) or len(chosen) > MAX_TRIGGER_NAME:
            raise InvalidInput(f"a trigger name must be a str of at most {MAX_TRIGGER_NAME} characters, got {chosen!r}")
        return cls(chosen, workflow, event_type, stream_prefix)

    def matches(self, event: RecordedEvent) -> bool:
        return event.type == self.event_type and (
            self.stream_prefix is None or event.stream_id.startswith(self.stream_prefix)
        )

    def workflow_id(self, event: RecordedEvent) -> str:
        """The id of the run this event starts: the same in every worker, on every delivery."""
        return f"{self.name}-{event.id}"


def trigger_input(event: RecordedEvent) -> TriggerEvent:
    """The triggering event as the started run receives it."""
    return {
        "event_id": str(event.id),
        "stream_id": event.stream_id,
        "type": event.type,
        "version": event.version,
        "position": event.position,
        "data": event.data,
        "metadata": event.metadata,
        "recorded_at_us": event.recorded_at_us,
    }


class RunStarter(Protocol):
    """Starts runs idempotently by workflow id (a `WorkflowClient` does)."""

    async def start(self, workflow: str, /, *args: Any, workflow_id: str | None = None) -> Any: ...


class TriggerDispatcher:
    """Turns delivered events into runs (the handler of the workers' trigger group)."""

    def __init__(self, client: RunStarter, triggers: list[Trigger]) -> None:
        self.client = client
        self.triggers = list(triggers)
        self.started = 0

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(sorted({trigger.event_type for trigger in self.triggers}))

    async def __call__(self, event: RecordedEvent) -> None:
        for trigger in self.triggers:
            if trigger.matches(event):
                await self.client.start(trigger.workflow, trigger_input(event), workflow_id=trigger.workflow_id(event))
                self.started += 1


def event_id_of(workflow_id: str, trigger: Trigger) -> uuid.UUID | None:
    """The triggering event's id, read back from a triggered run's id (None if the id is not the trigger's)."""
    prefix = f"{trigger.name}-"
    if not workflow_id.startswith(prefix):
        return None
    try:
        return uuid.UUID(workflow_id[len(prefix) :])
    except ValueError:
        return None
