"""The lifecycle every workflow run follows, as data: its states and the transitions its events cause.

The runtime builds its `DEFAULT_LIFECYCLE` state machine from this table and checks each transition against it when
it writes; the backends fold the same table into the runs index in each append's transaction
(`agentfold.runrows`). Defined once, here in the core, so both always agree.
"""

from __future__ import annotations

from typing import Final

from agentfold import openruns

IDLE: Final = "Idle"
PROCESSING: Final = "Processing"
AWAITING_INPUT: Final = "AwaitingInput"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
CANCELLED: Final = "Cancelled"
TERMINATED: Final = "Terminated"

STATES: Final = (IDLE, PROCESSING, AWAITING_INPUT, COMPLETED, FAILED, CANCELLED, TERMINATED)
RUNNING: Final = (PROCESSING, AWAITING_INPUT)
FINISHED: Final = (COMPLETED, FAILED, CANCELLED, TERMINATED)

WAIT_STARTED: Final = "WaitStarted"
SIGNAL_RECEIVED: Final = "SignalReceived"
WAIT_TIMED_OUT: Final = "WaitTimedOut"
WORKFLOW_CANCEL_REQUESTED: Final = "WorkflowCancelRequested"

TRANSITIONS: Final[tuple[tuple[str, tuple[str, ...], str], ...]] = (
    (openruns.WORKFLOW_STARTED, (IDLE,), PROCESSING),
    (WAIT_STARTED, RUNNING, AWAITING_INPUT),
    # From Processing too: with several waits in flight (`asyncio.gather`), the first answer already moved on.
    (SIGNAL_RECEIVED, RUNNING, PROCESSING),
    (WAIT_TIMED_OUT, RUNNING, PROCESSING),
    (openruns.WORKFLOW_COMPLETED, RUNNING, COMPLETED),
    (openruns.WORKFLOW_FAILED, RUNNING, FAILED),
    # Run control: a cancel is asked of a running run and ends it once its code has cleaned up; a termination
    # ends it at once; a restart (a retry, or a restart from a step) opens a new attempt of a run that ended,
    # or of a suspended one (the client checks that it is suspended).
    (WORKFLOW_CANCEL_REQUESTED, (PROCESSING,), PROCESSING),
    (WORKFLOW_CANCEL_REQUESTED, (AWAITING_INPUT,), AWAITING_INPUT),
    (openruns.WORKFLOW_CANCELLED, RUNNING, CANCELLED),
    (openruns.WORKFLOW_TERMINATED, RUNNING, TERMINATED),
    (openruns.WORKFLOW_RESTARTED, (*RUNNING, *FINISHED), PROCESSING),
)
"""(event type, the states it may be taken from, the state it leads to)."""

_TABLE: Final = {(source, event_type): target for event_type, sources, target in TRANSITIONS for source in sources}
EVENT_TYPES: Final = frozenset(event_type for event_type, _, _ in TRANSITIONS)


def next_state(state: str, event_type: str) -> str | None:
    """The state after `event_type` from `state`: `state` itself for a type that is no transition, None for a
    transition not allowed from `state`."""
    if event_type not in EVENT_TYPES:
        return state
    return _TABLE.get((state, event_type))


__all__ = [
    "AWAITING_INPUT",
    "CANCELLED",
    "COMPLETED",
    "EVENT_TYPES",
    "FAILED",
    "FINISHED",
    "IDLE",
    "PROCESSING",
    "RUNNING",
    "STATES",
    "TERMINATED",
    "TRANSITIONS",
    "next_state",
]
