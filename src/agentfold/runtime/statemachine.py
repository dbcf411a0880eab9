"""Agents as finite state machines driven only by their events.

An agent's state is never a stored field: it is the fold of its stream's events through a `StateMachine`. Each
transition is named by the event type that causes it; events of other types (steps, messages, notes) leave the state
as it is. `Agent.fire` checks the transition (and its guard) against the folded state, then appends the event with
the exact expected version it folded, so a concurrent writer can never slip an illegal transition in between: the
append fails, the agent re-folds and checks again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agentfold import lifecycle
from agentfold.errors import IllegalTransition, InvalidInput, WrongExpectedVersion
from agentfold.events import AppendResult, NewEvent, RecordedEvent
from agentfold.lifecycle import AWAITING_INPUT, CANCELLED, COMPLETED, FAILED, IDLE, PROCESSING, TERMINATED
from agentfold.store import EventStore
from agentfold.validation import check_event_type, check_stream_id

Guard = Callable[[str, Mapping[str, Any]], bool]
"""`guard(current_state, event_data) -> bool`: may the transition be taken now? Checked when firing, not on replay."""


@dataclass(frozen=True)
class Transition:
    """Taking `event_type` from any state in `sources` leads to `target`, if `guard` (when given) agrees."""

    event_type: str
    sources: frozenset[str]
    target: str
    guard: Guard | None = field(default=None, compare=False)

    @classmethod
    def of(cls, event_type: str, sources: str | Iterable[str], target: str, guard: Guard | None = None) -> Transition:
        """A transition from one state (a str) or several."""
        chosen = frozenset([sources]) if isinstance(sources, str) else frozenset(sources)
        return cls(event_type, chosen, target, guard)


class StateMachine:
    """States, an initial state, final states and the transitions between them.

    The machine is pure: it never reads or writes a store by itself. `fold` computes a state from events;
    `next_state` checks one transition; `agent(store, stream_id)` binds the machine to a stream.
    """

    def __init__(
        self,
        name: str,
        states: Iterable[str],
        initial: str,
        transitions: Iterable[Transition],
        final: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.states: frozenset[str] = frozenset(states)
        self.initial = initial
        self.final: frozenset[str] = frozenset(final)
        self.transitions: tuple[Transition, ...] = tuple(transitions)
        if initial not in self.states:
            raise InvalidInput(f"state machine {name!r}: initial state {initial!r} is not one of its states")
        for state in self.final:
            if state not in self.states:
                raise InvalidInput(f"state machine {name!r}: final state {state!r} is not one of its states")
        self._table: dict[tuple[str, str], Transition] = {}
        for transition in self.transitions:
            check_event_type(transition.event_type)
            for state in (*transition.sources, transition.target):
                if state not in self.states:
                    raise InvalidInput(
                        f"state machine {name!r}: transition {transition.event_type!r} names unknown state {state!r}"
                    )
            for source in transition.sources:
                key = (source, transition.event_type)
                if key in self._table:
                    raise InvalidInput(
                        f"state machine {name!r}: {transition.event_type!r} is declared twice from state {source!r}"
                    )
                self._table[key] = transition
        self.event_types: frozenset[str] = frozenset(transition.event_type for transition in self.transitions)

    @classmethod
    def lifecycle(cls) -> StateMachine:
        """The default lifecycle: Idle → Processing ⇄ AwaitingInput → Completed | Failed | Cancelled | Terminated."""
        return DEFAULT_LIFECYCLE

    def allowed_from(self, state: str) -> list[str]:
        """The event types that may be taken from `state`, sorted."""
        return sorted(event_type for (source, event_type) in self._table if source == state)

    def next_state(
        self, state: str, event_type: str, data: Mapping[str, Any], agent: str, *, check_guard: bool = True
    ) -> str:
        """The state after `event_type`, or `IllegalTransition` naming agent, state and transition.

        Event types the machine does not name leave the state unchanged.
        """
        if event_type not in self.event_types:
            return state
        transition = self._table.get((state, event_type))
        if transition is None:
            allowed = ", ".join(self.allowed_from(state)) or "none (a final state)"
            raise IllegalTransition(agent, state, event_type, f"allowed from {state!r}: {allowed}")
        if check_guard and transition.guard is not None and not transition.guard(state, data):
            raise IllegalTransition(agent, state, event_type, "its guard refused")
        return transition.target

    def fold(self, events: Iterable[RecordedEvent], agent: str, state: str | None = None) -> str:
        """The state after `events`, starting from `state` (default: the initial state).

        Guards are not re-run: a recorded event already passed its guard when it was written.
        """
        current = self.initial if state is None else state
        for event in events:
            current = self.next_state(current, event.type, event.data, agent, check_guard=False)
        return current

    def agent(self, store: EventStore, stream_id: str) -> Agent:
        """This machine bound to the events of `stream_id`."""
        return Agent(self, store, stream_id)


class Agent:
    """One agent: a stream whose events drive a `StateMachine`. Its state is read from the store, never kept."""

    def __init__(self, machine: StateMachine, store: EventStore, stream_id: str) -> None:
        self.machine = machine
        self.store = store
        self.stream_id = check_stream_id(stream_id)
        self._state = machine.initial
        self._version = 0

    @property
    def version(self) -> int:
        """The stream version the last `state()` or `fire()` folded up to."""
        return self._version

    async def state(self) -> str:
        """The current state: the fold of every event of the stream (only new events are read again)."""
        async for page in self.store.read_stream_pages(self.stream_id, self._version):
            self._state = self.machine.fold(page, self.stream_id, self._state)
            self._version = page[-1].version
        return self._state

    async def fire(
        self,
        event_type: str,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        extra: Sequence[NewEvent] = (),
    ) -> AppendResult:
        """Append `event_type` if the machine allows it from the current state; else `IllegalTransition`.

        `extra` events (not transitions of this machine) are appended in the same atomic write after it. When
        another writer appended in between, the state is folded again and the transition checked again, so an
        append never lands on a state it was not checked against.
        """
        payload = {} if data is None else data
        event = NewEvent(event_type, payload, metadata)
        for extra_event in extra:
            if extra_event.type in self.machine.event_types:
                raise InvalidInput(f"extra event {extra_event.type!r} is a transition; fire it on its own")
        while True:
            current = await self.state()
            self.machine.next_state(current, event_type, payload, self.stream_id)
            try:
                result = await self.store.append(self.stream_id, [event, *extra], expected_version=self._version)
            except WrongExpectedVersion:
                continue
            await self.state()
            return result


DEFAULT_LIFECYCLE: Final = StateMachine(
    "lifecycle",
    states=lifecycle.STATES,
    initial=IDLE,
    final=lifecycle.FINISHED,
    transitions=[Transition.of(event_type, sources, target) for event_type, sources, target in lifecycle.TRANSITIONS],
)
"""Every workflow run follows this machine: the table of `agentfold.lifecycle`, whose transitions are the runtime's
own event types."""

__all__ = [
    "AWAITING_INPUT",
    "CANCELLED",
    "COMPLETED",
    "DEFAULT_LIFECYCLE",
    "FAILED",
    "IDLE",
    "PROCESSING",
    "TERMINATED",
    "Agent",
    "StateMachine",
    "Transition",
]
