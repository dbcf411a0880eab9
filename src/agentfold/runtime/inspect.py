"""Read-only views of workflow runs and of the whole store, folded from recorded events.

Everything here reads through the store interface and folds with the runtime's own `History`, the same fold a
worker uses to resume a run. Nothing here executes a step, sends a signal or appends an event: a replay only
applies recorded events to an empty history, one at a time.

The views are plain data (dataclasses with `to_json()`), so the command line, a web page or a test can show them
as they like.
"""

from __future__ import annotations

import difflib
import heapq
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from agentfold.display import iso_time, now_us
from agentfold.encoding import encode_json
from agentfold.errors import AgentfoldError, InvalidInput, WorkflowNotFound
from agentfold.events import AGENT_ID, RecordedEvent
from agentfold.runrows import SUSPENDED, run_id_of
from agentfold.runtime import history as h
from agentfold.runtime.conversation import describe_exchange, describe_tool_result, model_exchange
from agentfold.runtime.history import History
from agentfold.runtime.statemachine import AWAITING_INPUT, CANCELLED, COMPLETED, FAILED, IDLE, PROCESSING, TERMINATED
from agentfold.store import EventStore

RUN_STATUSES: Final = (IDLE, PROCESSING, AWAITING_INPUT, COMPLETED, FAILED, CANCELLED, TERMINATED, SUSPENDED)
"""What `RunFilter.status` accepts: the lifecycle states, and `Suspended`."""

# Flags that make a timeline row stand out, most serious first.
FLAG_FAILED: Final = "failed"
"""A step failed for good, or the run failed."""
FLAG_ATTEMPT_FAILED: Final = "attempt failed"
"""One attempt of a step failed; it is retried."""
FLAG_RETRY: Final = "retry"
"""A step attempt after the first."""
FLAG_IN_DOUBT: Final = "in doubt"
"""A step attempt started and has no recorded outcome (the process stopped in between, or it is still running)."""
FLAG_RECONCILED: Final = "reconciled"
"""The outcome of an in-doubt attempt was asked of the outside world instead of running the step again."""
FLAG_TIMED_OUT: Final = "timed out"
"""A wait reached its timeout before a signal arrived."""
FLAG_SUSPENDED: Final = "suspended"
"""The run stopped because its code asked for something else than its history recorded."""

RUN: Final = "run"
INBOX: Final = "inbox"

DETAIL_LIMIT: Final = 240
"""Longest detail text of a timeline row, in characters (the export holds the full events)."""

Progress = Callable[[int], None]
"""Called while reading with how far the read got: a global position, or a version for one run's stream."""


# -- runs ----------------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """One run as the listing shows it: where it is and how it got there."""

    workflow_id: str
    workflow: str
    agent: str
    """The `agent_id` in the metadata of the run's first event, else the workflow's name."""
    state: str
    """The lifecycle state (`Idle`, `Processing`, `AwaitingInput`, `Completed`, `Failed`, `Cancelled`, `Terminated`)."""
    suspended: bool
    version: int
    started_at_us: int
    last_event_at_us: int
    last_event_type: str
    finished_at_us: int | None
    retries: int
    """Step attempts after the first: after an attempt failed, or after one was left in doubt by a stopped process
    (counted once per attempt, whether it has started yet or waits for its backoff)."""
    failed_steps: int
    """Steps that failed for good."""
    in_doubt_steps: int
    """Steps whose last attempt started and has no recorded outcome."""
    reconciled_steps: int = 0
    """Steps whose in-doubt attempt was settled by asking the outside world (`reconcile`) instead of running again."""
    problem: str | None = None
    """The first recorded event the lifecycle refused to fold (a history the runtime did not write), if any."""

    @property
    def status(self) -> str:
        """The lifecycle state, or `Suspended` for a suspended run."""
        return SUSPENDED if self.suspended else self.state

    def duration_us(self, at_us: int | None = None) -> int:
        """From the start to the end of the run; for a run still going, to `at_us` (default: now)."""
        end = self.finished_at_us if self.finished_at_us is not None else (now_us() if at_us is None else at_us)
        return max(0, end - self.started_at_us)

    def to_json(self, at_us: int | None = None) -> dict[str, Any]:
        """A JSON object for scripts; times in ISO 8601 UTC, the duration in seconds."""
        return {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow,
            "agent": self.agent,
            "state": self.state,
            "status": self.status,
            "suspended": self.suspended,
            "version": self.version,
            "started_at": iso_time(self.started_at_us),
            "last_event_at": iso_time(self.last_event_at_us),
            "last_event": self.last_event_type,
            "finished_at": iso_time(self.finished_at_us),
            "duration_s": self.duration_us(at_us) / 1e6,
            "retries": self.retries,
            "failed_steps": self.failed_steps,
            "in_doubt_steps": self.in_doubt_steps,
            "reconciled_steps": self.reconciled_steps,
            "problem": self.problem,
        }


class _RunFold:
    """A run's `History` plus the times and counts the listing shows, fed one recorded event at a time."""

    def __init__(self, workflow_id: str, first: RecordedEvent) -> None:
        self.history = History(workflow_id)
        self.started_at_us = first.recorded_at_us
        agent = first.metadata.get(AGENT_ID)
        self.agent = agent if isinstance(agent, str) and agent else ""
        self.last: RecordedEvent = first
        self.finished_at_us: int | None = None
        self.attempts: dict[int, int] = {}  # seq -> highest attempt started
        self.failed_attempts: dict[int, int] = {}  # seq -> attempts that failed and are to be tried again
        self.reconciled: set[int] = set()
        self.problem: str | None = None

    def apply(self, event: RecordedEvent) -> str | None:
        """Fold `event`; return why it could not be folded (the history is left as it was), else None."""
        self.last = event
        refused = _fold_one(self.history, event)
        if refused is not None:
            reason = f"version {event.version} ({event.type}): {refused}"
            if self.problem is None:
                self.problem = reason
            return reason
        self._count_attempts(event)
        if event.type in h.FINISHED_TYPES:
            self.finished_at_us = event.recorded_at_us
        elif event.type == h.WORKFLOW_RESTARTED:
            self.finished_at_us = None
        return None

    def _count_attempts(self, event: RecordedEvent) -> None:
        seq = _int_or_none(event.data.get("seq"))
        if seq is None:
            return
        data = event.data
        if event.type == h.STEP_STARTED:
            self.attempts[seq] = max(self.attempts.get(seq, 0), _int_or_none(data.get("attempt")) or 1)
        elif event.type == h.STEP_FAILED and not data.get("final") and not data.get("reconcile"):
            self.failed_attempts[seq] = self.failed_attempts.get(seq, 0) + 1
        if (
            event.type == h.STEP_RECONCILED
            or (event.type == h.STEP_COMPLETED and data.get("reconciled"))
            or (event.type == h.STEP_FAILED and data.get("reconcile"))
        ):
            self.reconciled.add(seq)

    @property
    def retries(self) -> int:
        """Attempts after the first, started or waiting for their backoff (see `RunSummary.retries`)."""
        seqs = self.attempts.keys() | self.failed_attempts.keys()
        return sum(max(self.attempts.get(seq, 1) - 1, self.failed_attempts.get(seq, 0)) for seq in seqs)

    def summary(self) -> RunSummary:
        history = self.history
        commands = history.commands.values()
        return RunSummary(
            workflow_id=history.workflow_id,
            workflow=history.workflow,
            agent=self.agent or history.workflow,
            state=history.state,
            suspended=history.suspended is not None,
            version=history.version,
            started_at_us=self.started_at_us,
            last_event_at_us=self.last.recorded_at_us,
            last_event_type=self.last.type,
            finished_at_us=self.finished_at_us,
            retries=self.retries,
            failed_steps=sum(1 for record in commands if record.outcome_type == h.STEP_FAILED),
            in_doubt_steps=sum(1 for record in commands if record.in_doubt),
            reconciled_steps=len(self.reconciled),
            problem=self.problem,
        )


def _describe_error(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error}"
    return str(error)


@dataclass(frozen=True)
class RunFilter:
    """Which runs a listing keeps. Criteria that need data beyond the runs' own streams read it in `select`."""

    status: str | None = None
    """Keep runs whose `RunSummary.status` is this (compared without regard to case); None keeps all."""

    def __post_init__(self) -> None:
        if self.status is not None and self.status.lower() not in {status.lower() for status in RUN_STATUSES}:
            raise InvalidInput(f"unknown run status {self.status!r}; use one of {', '.join(RUN_STATUSES)}")

    async def select(self, store: EventStore, runs: list[RunSummary]) -> list[RunSummary]:
        """The runs to show, in the order given. `store` is there for criteria kept outside the run streams."""
        if self.status is None:
            return runs
        wanted = self.status.lower()
        return [run for run in runs if run.status.lower() == wanted]


async def list_runs(
    store: EventStore, run_filter: RunFilter | None = None, progress: Progress | None = None
) -> list[RunSummary]:
    """Every run in the store (oldest start first) that `run_filter` keeps, each folded from its stream.

    One pass over the ``workflow-`` streams in global order; `progress` gets the position reached after each page.
    A ``workflow-`` stream whose first event is not `WorkflowStarted` is not a run and is left out.
    """
    folds: dict[str, _RunFold] = {}
    not_runs: set[str] = set()
    async for page in store.read_all_pages(stream_prefix=h.WORKFLOW_STREAM_PREFIX):
        for event in page:
            workflow_id = run_id_of(event.stream_id)
            if workflow_id is None or workflow_id in not_runs:
                continue
            fold = folds.get(workflow_id)
            if fold is None:
                if event.type != h.WORKFLOW_STARTED:
                    not_runs.add(workflow_id)
                    continue
                fold = folds[workflow_id] = _RunFold(workflow_id, event)
            fold.apply(event)
        if progress is not None:
            progress(page[-1].position)
    runs = [fold.summary() for fold in folds.values()]
    return await (run_filter or RunFilter()).select(store, runs)


async def list_workflow_ids(store: EventStore) -> list[str]:
    """The ids of every run started in the store, oldest first."""
    ids: list[str] = []
    async for page in store.read_all_pages(types=[h.WORKFLOW_STARTED], stream_prefix=h.WORKFLOW_STREAM_PREFIX):
        ids.extend(workflow_id for event in page if (workflow_id := run_id_of(event.stream_id)) is not None)
    return list(dict.fromkeys(ids))


def close_matches(wanted: str, known: Iterable[str], limit: int = 5) -> list[str]:
    """The known workflow ids that look most like `wanted` (a typo, a missing prefix), best first."""
    candidates = list(known)
    matches = difflib.get_close_matches(wanted, candidates, n=limit, cutoff=0.6)
    if len(matches) < limit:
        # An id typed in part ("order-4" for "order-42") scores low on similarity but is an obvious candidate.
        matches += [item for item in candidates if wanted in item and item not in matches][: limit - len(matches)]
    return matches


async def _require_run(store: EventStore, workflow_id: str) -> int:
    h.check_workflow_id(workflow_id)
    version = await store.stream_version(h.workflow_stream(workflow_id))
    if version == 0:
        raise WorkflowNotFound(workflow_id)
    return version


async def _read_events(store: EventStore, stream_id: str, progress: Progress | None) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    async for page in store.read_stream_pages(stream_id):
        events.extend(page)
        if progress is not None:
            progress(len(events))
    return events


async def run_events(
    store: EventStore, workflow_id: str, progress: Progress | None = None
) -> list[tuple[str, RecordedEvent]]:
    """Every event of the run and of its inbox, in global order, each tagged `run` or `inbox`.

    `WorkflowNotFound` if no run was started under `workflow_id`. `progress` gets the number of events read.
    """
    await _require_run(store, workflow_id)
    run = await _read_events(store, h.workflow_stream(workflow_id), progress)
    counted = len(run)

    def inbox_progress(count: int) -> None:
        if progress is not None:
            progress(counted + count)

    inbox = await _read_events(store, h.signal_stream(workflow_id), inbox_progress)
    tagged_run = ((event.position, RUN, event) for event in run)
    tagged_inbox = ((event.position, INBOX, event) for event in inbox)
    return [(kind, event) for _, kind, event in heapq.merge(tagged_run, tagged_inbox, key=lambda item: item[0])]


async def run_summary(store: EventStore, workflow_id: str) -> RunSummary:
    """One run's summary, as `list_runs` shows it. `WorkflowNotFound` if it was never started."""
    await _require_run(store, workflow_id)
    fold: _RunFold | None = None
    async for event in store.read_stream(h.workflow_stream(workflow_id)):
        if fold is None:
            fold = _RunFold(workflow_id, event)
        fold.apply(event)
    if fold is None:
        raise WorkflowNotFound(workflow_id)
    return fold.summary()


# -- timeline ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineRow:
    """One recorded event of a run (or of its inbox) as the timeline shows it."""

    stream: str
    """`run` for the run's own stream, `inbox` for its signals stream."""
    version: int
    position: int
    event_type: str
    seq: int | None
    """The command's sequence number (steps, waits, timers, recorded values)."""
    name: str
    """The step's or wait's name, the signal's name for inbox events, the workflow's name at start and end."""
    attempt: int | None
    agent: str
    recorded_at_us: int
    since_previous_us: int | None
    """Time since the row before it."""
    took_us: int | None
    """For an outcome: time since what it ends began (the attempt's StepStarted, the WaitStarted, the start)."""
    flag: str
    """One of the FLAG_ constants when the row should stand out, else empty."""
    detail: str

    def to_json(self) -> dict[str, Any]:
        """A JSON object for scripts; times in ISO 8601 UTC, durations in seconds."""
        row = asdict(self)
        row["recorded_at"] = iso_time(self.recorded_at_us)
        row["since_previous_s"] = None if self.since_previous_us is None else self.since_previous_us / 1e6
        row["took_s"] = None if self.took_us is None else self.took_us / 1e6
        for key in ("recorded_at_us", "since_previous_us", "took_us"):
            del row[key]
        return row


@dataclass(frozen=True)
class Timeline:
    """A run's summary and every event of it, in global order."""

    run: RunSummary
    rows: list[TimelineRow]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run.to_json(), "timeline": [row.to_json() for row in self.rows]}


def compact_json(value: Any, limit: int = DETAIL_LIMIT) -> str:
    """`value` as one line of JSON, cut to `limit` characters."""
    text = encode_json(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(data: dict[str, Any]) -> str:
    error = data.get("error")
    if not isinstance(error, dict):
        return ""
    return f"{error.get('type', 'Exception')}: {error.get('message', '')}"


def describe_event(event: RecordedEvent) -> str:
    """What an event says, in one line: the error of a failed step, the payload of a signal, a result, ..."""
    data = event.data
    kind = event.type
    text: str
    if kind == h.WORKFLOW_STARTED:
        text = f"input {compact_json(data.get('input', {}).get('args', []))}"
        if data.get("version") is not None:
            text += f", code version {compact_json(data['version'])}"
    elif kind == h.STEP_COMPLETED:
        result = data.get("result")
        exchange = model_exchange(result)
        said = describe_tool_result(result, DETAIL_LIMIT) if exchange is None else None
        if exchange is not None:
            said = describe_exchange(exchange, DETAIL_LIMIT)
        text = ("reconciled, " if data.get("reconciled") else "") + (said or f"result {compact_json(result)}")
    elif kind == h.STEP_FAILED:
        text = _error_text(data)
        if data.get("reconcile"):
            text = f"reconcile failed: {text}"
        elif not data.get("final") and isinstance(data.get("retry_at_us"), int):
            delay_s = max(0, data["retry_at_us"] - event.recorded_at_us) / 1e6
            text += f" (retried after {delay_s:.3g} s)"
    elif kind == h.STEP_STARTED:
        text = ""
    elif kind == h.STEP_RECONCILED:
        text = "not applied: run again" if data.get("applied") is False else compact_json(data)
    elif kind in (h.WAIT_STARTED, h.TIMER_STARTED):
        deadline = data.get("deadline_us")
        text = f"until {iso_time(int(deadline))}" if deadline is not None else "no timeout"
    elif kind == h.SIGNAL_RECEIVED:
        text = f"payload {compact_json(data.get('payload'))}" if "payload" in data else compact_json(data)
    elif kind == h.SIGNAL_SENT:
        text = f"payload {compact_json(data.get('payload'))}"
    elif kind == h.WORKFLOW_COMPLETED:
        text = f"result {compact_json(data.get('result'))}"
    elif kind == h.WORKFLOW_FAILED:
        text = _error_text(data)
    elif kind == h.WORKFLOW_SUSPENDED:
        text = f"recorded {data.get('recorded')}, code asks for {data.get('requested')}"
    elif kind in (h.WORKFLOW_CANCEL_REQUESTED, h.WORKFLOW_CANCELLED, h.WORKFLOW_TERMINATED):
        text = f"reason {data.get('reason')!r}" if data.get("reason") else ""
        if "error" in data:
            text = (text + ", " if text else "") + f"clean-up ended with {_error_text(data)}"
    elif kind == h.WORKFLOW_RESTARTED:
        start = f"step {data.get('from_step')!r}" if data.get("from_step") else f"command #{data.get('from_seq')}"
        text = f"{data.get('reason')}: attempt {data.get('attempt')} from {start}"
    elif kind == h.PATCH_APPLIED:
        text = f"patch {data.get('patch')!r}"
    elif kind == h.TIME_RECORDED:
        text = str(iso_time(int(data["now_us"]))) if isinstance(data.get("now_us"), int) else compact_json(data)
    elif kind == h.RANDOM_RECORDED:
        text = compact_json(data.get("value"))
    else:
        text = compact_json(data)
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def timeline(store: EventStore, workflow_id: str, progress: Progress | None = None) -> Timeline:
    """The run's events with what they mean: step, attempt, durations, and flags on what went wrong.

    `WorkflowNotFound` if no run was started under `workflow_id`.
    """
    events = await run_events(store, workflow_id, progress)
    first = next(event for kind, event in events if kind == RUN)
    fold = _RunFold(workflow_id, first)
    workflow_name = ""
    rows: list[TimelineRow] = []
    begun_at: dict[tuple[int, int], int] = {}  # (seq, attempt) of a StepStarted -> when
    waits_at: dict[int, int] = {}  # seq of a WaitStarted / TimerStarted -> when
    last_start: dict[int, int] = {}  # seq -> index of the row of its latest StepStarted
    previous_at: int | None = None
    for kind, event in events:
        data = event.data
        seq = _int_or_none(data.get("seq"))
        attempt = _int_or_none(data.get("attempt"))
        took: int | None = None
        flag = ""
        name = str(data.get("name", ""))
        if kind == RUN:
            problem = fold.apply(event)
            workflow_name = fold.history.workflow or workflow_name
            if event.type == h.STEP_STARTED and seq is not None:
                begun_at[(seq, attempt or 0)] = event.recorded_at_us
                last_start[seq] = len(rows)
                flag = FLAG_RETRY if (attempt or 0) > 1 else ""
            elif event.type in (h.STEP_COMPLETED, h.STEP_FAILED) and seq is not None:
                started = begun_at.get((seq, attempt or 0))
                took = None if started is None else event.recorded_at_us - started
                if event.type == h.STEP_FAILED:
                    flag = FLAG_FAILED if data.get("final") else FLAG_ATTEMPT_FAILED
                elif data.get("reconciled"):
                    flag = FLAG_RECONCILED
            elif event.type == h.STEP_RECONCILED:
                flag = FLAG_RECONCILED
            elif event.type in (h.WAIT_STARTED, h.TIMER_STARTED) and seq is not None:
                waits_at[seq] = event.recorded_at_us
            elif event.type in (h.SIGNAL_RECEIVED, h.WAIT_TIMED_OUT, h.TIMER_FIRED) and seq is not None:
                started = waits_at.get(seq)
                took = None if started is None else event.recorded_at_us - started
                flag = FLAG_TIMED_OUT if event.type == h.WAIT_TIMED_OUT else ""
            elif event.type in h.FINISHED_TYPES:
                took = event.recorded_at_us - fold.started_at_us
                flag = FLAG_FAILED if event.type == h.WORKFLOW_FAILED else ""
            elif event.type == h.WORKFLOW_SUSPENDED:
                flag = FLAG_SUSPENDED
            if event.type in (h.WORKFLOW_STARTED, *h.FINISHED_TYPES) and not name:
                name = workflow_name
            detail = describe_event(event) if problem is None else f"not folded: {problem}"
        else:
            detail = describe_event(event)
        agent = event.metadata.get(AGENT_ID)
        rows.append(
            TimelineRow(
                stream=kind,
                version=event.version,
                position=event.position,
                event_type=event.type,
                seq=seq,
                name=name,
                attempt=attempt,
                agent=agent if isinstance(agent, str) and agent else fold.agent or workflow_name,
                recorded_at_us=event.recorded_at_us,
                since_previous_us=None if previous_at is None else event.recorded_at_us - previous_at,
                took_us=took,
                flag=flag,
                detail=detail,
            )
        )
        previous_at = event.recorded_at_us
    # A step whose latest attempt has no outcome is in doubt: mark the StepStarted that nothing answered.
    for seq, index in last_start.items():
        record = fold.history.commands.get(seq)
        if record is not None and record.in_doubt:
            row = rows[index]
            rows[index] = TimelineRow(**{**asdict(row), "flag": FLAG_IN_DOUBT})
    return Timeline(fold.summary(), rows)


# -- replay and diff -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between two projected states: at `path`, `before` became `after`."""

    path: str
    kind: str
    """`added`, `removed` or `changed`."""
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplayStep:
    """The projected run after folding one more recorded event."""

    version: int
    event_type: str
    recorded_at_us: int
    state: str
    """The lifecycle state after the event."""
    changes: list[Change]
    """What the event changed in the projected state (see `projected_state`)."""
    error: str | None = None
    """Why the event could not be folded (a history the runtime did not write); the state is left as it was."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "event": self.event_type,
            "recorded_at": iso_time(self.recorded_at_us),
            "state": self.state,
            "changes": [change.to_json() for change in self.changes],
            "error": self.error,
        }


def _command_json(record: Any) -> dict[str, Any]:
    return asdict(record)


def projected_state(history: History, seqs: Iterable[int] | None = None) -> dict[str, Any]:
    """The run as the runtime's fold sees it, as a JSON object; `seqs` limits which commands are included."""
    chosen = (
        history.commands if seqs is None else {seq: history.commands[seq] for seq in seqs if seq in history.commands}
    )
    return {
        "state": history.state,
        "version": history.version,
        "workflow": history.workflow,
        "code_version": history.code_version,
        "input": history.input,
        "commands": {str(seq): _command_json(record) for seq, record in sorted(chosen.items())},
        "patches": sorted(history.patches),
        "consumed_signals": sorted(history.consumed_signals),
        "suspended": history.suspended,
        "finished": None if history.finished is None else {"type": history.finished_type, **history.finished},
    }


def diff_states(before: Any, after: Any, path: str = "") -> list[Change]:
    """Differences between two JSON values: objects are compared key by key, anything else as a whole."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[Change] = []
        for key in [*before, *(key for key in after if key not in before)]:
            inner = f"{path}.{key}" if path else str(key)
            if key not in after:
                changes.append(Change(inner, "removed", before[key], None))
            elif key not in before:
                changes.append(Change(inner, "added", None, after[key]))
            else:
                changes.extend(diff_states(before[key], after[key], inner))
        return changes
    if before == after:
        return []
    return [Change(path, "changed", before, after)]


def _check_version(value: int, name: str, last: int, workflow_id: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or value > last:
        raise InvalidInput(f"{name} {value} is out of range: run {workflow_id!r} has versions {minimum} to {last}")
    return value


def _fold_one(history: History, event: RecordedEvent) -> str | None:
    """Apply one recorded event; return why the lifecycle refused it (the event is then left out), else None."""
    try:
        history.apply(event.type, event.data)
    except (AgentfoldError, KeyError, TypeError) as refused:
        return _describe_error(refused)
    finally:
        history.version = event.version
    return None


async def replay(
    store: EventStore, workflow_id: str, to_version: int | None = None, progress: Progress | None = None
) -> AsyncIterator[ReplayStep]:
    """Fold the run's recorded events one by one, yielding the state and what changed after each.

    Dry: only `History.apply` runs, as a worker does when it resumes a run, and no workflow code, step or store
    write. Stops after `to_version` (default: the last event). `WorkflowNotFound`, or `InvalidInput` for a
    `to_version` outside the run's versions.
    """
    last = await _require_run(store, workflow_id)
    limit = last if to_version is None else _check_version(to_version, "--to version", last, workflow_id, 1)
    history = History(workflow_id)
    async for page in store.read_stream_pages(h.workflow_stream(workflow_id), limit=limit):
        for event in page:
            seq = _int_or_none(event.data.get("seq"))
            touched = () if seq is None else (seq,)
            before = projected_state(history, touched)
            error = _fold_one(history, event)
            changes = diff_states(before, projected_state(history, touched))
            yield ReplayStep(event.version, event.type, event.recorded_at_us, history.state, changes, error)
        if progress is not None:
            progress(page[-1].version)


async def _states_at(store: EventStore, workflow_id: str, versions: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The projected state of the run after each of its events `versions` (0: before any), from one read."""
    last = await _require_run(store, workflow_id)
    wanted = {_check_version(version, "version", last, workflow_id, 0) for version in versions}
    history = History(workflow_id)
    states: dict[int, dict[str, Any]] = {}
    if 0 in wanted:
        states[0] = projected_state(history)
    if max(wanted) > 0:
        async for page in store.read_stream_pages(h.workflow_stream(workflow_id), limit=max(wanted)):
            for event in page:
                _fold_one(history, event)
                if event.version in wanted:
                    states[event.version] = projected_state(history)
    return states


async def state_at(store: EventStore, workflow_id: str, version: int) -> dict[str, Any]:
    """The projected state of the run after its event `version` (0: before any event)."""
    return (await _states_at(store, workflow_id, [version]))[version]


async def diff_versions(store: EventStore, workflow_id: str, from_version: int, to_version: int) -> list[Change]:
    """What changed in the projected state between two versions of the run (either order; 0 is the empty run)."""
    states = await _states_at(store, workflow_id, [from_version, to_version])
    return diff_states(states[from_version], states[to_version])


# -- the whole store -----------------------------------------------------------------------------------------------

EVENT_OVERHEAD_BYTES: Final = 16 + 8 + 8 + 8
"""Id, version, position and timestamp of each event, counted in the size estimate beside its encoded fields."""


def encoded_size(event: RecordedEvent) -> int:
    """Bytes the event takes encoded: its JSON data and metadata, type, stream id and fixed-size fields.

    An estimate of the store's payload, without the backend's indexes and page overhead.
    """
    return (
        len(encode_json(event.data))
        + len(encode_json(event.metadata))
        + len(event.type)
        + len(event.stream_id)
        + EVENT_OVERHEAD_BYTES
    )


@dataclass
class StoreStats:
    """Counts over every event in the store."""

    streams: int = 0
    events: int = 0
    size_bytes: int = 0
    """Estimate from the encoded lengths (see `encoded_size`)."""
    head_position: int = 0
    oldest_us: int | None = None
    newest_us: int | None = None
    runs: int = 0
    """Workflow runs started."""
    types: dict[str, int] = field(default_factory=dict)
    """Events per type, most frequent first."""
    categories: dict[str, int] = field(default_factory=dict)
    """Streams per category (the stream id up to its first ``-``), most frequent first."""

    def to_json(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "events": self.events,
            "size_bytes": self.size_bytes,
            "head_position": self.head_position,
            "oldest": iso_time(self.oldest_us),
            "newest": iso_time(self.newest_us),
            "runs": self.runs,
            "types": self.types,
            "categories": self.categories,
        }


def category_of(stream_id: str) -> str:
    """The part of a stream id before its first ``-`` (the whole id when it has none)."""
    return stream_id.split("-", 1)[0]


async def store_stats(store: EventStore, progress: Progress | None = None) -> StoreStats:
    """Read every event once and count: streams, events, size, oldest/newest, per type and per stream category.

    `progress` gets the position reached after each page (compare with `head_position()`).
    """
    stats = StoreStats(head_position=await store.head_position())
    streams: set[str] = set()
    types: Counter[str] = Counter()
    oldest: int | None = None
    newest: int | None = None
    async for page in store.read_all_pages():
        for event in page:
            streams.add(event.stream_id)
            types[event.type] += 1
            stats.size_bytes += encoded_size(event)
            stamp = event.recorded_at_us
            if oldest is None or stamp < oldest:
                oldest = stamp
            if newest is None or stamp > newest:
                newest = stamp
        stats.events += len(page)
        stats.head_position = max(stats.head_position, page[-1].position)
        if progress is not None:
            progress(page[-1].position)
    stats.streams = len(streams)
    stats.oldest_us, stats.newest_us = oldest, newest
    stats.runs = types[h.WORKFLOW_STARTED]
    stats.types = dict(types.most_common())
    stats.categories = dict(Counter(category_of(stream) for stream in streams).most_common())
    return stats


# -- export --------------------------------------------------------------------------------------------------------


def event_json(event: RecordedEvent, stream: str | None = None) -> dict[str, Any]:
    """Everything recorded about an event, as a JSON object."""
    record: dict[str, Any] = {
        "stream_id": event.stream_id,
        "version": event.version,
        "position": event.position,
        "id": str(event.id),
        "type": event.type,
        "recorded_at": iso_time(event.recorded_at_us),
        "recorded_at_us": event.recorded_at_us,
        "data": event.data,
        "metadata": event.metadata,
    }
    if stream is not None:
        record["stream"] = stream
    return record


@dataclass(frozen=True)
class Trace:
    """A run's full record: its summary and every event of the run and its inbox, verbatim, in global order."""

    run: RunSummary
    events: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run.to_json(), "events": self.events}


async def export_trace(store: EventStore, workflow_id: str, progress: Progress | None = None) -> Trace:
    """The run's trace, for a bug report. `progress` gets the number of events read."""
    events = await run_events(store, workflow_id, progress)
    first = next(event for kind, event in events if kind == RUN)
    fold = _RunFold(workflow_id, first)
    for kind, event in events:
        if kind == RUN:
            fold.apply(event)
    return Trace(fold.summary(), [event_json(event, kind) for kind, event in events])


__all__ = [
    "FLAG_ATTEMPT_FAILED",
    "FLAG_FAILED",
    "FLAG_IN_DOUBT",
    "FLAG_RECONCILED",
    "FLAG_RETRY",
    "FLAG_SUSPENDED",
    "FLAG_TIMED_OUT",
    "RUN_STATUSES",
    "SUSPENDED",
    "Change",
    "ReplayStep",
    "RunFilter",
    "RunSummary",
    "StoreStats",
    "Timeline",
    "TimelineRow",
    "Trace",
    "close_matches",
    "describe_event",
    "diff_states",
    "diff_versions",
    "export_trace",
    "list_runs",
    "list_workflow_ids",
    "projected_state",
    "replay",
    "run_events",
    "run_summary",
    "state_at",
    "store_stats",
    "timeline",
]
