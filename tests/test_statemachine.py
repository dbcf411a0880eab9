"""Agent state machines: state is a fold of events; an illegal transition raises and appends nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from agentfold import NewEvent
from agentfold.errors import IllegalTransition, InvalidInput
from agentfold.runtime import DEFAULT_LIFECYCLE, StateMachine, Transition
from agentfold.store import EventStore


def enough_score(state: str, data: Mapping[str, Any]) -> bool:
    return bool(data.get("score", 0) >= 3)


REVIEW = StateMachine(
    "review",
    states=["Draft", "InReview", "Approved", "Rejected"],
    initial="Draft",
    final=["Approved", "Rejected"],
    transitions=[
        Transition.of("Submitted", "Draft", "InReview"),
        Transition.of("ChangesRequested", "InReview", "Draft"),
        Transition.of("Approved", "InReview", "Approved", guard=enough_score),
        Transition.of("Rejected", ["Draft", "InReview"], "Rejected"),
    ],
)


async def test_default_lifecycle_is_a_fold_of_events(store: EventStore) -> None:
    agent = DEFAULT_LIFECYCLE.agent(store, "agent-planner")
    assert await agent.state() == "Idle"
    await agent.fire("WorkflowStarted", {"workflow": "plan", "input": {"args": []}})
    assert await agent.state() == "Processing"
    await agent.fire("WaitStarted", {"seq": 1, "name": "approval"})
    assert await agent.state() == "AwaitingInput"
    await agent.fire("SignalReceived", {"seq": 1, "name": "approval"})
    assert await agent.state() == "Processing"
    await agent.fire("WorkflowCompleted", {"result": None})
    assert await agent.state() == "Completed"
    # A second reader folds the same events to the same state: there is no stored state field to disagree with.
    assert await DEFAULT_LIFECYCLE.agent(store, "agent-planner").state() == "Completed"
    types = [event.type async for event in store.read_stream("agent-planner")]
    assert types == ["WorkflowStarted", "WaitStarted", "SignalReceived", "WorkflowCompleted"]


async def test_illegal_transition_names_agent_state_and_transition_and_appends_nothing(store: EventStore) -> None:
    agent = DEFAULT_LIFECYCLE.agent(store, "agent-writer")
    await agent.fire("WorkflowStarted", {})
    await agent.fire("WorkflowFailed", {"error": {"type": "ValueError", "message": "bad"}})
    version = await store.stream_version("agent-writer")
    with pytest.raises(IllegalTransition) as raised:
        await agent.fire("WaitStarted", {"seq": 1})
    error = raised.value
    assert (error.agent, error.state, error.transition) == ("agent-writer", "Failed", "WaitStarted")
    assert "agent-writer" in str(error) and "'Failed'" in str(error) and "'WaitStarted'" in str(error)
    assert await store.stream_version("agent-writer") == version


async def test_user_states_guards_and_unrelated_events(store: EventStore) -> None:
    doc = REVIEW.agent(store, "doc-7")
    await doc.fire("Submitted", {"by": "ann"})
    # Events that are not transitions of the machine ride along and leave the state alone.
    await doc.fire("ChangesRequested", {"note": "typo"}, extra=[NewEvent("CommentAdded", {"text": "see line 3"})])
    assert await doc.state() == "Draft"
    await doc.fire("Submitted", {"by": "ann"})
    with pytest.raises(IllegalTransition) as refused:
        await doc.fire("Approved", {"score": 2})
    assert refused.value.reason == "its guard refused"
    assert await doc.state() == "InReview"
    await doc.fire("Approved", {"score": 4})
    assert await doc.state() == "Approved"
    assert REVIEW.allowed_from("Approved") == []
    types = [event.type async for event in store.read_stream("doc-7")]
    assert types == ["Submitted", "ChangesRequested", "CommentAdded", "Submitted", "Approved"]


async def test_concurrent_writers_never_land_an_illegal_transition(store: EventStore) -> None:
    await REVIEW.agent(store, "doc-9").fire("Submitted", {})
    writers = [REVIEW.agent(store, "doc-9") for _ in range(4)]
    for writer in writers:
        await writer.state()  # every writer has folded "InReview"
    outcomes = await asyncio.gather(
        *(writer.fire("Approved" if index % 2 else "Rejected", {"score": 5}) for index, writer in enumerate(writers)),
        return_exceptions=True,
    )
    succeeded = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, IllegalTransition)]
    assert len(succeeded) == 1 and len(refused) == 3
    assert await store.stream_version("doc-9") == 2


async def test_fold_refuses_a_recorded_history_the_machine_cannot_explain(store: EventStore) -> None:
    await store.append("doc-3", [NewEvent("Approved", {"score": 9})])
    with pytest.raises(IllegalTransition) as raised:
        await REVIEW.agent(store, "doc-3").state()
    assert raised.value.state == "Draft"


@pytest.mark.parametrize(
    ("states", "initial", "transitions", "final", "message"),
    [
        (["A"], "B", [], [], "initial state 'B'"),
        (["A"], "A", [], ["Z"], "final state 'Z'"),
        (["A"], "A", [Transition.of("Go", "A", "B")], [], "unknown state 'B'"),
        (["A", "B"], "A", [Transition.of("Go", "A", "B"), Transition.of("Go", "A", "A")], [], "declared twice"),
    ],
)
def test_bad_machine_definitions_are_refused(
    states: list[str], initial: str, transitions: list[Transition], final: list[str], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        StateMachine("broken", states, initial, transitions, final)
