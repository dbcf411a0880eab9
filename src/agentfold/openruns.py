"""The open runs: every workflow run not yet finished, with its workflow and holder, kept by the backend.

A worker starting on a store must know every unfinished run (to resume it) and who holds it. Folding that from the
log costs a read of every run's start and end; on a store whose backend keeps the open runs (`OpenRunsStorage`), a
worker reads them instead: as many rows as there are unfinished runs, whatever the length of the log.

The backend keeps them with `changes`, a pure function of one append's events written here, in the core, applied
in the same transaction as the events: an append that is refused or fails changes nothing, an append that commits
changes the open runs with it, and a retried append (which writes nothing) changes nothing again. So the open runs
never lag the log: at every committed position they are `fold(log up to that position)`.

The rules are the workers' own (`agentfold.runtime.worker`): a `WorkflowStarted` or `WorkflowRestarted` opens the
run under the workflow its data names (a restart frees it: nobody holds it until a worker claims it), a finishing
event closes it, a `WorkflowClaimed` names its holder and a `WorkflowReleased` frees it. Only streams of the
``workflow-`` category count. The event types and the stream prefix are defined here and used by the runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec

WORKFLOW_STREAM_PREFIX: Final = "workflow-"
WORKFLOW_STARTED: Final = "WorkflowStarted"
WORKFLOW_RESTARTED: Final = "WorkflowRestarted"
WORKFLOW_COMPLETED: Final = "WorkflowCompleted"
WORKFLOW_FAILED: Final = "WorkflowFailed"
WORKFLOW_CANCELLED: Final = "WorkflowCancelled"
WORKFLOW_TERMINATED: Final = "WorkflowTerminated"
WORKFLOW_CLAIMED: Final = "WorkflowClaimed"
WORKFLOW_RELEASED: Final = "WorkflowReleased"
FINISHED_TYPES: Final = (WORKFLOW_COMPLETED, WORKFLOW_FAILED, WORKFLOW_CANCELLED, WORKFLOW_TERMINATED)

OPENING_TYPES: Final = (WORKFLOW_STARTED, WORKFLOW_RESTARTED)
HOLDING_TYPES: Final = (WORKFLOW_CLAIMED, WORKFLOW_RELEASED)
KEPT_TYPES: Final = (*OPENING_TYPES, *FINISHED_TYPES, *HOLDING_TYPES)
"""The only event types that change the open runs."""

OPEN: Final = "open"
CLOSE: Final = "close"
HOLD: Final = "hold"

_data_decoder = msgspec.json.Decoder(dict[str, Any])


class OpenRun(msgspec.Struct, frozen=True):
    """One unfinished run: its id (the stream id without ``workflow-``), its workflow's name, and the worker that
    claimed it last (None: nobody holds it)."""

    workflow_id: str
    workflow: str
    owner: str | None = None


class Change(msgspec.Struct, frozen=True):
    """What one event does to the open runs. `OPEN`: the run is open under `workflow`, held by nobody (a new row,
    or the row replaced); `CLOSE`: the run's row goes; `HOLD`: the run's row, if it has one, is held by `owner`."""

    kind: str
    workflow_id: str
    workflow: str | None = None
    owner: str | None = None


def change_of(stream_id: str, event_type: str, data: bytes | dict[str, Any]) -> Change | None:
    """The change one event makes (None for every event that makes none). `data` is the event's data as JSON or
    decoded; it is decoded only for the few events whose data matters."""
    if event_type not in KEPT_TYPES or not stream_id.startswith(WORKFLOW_STREAM_PREFIX):
        return None
    workflow_id = stream_id[len(WORKFLOW_STREAM_PREFIX) :]
    if event_type in FINISHED_TYPES:
        return Change(CLOSE, workflow_id)
    if event_type == WORKFLOW_RELEASED:
        return Change(HOLD, workflow_id)
    fields = _data_decoder.decode(data) if isinstance(data, bytes | bytearray) else data
    if event_type == WORKFLOW_CLAIMED:
        worker = fields.get("worker")
        return Change(HOLD, workflow_id, owner=worker if isinstance(worker, str) else None)
    return Change(OPEN, workflow_id, workflow=str(fields.get("workflow")))


def changes(stream_id: str, events: Iterable[tuple[str, bytes | dict[str, Any]]]) -> list[Change]:
    """The changes one append to `stream_id` makes, in order, from each event's (type, data)."""
    if not stream_id.startswith(WORKFLOW_STREAM_PREFIX):
        return []
    found = (change_of(stream_id, event_type, data) for event_type, data in events)
    return [change for change in found if change is not None]


def apply(runs: dict[str, OpenRun], found: Sequence[Change]) -> None:
    """Apply `found` to `runs` (workflow id -> run), in order: what each backend does with its own rows."""
    for change in found:
        if change.kind == OPEN:
            runs[change.workflow_id] = OpenRun(change.workflow_id, str(change.workflow))
        elif change.kind == CLOSE:
            runs.pop(change.workflow_id, None)
        else:
            run = runs.get(change.workflow_id)
            if run is not None:
                runs[change.workflow_id] = OpenRun(run.workflow_id, run.workflow, change.owner)


def fold(events: Iterable[tuple[str, str, bytes | dict[str, Any]]]) -> dict[str, OpenRun]:
    """The open runs after (stream id, type, data) events in position order: what a backend's rows must equal, and
    how a backend builds them for a store that had events before it kept them."""
    runs: dict[str, OpenRun] = {}
    for stream_id, event_type, data in events:
        change = change_of(stream_id, event_type, data)
        if change is not None:
            apply(runs, [change])
    return runs


__all__ = [
    "FINISHED_TYPES",
    "KEPT_TYPES",
    "WORKFLOW_STREAM_PREFIX",
    "Change",
    "OpenRun",
    "apply",
    "change_of",
    "changes",
    "fold",
]
