"""The runs index's rows: one per workflow run, changed by each append to the run's stream, computed here.

A listing of runs must not fold the log. So each backend keeps a row per run (workflow, agent, status, start, last
event, finish, retries, failed steps, holder, parent) and a row per worker (when its leases run out); the SQL
backends write them in the transaction of the append that changes them, the others by a projector. What an append
does to them is computed here, in the core, from the append's events alone (`run_update`, `worker_updates`) and
applied by each backend: in Python (`apply`) or in SQL that does the same. An append that is refused or fails
changes nothing; one that commits changes the rows with it; a retried append (which writes nothing) changes nothing
again. So on SQL backends the index never lags the log.

An update does not need the row it changes: a run's status goes through a finite set of states, so the effect of
an append's events on it is a map from each status to the status after them (`Delta.statuses`), composed here,
applied where the row is. Counters are added, and the version and times come from the append as written.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import msgspec

from agentfold import lifecycle, openruns
from agentfold.display import iso_time, now_us
from agentfold.events import AGENT_ID, RecordedEvent

SUSPENDED: Final = "Suspended"
"""Not a lifecycle state: a run whose code no longer matches its history, stopped until matching code resumes it."""
STALLED: Final = "Stalled"
"""Not stored either: an unfinished run no live worker holds, decided when a row is read (`RunRow.stalled`)."""
STORED_STATUSES: Final = (*lifecycle.STATES, SUSPENDED)
"""Every status a row holds, in the order `Delta.statuses` maps them."""

WORKFLOW_SUSPENDED: Final = "WorkflowSuspended"
STEP_COMPLETED: Final = "StepCompleted"
STEP_FAILED: Final = "StepFailed"
LEASE_TYPES: Final = openruns.HOLDING_TYPES
CONTROL_TYPES: Final = (lifecycle.WORKFLOW_CANCEL_REQUESTED,)
OWNER_KEY: Final = "worker"
"""The metadata key naming the worker that made an append."""
MAX_WORKFLOW_ID_LENGTH: Final = 190

WORKER_STREAM_PREFIX: Final = "$worker-"
WORKER_HEARTBEAT: Final = "WorkerHeartbeat"
WORKER_STOPPED: Final = "WorkerStopped"

UNCHANGED: Final = 0
SET: Final = 1
CLEAR: Final = 2

_OWNER_MARK: Final = f'"{OWNER_KEY}"'.encode()
_DATA_TYPES: Final = frozenset(
    (
        openruns.WORKFLOW_STARTED,
        STEP_FAILED,
        STEP_COMPLETED,
        openruns.WORKFLOW_CLAIMED,
        WORKER_HEARTBEAT,
        WORKER_STOPPED,
    )
)
"""The only types whose data an update reads."""


class _Fields(msgspec.Struct):
    """The data fields an update reads; a step's result is kept raw (it may be large) until it may be a run id."""

    workflow: Any = None
    final: Any = None
    result: msgspec.Raw = msgspec.Raw(b"null")
    worker: Any = None
    ttl_us: Any = 0


_fields_decoder: Final = msgspec.json.Decoder(_Fields)
_metadata_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_text_decoder: Final = msgspec.json.Decoder(str)


@dataclass
class RunRow:
    """One run as the index holds it."""

    workflow_id: str
    workflow: str
    agent: str
    status: str
    """The lifecycle state or `Suspended`; `Stalled` is decided at read time (see `stalled`)."""
    started_at_us: int
    last_event_at_us: int
    last_event_type: str
    finished_at_us: int | None = None
    version: int = 0
    retries: int = 0
    failed_steps: int = 0
    owner: str | None = None
    parent_id: str | None = None
    stalled: bool = False
    """Filled in when read: unfinished and no live worker holds it."""

    @property
    def shown_status(self) -> str:
        return STALLED if self.stalled else self.status

    def duration_us(self, at_us: int | None = None) -> int:
        end = self.finished_at_us if self.finished_at_us is not None else (now_us() if at_us is None else at_us)
        return max(0, end - self.started_at_us)

    def to_json(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow,
            "agent": self.agent,
            "status": self.shown_status,
            "state": self.status,
            "stalled": self.stalled,
            "started_at": iso_time(self.started_at_us),
            "last_event_at": iso_time(self.last_event_at_us),
            "last_event": self.last_event_type,
            "finished_at": iso_time(self.finished_at_us),
            "duration_s": self.duration_us() / 1e6,
            "version": self.version,
            "retries": self.retries,
            "failed_steps": self.failed_steps,
            "owner": self.owner,
            "parent_id": self.parent_id,
        }


COLUMNS: Final = (
    "workflow_id",
    "workflow",
    "agent",
    "status",
    "started_at_us",
    "last_event_at_us",
    "last_event_type",
    "finished_at_us",
    "version",
    "retries",
    "failed_steps",
    "owner",
    "parent_id",
)
"""A row's stored columns, in table order."""


def row_values(row: RunRow) -> tuple[Any, ...]:
    return tuple(getattr(row, column) for column in COLUMNS)


class Delta(msgspec.Struct, frozen=True):
    """What some events of a run's stream do to its row."""

    statuses: tuple[str, ...]
    """The status after them, for each status before them in `STORED_STATUSES` order."""
    last_event_type: str
    retries: int = 0
    failed_steps: int = 0
    finished: int = UNCHANGED
    """`SET`: finished when the events were written; `CLEAR`: not finished (a restart); else as before."""
    owner_changed: bool = False
    owner: str | None = None
    handed: tuple[str, ...] = ()
    """Runs these events handed work to: each such run without a parent gets this run as its parent."""


def _changes_beyond_status(delta: Delta) -> bool:
    """Whether `delta` changes more of a row than its status and its last event (version, time and type)."""
    return bool(
        delta.retries or delta.failed_steps or delta.finished != UNCHANGED or delta.owner_changed or delta.handed
    )


RESUMING: Final = tuple(lifecycle.PROCESSING if status == SUSPENDED else status for status in STORED_STATUSES)
"""The statuses after an ordinary event (a step): each as it was, except that a suspended run goes on running."""


class RunUpdate(msgspec.Struct, frozen=True):
    """What one append to ``workflow-<id>`` does to the run's row: `whole` when the row exists; when it does not,
    the row the append starts (`workflow`, `agent`, then `since_start`, the events from its first
    `WorkflowStarted` on), or nothing when the append starts no run."""

    workflow_id: str
    whole: Delta
    since_start: Delta | None = None
    workflow: str = ""
    agent: str = ""


class WorkerUpdate(msgspec.Struct, frozen=True):
    """One heartbeat (the worker's leases run `ttl_us` past the append) or stop (`ttl_us` None: they end now)."""

    worker: str
    ttl_us: int | None


def step_status(status: str, event_type: str) -> str:
    """A run's status after one event, as the runtime's `History` folds it; a transition its lifecycle does not
    allow from `status` (a history the runtime did not write) leaves it as it was."""
    if event_type == WORKFLOW_SUSPENDED:
        return SUSPENDED
    if status == SUSPENDED and event_type in (*LEASE_TYPES, *CONTROL_TYPES):
        return SUSPENDED  # a claim or a cancel request leaves the run suspended
    state = lifecycle.PROCESSING if status == SUSPENDED else status
    after = lifecycle.next_state(state, event_type)
    return status if after is None else after


_STATUS_INDEX: Final = {status: index for index, status in enumerate(STORED_STATUSES)}


@functools.lru_cache(maxsize=4096)
def _status_map(event_type: str) -> tuple[str, ...]:
    """`step_status` of one event type from each stored status, in `STORED_STATUSES` order."""
    return tuple(step_status(status, event_type) for status in STORED_STATUSES)


def _handed_to(fields: _Fields) -> str | None:
    raw = bytes(fields.result)
    if not raw.startswith(b'"') or len(raw) > 6 * MAX_WORKFLOW_ID_LENGTH + 2:
        return None
    result = _text_decoder.decode(raw)
    return result if 0 < len(result) <= MAX_WORKFLOW_ID_LENGTH else None


class _Folding:
    """A `Delta` being built, one event at a time."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.statuses: tuple[str, ...] = STORED_STATUSES
        self.last_event_type = ""
        self.retries = 0
        self.failed_steps = 0
        self.finished = UNCHANGED
        self.owner_changed = False
        self.owner: str | None = None
        self.handed: list[str] = []

    def add(self, event_type: str, fields: _Fields | None, metadata: Mapping[str, Any] | None) -> None:
        after = _status_map(event_type)
        if self.statuses is STORED_STATUSES:
            self.statuses = after
        else:
            self.statuses = tuple(after[_STATUS_INDEX[status]] for status in self.statuses)
        self.last_event_type = event_type
        if event_type == STEP_FAILED:
            if fields is not None and fields.final:
                self.failed_steps += 1
            else:
                self.retries += 1
        elif event_type in openruns.FINISHED_TYPES:
            self.finished = SET
        elif event_type == openruns.WORKFLOW_RESTARTED:
            self.finished = CLEAR
        if event_type in LEASE_TYPES:
            worker = fields.worker if fields is not None and event_type == openruns.WORKFLOW_CLAIMED else None
            self.owner_changed, self.owner = True, worker if isinstance(worker, str) else None
        elif metadata is not None and isinstance(metadata.get(OWNER_KEY), str):
            self.owner_changed, self.owner = True, metadata[OWNER_KEY]
        if event_type == STEP_COMPLETED and fields is not None:
            child = _handed_to(fields)
            if child is not None and child != self.workflow_id:
                self.handed.append(child)

    def delta(self) -> Delta:
        return Delta(
            self.statuses,
            self.last_event_type,
            self.retries,
            self.failed_steps,
            self.finished,
            self.owner_changed,
            self.owner,
            tuple(self.handed),
        )


def _fields_of(event_type: str, data: bytes | Mapping[str, Any]) -> _Fields | None:
    if event_type not in _DATA_TYPES:
        return None
    if isinstance(data, bytes | bytearray):
        return _fields_decoder.decode(data)
    result = data.get("result")
    raw = msgspec.json.encode(result) if isinstance(result, str) else b"null"
    return _Fields(data.get("workflow"), data.get("final"), msgspec.Raw(raw), data.get("worker"), data.get("ttl_us", 0))


def _metadata_of(metadata: bytes | Mapping[str, Any]) -> Mapping[str, Any] | None:
    if not isinstance(metadata, bytes | bytearray):
        return metadata
    if _OWNER_MARK not in metadata and AGENT_ID.encode() not in metadata:
        return None  # most events: nothing the row needs, and nothing decoded
    return _metadata_decoder.decode(metadata)


Encoded = tuple[str, bytes | Mapping[str, Any], bytes | Mapping[str, Any]]
"""One event as (type, data, metadata), each as JSON or decoded."""


def run_id_of(stream_id: str) -> str | None:
    """The workflow id recorded by a ``workflow-<id>`` stream, or None for any other stream."""
    prefix = openruns.WORKFLOW_STREAM_PREFIX
    if stream_id.startswith(prefix) and len(stream_id) > len(prefix):
        return stream_id[len(prefix) :]
    return None


_TEXT_RESULT: Final = re.compile(rb'"result"\s*:\s*"')
"""How a step's result that is text begins in its data's JSON (the only result that can name a run)."""


def _result_not_text(event_type: str, data: bytes | Mapping[str, Any]) -> bool:
    """Whether a completed step's data, as JSON, cannot hold a result that is text: most results are not, and then
    the data need not be decoded. Conservative: text that looks like one anywhere in the JSON counts."""
    return event_type == STEP_COMPLETED and isinstance(data, bytes | bytearray) and _TEXT_RESULT.search(data) is None


@functools.lru_cache(maxsize=4096)
def _plain_delta(event_type: str) -> Delta:
    """What one event of `event_type` does when neither its data nor its metadata matter."""
    folding = _Folding("")
    folding.add(event_type, None, None)
    return folding.delta()


def run_update(stream_id: str, events: Iterable[Encoded]) -> RunUpdate | None:
    """What one append of `events` to `stream_id` does to its run's row; None for every other stream."""
    workflow_id = run_id_of(stream_id)
    if workflow_id is None:
        return None
    if isinstance(events, list) and len(events) == 1:  # most appends: one event, often one whose data is not read
        event_type, data, metadata = events[0]
        if (event_type not in _DATA_TYPES or _result_not_text(event_type, data)) and _metadata_of(metadata) is None:
            return RunUpdate(workflow_id, _plain_delta(event_type))
    whole = _Folding(workflow_id)
    since_start: _Folding | None = None
    workflow = agent = ""
    for event_type, data, metadata in events:
        fields = _fields_of(event_type, data)
        shown = _metadata_of(metadata)
        if since_start is None and event_type == openruns.WORKFLOW_STARTED:
            since_start = _Folding(workflow_id)
            workflow = str(fields.workflow) if fields is not None and fields.workflow is not None else ""
            named = shown.get(AGENT_ID) if shown is not None else None
            agent = named if isinstance(named, str) and named else workflow
        whole.add(event_type, fields, shown)
        if since_start is not None:
            since_start.add(event_type, fields, shown)
    return RunUpdate(workflow_id, whole.delta(), None if since_start is None else since_start.delta(), workflow, agent)


def worker_updates(stream_id: str, events: Iterable[Encoded]) -> list[WorkerUpdate]:
    """The heartbeats and stops one append to a worker's stream records, in order."""
    if not stream_id.startswith(WORKER_STREAM_PREFIX):
        return []
    found: list[WorkerUpdate] = []
    for event_type, data, _ in events:
        if event_type not in (WORKER_HEARTBEAT, WORKER_STOPPED):
            continue
        fields = _fields_of(event_type, data)
        if fields is None or not isinstance(fields.worker, str):
            continue
        if event_type == WORKER_STOPPED:
            found.append(WorkerUpdate(fields.worker, None))
        else:
            ttl = fields.ttl_us
            number = isinstance(ttl, int | float) and not isinstance(ttl, bool) and math.isfinite(ttl)
            found.append(WorkerUpdate(fields.worker, int(ttl) if number else 0))
    return found


def apply(row: RunRow | None, update: RunUpdate, version: int, at_us: int) -> RunRow | None:
    """The row after `update`, written as the run's `version` at `at_us` (None: the append starts no run). Runs
    it handed work to are not changed here: see `Delta.handed`."""
    if row is not None:
        delta = update.whole
    elif update.since_start is not None:
        delta = update.since_start
        row = RunRow(update.workflow_id, update.workflow, update.agent, lifecycle.IDLE, at_us, at_us, "")
    else:
        return None
    status = delta.statuses[STORED_STATUSES.index(row.status)] if row.status in STORED_STATUSES else row.status
    finished = {SET: at_us, CLEAR: None}.get(delta.finished, row.finished_at_us)
    return RunRow(
        row.workflow_id,
        row.workflow,
        row.agent,
        status,
        row.started_at_us,
        at_us,
        delta.last_event_type,
        finished,
        version,
        row.retries + delta.retries,
        row.failed_steps + delta.failed_steps,
        delta.owner if delta.owner_changed else row.owner,
        row.parent_id,
    )


def handed(row: RunRow | None, update: RunUpdate) -> tuple[str, ...]:
    """The runs whose parent `update` may set: only those of the events it applied to `row` (before `apply`)."""
    if row is not None:
        return update.whole.handed
    return update.since_start.handed if update.since_start is not None else ()


def expiry(current: int | None, update: WorkerUpdate, at_us: int) -> int:
    """When a worker's leases run out after `update` written at `at_us` (0: it stopped), from `current`."""
    if update.ttl_us is None:
        return 0
    return max(current or 0, at_us + update.ttl_us)


class Written(msgspec.Struct, frozen=True):
    """An append as written, as the runs index needs it: its updates, its stream's version after it, and when."""

    run: RunUpdate | None
    workers: list[WorkerUpdate]
    version: int
    at_us: int


_INDEXED_PREFIXES: Final = (openruns.WORKFLOW_STREAM_PREFIX, WORKER_STREAM_PREFIX)


def written(stream_id: str, events: Iterable[Encoded], version: int, at_us: int) -> Written | None:
    """What a written append does to the runs index; None for appends to other streams (most of them), checked
    without reading their events."""
    if not stream_id.startswith(_INDEXED_PREFIXES):
        return None
    read = list(events)
    run = run_update(stream_id, read)
    workers = worker_updates(stream_id, read)
    return Written(run, workers, version, at_us) if run is not None or workers else None


def only_resumes(update: RunUpdate) -> bool:
    """Whether `update` changes nothing of an existing row but its last event, unless the run is suspended (it
    then goes on running): what a run's ordinary events (its steps) do. A store can apply such updates with one
    statement for all runs instead of reading each row."""
    delta = update.whole
    return update.since_start is None and delta.statuses == RESUMING and not _changes_beyond_status(delta)


def resuming(appends: Sequence[Written]) -> list[bool]:
    """For each of a group's appends, whether it can be applied apart as a resume (`only_resumes`): it is, and so
    is every other update of its run in the group (whose order with it then does not matter), and it has no
    worker updates."""
    moving = {append.run.workflow_id for append in appends if append.run is not None and not only_resumes(append.run)}
    return [
        append.run is not None and append.run.workflow_id not in moving and not append.workers for append in appends
    ]


LAST_EVENT_COLUMNS: Final = ("version", "last_event_at_us", "last_event_type")
"""The columns a store may leave as of the row's last other change, and read from the run's stream instead."""


def recorded(events: Iterable[RecordedEvent]) -> list[Written]:
    """Recorded events, each as an append of its own: how the index is built from the log."""
    found = (written(event.stream_id, [encoded(event)], event.version, event.recorded_at_us) for event in events)
    return [append for append in found if append is not None]


def named_runs(appends: Iterable[Written]) -> set[str]:
    """Every run whose row `appends` may read or change: their own, and those they hand work to."""
    ids: set[str] = set()
    for append in appends:
        update = append.run
        if update is None:
            continue
        ids.add(update.workflow_id)
        ids.update(update.whole.handed)
        if update.since_start is not None:
            ids.update(update.since_start.handed)
    return ids


def named_workers(appends: Iterable[Written]) -> set[str]:
    return {update.worker for append in appends for update in append.workers}


class Rows:
    """Rows of runs and workers as appends change them, in order, in memory: what every backend does with its own
    rows. Start it with the rows the appends name (`named_runs`, `named_workers`) as they are stored; read what
    changed with `changes`."""

    def __init__(self, runs: Mapping[str, RunRow] | None = None, workers: Mapping[str, int] | None = None) -> None:
        self.runs: dict[str, RunRow] = dict(runs or {})
        self.workers: dict[str, int] = dict(workers or {})
        self._before: dict[str, RunRow | None] = {}
        self._changed_workers: set[str] = set()

    def apply(self, appends: Iterable[Written]) -> None:
        for append in appends:
            if append.run is not None:
                self._apply_run(append.run, append.version, append.at_us)
            for update in append.workers:
                self.workers[update.worker] = expiry(self.workers.get(update.worker), update, append.at_us)
                self._changed_workers.add(update.worker)

    def _apply_run(self, update: RunUpdate, version: int, at_us: int) -> None:
        row = self.runs.get(update.workflow_id)
        after = apply(row, update, version, at_us)
        if after is None:
            return
        self._change(row, after)
        for child_id in handed(row, update):
            child = self.runs.get(child_id)
            if child is not None and child.parent_id is None:
                self._change(child, replace(child, parent_id=update.workflow_id))

    def _change(self, row: RunRow | None, after: RunRow) -> None:
        if after.workflow_id not in self._before:
            self._before[after.workflow_id] = row
        self.runs[after.workflow_id] = after

    def changes(self, *, last_event: bool = False) -> tuple[list[RunRow], dict[str, int], dict[str, int]]:
        """The rows changed since the last call beyond their last event (`LAST_EVENT_COLUMNS`), how they change
        the runs per stored status, and the workers' changed expiries; then starts over. With `last_event`, rows
        whose only change is their last event are in too (for rows kept without reading the run's stream)."""
        rows: list[RunRow] = []
        counts: dict[str, int] = {}
        for workflow_id, before in self._before.items():
            row = self.runs[workflow_id]
            if not last_event and before is not None and replace(before, **_last_event_of(row)) == row:
                continue
            rows.append(row)
            old = None if before is None else before.status
            if old == row.status:
                continue
            if old is not None:
                counts[old] = counts.get(old, 0) - 1
            counts[row.status] = counts.get(row.status, 0) + 1
        workers = {worker: self.workers[worker] for worker in self._changed_workers}
        self._before = {}
        self._changed_workers = set()
        return rows, {status: number for status, number in counts.items() if number}, workers


def _last_event_of(row: RunRow) -> dict[str, Any]:
    return {column: getattr(row, column) for column in LAST_EVENT_COLUMNS}


def encoded(event: RecordedEvent) -> Encoded:
    """A recorded event as an update reads it."""
    return event.type, event.data, event.metadata


__all__ = [
    "COLUMNS",
    "LAST_EVENT_COLUMNS",
    "RESUMING",
    "STALLED",
    "STORED_STATUSES",
    "SUSPENDED",
    "Delta",
    "Rows",
    "RunRow",
    "RunUpdate",
    "WorkerUpdate",
    "Written",
    "apply",
    "expiry",
    "handed",
    "named_runs",
    "named_workers",
    "only_resumes",
    "recorded",
    "resuming",
    "row_values",
    "run_id_of",
    "run_update",
    "step_status",
    "worker_updates",
    "written",
]
