"""What a workflow run has recorded, folded from the events of its stream.

Every command a workflow issues (a step, a wait, a timer, a recorded clock reading or random number) gets a sequence
number when the code asks for it. The number is taken synchronously, in call order, so `asyncio.gather` over
several steps numbers them the same way on every run, whatever order they finish in. Events carry that number; the
`History` groups them by it, which is all a replay needs.

Streams (all ordinary streams, visible in any trace):

- ``workflow-<id>``: the run itself; one writer at a time, every append at the exact expected version.
- ``signals-<id>``: the run's inbox; anyone may append a `SignalSent` to it at any time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from agentfold import lifecycle, openruns, runrows
from agentfold.events import TRACE_KEYS, TRACEPARENT, RecordedEvent
from agentfold.runtime.statemachine import DEFAULT_LIFECYCLE
from agentfold.store import EventStore
from agentfold.validation import check_stream_id, check_text

# The stream and the types the backends keep the open runs and the runs index from (`agentfold.openruns`,
# `agentfold.lifecycle`, `agentfold.runrows`), defined there once.
WORKFLOW_STREAM_PREFIX: Final = openruns.WORKFLOW_STREAM_PREFIX
SIGNAL_STREAM_PREFIX: Final = "signals-"

WORKFLOW_STARTED: Final = openruns.WORKFLOW_STARTED
WORKFLOW_COMPLETED: Final = openruns.WORKFLOW_COMPLETED
WORKFLOW_FAILED: Final = openruns.WORKFLOW_FAILED
WORKFLOW_CLAIMED: Final = openruns.WORKFLOW_CLAIMED
WORKFLOW_RELEASED: Final = openruns.WORKFLOW_RELEASED
WORKFLOW_CANCELLED: Final = openruns.WORKFLOW_CANCELLED
WORKFLOW_TERMINATED: Final = openruns.WORKFLOW_TERMINATED
WORKFLOW_RESTARTED: Final = openruns.WORKFLOW_RESTARTED

WORKFLOW_SUSPENDED: Final = runrows.WORKFLOW_SUSPENDED
STEP_STARTED: Final = "StepStarted"
STEP_COMPLETED: Final = runrows.STEP_COMPLETED
STEP_FAILED: Final = runrows.STEP_FAILED
STEP_RECONCILED: Final = "StepReconciled"
WAIT_STARTED: Final = lifecycle.WAIT_STARTED
SIGNAL_RECEIVED: Final = lifecycle.SIGNAL_RECEIVED
WAIT_TIMED_OUT: Final = lifecycle.WAIT_TIMED_OUT
TIMER_STARTED: Final = "TimerStarted"
TIMER_FIRED: Final = "TimerFired"
TIME_RECORDED: Final = "TimeRecorded"
RANDOM_RECORDED: Final = "RandomRecorded"
PATCH_APPLIED: Final = "PatchApplied"
SIGNAL_SENT: Final = "SignalSent"
WORKFLOW_CANCEL_REQUESTED: Final = lifecycle.WORKFLOW_CANCEL_REQUESTED

LEASE_TYPES: Final = runrows.LEASE_TYPES
"""Ownership records (see `agentfold.runtime.leases`): they change who runs the run, never what it did."""
OWNER_KEY: Final = runrows.OWNER_KEY
"""The metadata key naming the worker that made an append: the first append of every execution carries it."""
INCARNATION_KEY: Final = "incarnation"
"""The metadata key naming which start of that worker's id made the append (see `agentfold.runtime.leases`)."""

FINISHED_TYPES: Final = openruns.FINISHED_TYPES
CONTROL_TYPES: Final = runrows.CONTROL_TYPES
"""Run control records that anyone may append to a running run's stream: the run absorbs them and goes on."""

STEP: Final = "step"
WAIT: Final = "wait_for"
SLEEP: Final = "sleep"
NOW: Final = "now"
RANDOM: Final = "random"

_KIND_OF: Final = {
    STEP_STARTED: STEP,
    STEP_COMPLETED: STEP,
    STEP_FAILED: STEP,
    STEP_RECONCILED: STEP,
    WAIT_STARTED: WAIT,
    SIGNAL_RECEIVED: WAIT,
    WAIT_TIMED_OUT: WAIT,
    TIMER_STARTED: SLEEP,
    TIMER_FIRED: SLEEP,
    TIME_RECORDED: NOW,
    RANDOM_RECORDED: RANDOM,
}

MAX_WORKFLOW_ID_LENGTH: Final = runrows.MAX_WORKFLOW_ID_LENGTH


def check_workflow_id(workflow_id: object) -> str:
    """Return `workflow_id` if both of its stream ids are valid, else raise `InvalidInput` naming it."""
    checked = check_text(workflow_id, "workflow_id", max_length=MAX_WORKFLOW_ID_LENGTH)
    check_stream_id(workflow_stream(checked))
    return checked


def check_workflow_name(name: object) -> str:
    """Return `name` if it can name a workflow (a non-empty str without control characters), else `InvalidInput`."""
    return check_text(name, "workflow name")


def workflow_stream(workflow_id: str) -> str:
    """The stream that records one run."""
    return f"{WORKFLOW_STREAM_PREFIX}{workflow_id}"


def signal_stream(workflow_id: str) -> str:
    """The inbox stream signals for one run are appended to."""
    return f"{SIGNAL_STREAM_PREFIX}{workflow_id}"


def describe(kind: str, name: str) -> str:
    """How a command is named in errors: ``step 'charge'``, ``wait_for 'approval'``, ``now()``."""
    if kind in (STEP, WAIT):
        return f"{kind} {name!r}"
    return f"{kind}()"


@dataclass
class CommandRecord:
    """Everything recorded for one sequence number."""

    seq: int
    kind: str
    name: str
    attempt: int = 0
    """The highest attempt number started (steps)."""
    failures: int = 0
    """How many attempts ended with an exception (steps)."""
    in_doubt: bool = False
    """The last attempt started and has no recorded outcome: the process stopped between intent and outcome."""
    outcome: dict[str, Any] | None = None
    """The data of the final event: StepCompleted, final StepFailed, SignalReceived, WaitTimedOut, TimerFired, …"""
    outcome_type: str = ""
    retry_at_us: int | None = None
    deadline_us: int | None = None
    """When a wait times out or a timer fires (microseconds since the epoch)."""


@dataclass
class History:
    """The fold of one run's stream."""

    workflow_id: str
    version: int = 0
    workflow: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    code_version: Any = None
    state: str = DEFAULT_LIFECYCLE.initial
    commands: dict[int, CommandRecord] = field(default_factory=dict)
    max_seq: int = 0
    patches: set[str] = field(default_factory=set)
    consumed_signals: set[int] = field(default_factory=set)
    finished: dict[str, Any] | None = None
    finished_type: str = ""
    suspended: dict[str, Any] | None = None
    owner: str | None = None
    """The worker holding the run: named by the last `WorkflowClaimed` or claim metadata; None once released."""
    owner_incarnation: int | None = None
    """Which start of the holder's id holds it (None when released, or for records that did not say)."""
    cancel_requested: dict[str, Any] | None = None
    """The `WorkflowCancelRequested` data while a cancel waits to end the run (None otherwise)."""
    attempt: int = 1
    """1 for the first attempt, one more for each `WorkflowRestarted` (a retry or a restart from a step)."""
    patch_seqs: dict[str, int] = field(default_factory=dict)
    executed: bool = False
    """An execution of the current attempt has written to the stream (its first append names its worker)."""
    start_trace: dict[str, Any] | None = None
    """The trace context recorded with the start (or latest restart) of the run, when an observer recorded one."""
    written_trace: dict[str, Any] | None = None
    """The trace context of the newest event written since then, when an observer recorded one."""

    def apply_recorded(self, event: RecordedEvent) -> None:
        """Fold a stored event, with the holder its metadata names (the first append of every execution does)."""
        self.apply(event.type, event.data)
        metadata = event.metadata
        owner = metadata.get(OWNER_KEY)
        if owner is not None and event.type != WORKFLOW_RELEASED:
            self.owner = owner
            self.owner_incarnation = _incarnation(metadata.get(INCARNATION_KEY))
            self.executed = True
        if TRACEPARENT in metadata:
            carrier = {key: metadata[key] for key in TRACE_KEYS if key in metadata}
            if event.type in (WORKFLOW_STARTED, WORKFLOW_RESTARTED):
                self.start_trace = carrier
            else:
                self.written_trace = carrier

    def apply(self, event_type: str, data: dict[str, Any]) -> None:
        """Fold one event (recorded, or just appended by this process) into the history."""
        self.state = DEFAULT_LIFECYCLE.next_state(self.state, event_type, data, self.workflow_id, check_guard=False)
        if event_type in LEASE_TYPES:
            claimed = event_type == WORKFLOW_CLAIMED
            self.owner = data.get("worker") if claimed else None
            self.owner_incarnation = _incarnation(data.get(INCARNATION_KEY)) if claimed else None
            return
        if event_type == WORKFLOW_CANCEL_REQUESTED:
            self.cancel_requested = data
            return
        if event_type == WORKFLOW_RESTARTED:
            self._restart(int(data["from_seq"]))
            return
        self.suspended = data if event_type == WORKFLOW_SUSPENDED else None
        if event_type == WORKFLOW_STARTED:
            self.workflow = data["workflow"]
            self.input = data["input"]
            self.code_version = data.get("version")
            return
        if event_type in FINISHED_TYPES:
            self.finished = data
            self.finished_type = event_type
            return
        if event_type == PATCH_APPLIED:
            self.patches.add(data["patch"])
            self.patch_seqs[data["patch"]] = int(data.get("before_seq", 0))
            return
        kind = _KIND_OF.get(event_type)
        if kind is None:
            return
        seq: int = data["seq"]
        record = self.commands.get(seq)
        if record is None:
            record = self.commands[seq] = CommandRecord(seq, kind, data.get("name", kind))
            self.max_seq = max(self.max_seq, seq)
        if event_type == STEP_STARTED:
            record.attempt = data["attempt"]
            record.in_doubt = True
            record.retry_at_us = None
        elif event_type == STEP_FAILED:
            record.in_doubt = False
            record.failures += 1
            record.retry_at_us = data.get("retry_at_us")
            if data.get("final"):
                record.outcome, record.outcome_type = data, event_type
        elif event_type == STEP_RECONCILED:
            record.in_doubt = False
        elif event_type in (WAIT_STARTED, TIMER_STARTED):
            record.deadline_us = data.get("deadline_us")
        elif event_type == SIGNAL_RECEIVED:
            self.consumed_signals.add(data["signal_version"])
            record.outcome, record.outcome_type = data, event_type
        else:
            record.in_doubt = False
            record.outcome, record.outcome_type = data, event_type

    def _restart(self, from_seq: int) -> None:
        """A new attempt: commands from `from_seq` on are forgotten, so they run again; those before it are kept.

        Signals consumed by forgotten waits go back to the inbox, to be delivered again in the order they were sent.
        The run is unfinished, unsuspended and held by nobody: any worker serving its workflow may take it.
        """
        for seq in [seq for seq in self.commands if seq >= from_seq]:
            record = self.commands.pop(seq)
            if record.outcome_type == SIGNAL_RECEIVED and record.outcome is not None:
                self.consumed_signals.discard(record.outcome["signal_version"])
        for patch in [patch for patch, before in self.patch_seqs.items() if before >= from_seq]:
            self.patches.discard(patch)
            del self.patch_seqs[patch]
        self.max_seq = max(self.commands, default=0)
        self.finished = None
        self.finished_type = ""
        self.suspended = None
        self.cancel_requested = None
        self.owner = None
        self.owner_incarnation = None
        self.attempt += 1
        self.executed = False
        self.start_trace = self.written_trace = None

    def first_failed_seq(self) -> int:
        """Where a retry starts: the first command that failed for good (a step or a timed-out wait), else the end."""
        for seq in sorted(self.commands):
            if self.commands[seq].outcome_type in (STEP_FAILED, WAIT_TIMED_OUT):
                return seq
        return self.max_seq + 1

    def step_seq(self, name: str) -> int | None:
        """The sequence number of the first recorded step called `name` (None when there is none)."""
        for seq in sorted(self.commands):
            record = self.commands[seq]
            if record.kind == STEP and record.name == name:
                return seq
        return None


def _incarnation(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def load_history(store: EventStore, workflow_id: str) -> History:
    """Fold the run's stream (`History.version` 0 when it was never started)."""
    history = History(workflow_id)
    async for page in store.read_stream_pages(workflow_stream(workflow_id)):
        for event in page:
            history.apply_recorded(event)
        history.version = page[-1].version
    return history
