"""Starting runs, signalling them and awaiting their results, from any process."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from agentfold.errors import (
    DuplicateEventId,
    InvalidInput,
    NonDeterminism,
    RunControlRefused,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowTerminated,
    WrongExpectedVersion,
)
from agentfold.events import ANY, NO_STREAM, NewEvent
from agentfold.runtime import history as h
from agentfold.runtime.endings import WAKE_CHECK_SECONDS, endings_of
from agentfold.runtime.history import History, load_history
from agentfold.runtime.leases import worker_liveness
from agentfold.runtime.registry import WorkflowRegistry
from agentfold.runtime.retry import seconds
from agentfold.runtime.statemachine import AWAITING_INPUT, FAILED, PROCESSING
from agentfold.store import EventStore
from agentfold.validation import describe

_START_NAMESPACE: Final = uuid.UUID("5f0c1d2e-8a47-4b8e-9d1c-6a2f3e4b5c6d")
CONTROL_RACES: Final = 20
"""How often a control action folds the run again after a worker appended between its read and its write."""
SUSPENDED: Final = "Suspended"
NO_WORKER_WARNING_SECONDS: Final = 3.0
"""How long `result` waits before it checks that a live worker serves the run's workflow, and warns if none does."""

logger = logging.getLogger("agentfold.runtime")


class WorkflowHandle:
    """A started run."""

    def __init__(self, client: WorkflowClient, workflow_id: str) -> None:
        self.client = client
        self.workflow_id = workflow_id

    async def result(self, *, timeout: Any = None) -> Any:
        """See `WorkflowClient.result`."""
        return await self.client.result(self.workflow_id, timeout=timeout)

    async def signal(self, name: str, payload: Any = None, *, signal_id: str | uuid.UUID | None = None) -> None:
        """See `WorkflowClient.signal`."""
        await self.client.signal(self.workflow_id, name, payload, signal_id=signal_id)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"


class WorkflowClient:
    """Talks to runs through the store only; works with or without a worker in the same process."""

    def __init__(self, runtime: WorkflowRegistry, store: EventStore) -> None:
        self.runtime = runtime
        self.store = store

    async def start(
        self, workflow: Callable[..., Any] | str, *args: Any, workflow_id: str | None = None
    ) -> WorkflowHandle:
        """Start a run of `workflow` with `args`, or return the run already started under `workflow_id`.

        `workflow` is a decorated function or a name. A name this runtime does not register starts a run of a
        workflow registered on another service's runtime, without its code: whichever worker serves that name runs
        it (the run records no code version then).
        Idempotent on `workflow_id`: starting it again (even with other inputs, even concurrently) starts nothing
        and returns the existing run. `WorkflowIdConflict` if the id runs a different workflow. Inputs that are not
        JSON values (or typed models) raise `NotSerializable` before anything is written.
        """
        chosen_id = h.check_workflow_id(uuid.uuid4().hex if workflow_id is None else workflow_id)
        serializer = self.runtime.serializer
        if isinstance(workflow, str) and not self.runtime.knows(workflow):
            # Registered on another service's runtime: its workers decode the inputs as their code declares.
            name = h.check_workflow_name(workflow)
            encoded = {"args": [serializer.to_json(arg, f"input.args[{index}]") for index, arg in enumerate(args)]}
            data: dict[str, Any] = {"workflow": name, "input": encoded, "version": None}
        else:
            definition = self.runtime.definition(workflow)
            name = definition.name
            data = {"workflow": name, "input": definition.encode_input(args, serializer), "version": definition.version}
        event = NewEvent(h.WORKFLOW_STARTED, data, id=uuid.uuid5(_START_NAMESPACE, chosen_id))
        # Started before (with these inputs or others): the run below is the one to use.
        with contextlib.suppress(WrongExpectedVersion, DuplicateEventId):
            await self.store.append(h.workflow_stream(chosen_id), [event], expected_version=NO_STREAM)
        existing = await self._first_event(chosen_id)
        if existing is None or existing.type != h.WORKFLOW_STARTED:
            raise InvalidInput(f"stream {h.workflow_stream(chosen_id)!r} exists but does not record a workflow run")
        if existing.data.get("workflow") != name:
            raise WorkflowIdConflict(chosen_id, str(existing.data.get("workflow")), name)
        return WorkflowHandle(self, chosen_id)

    def handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle to a run started elsewhere."""
        return WorkflowHandle(self, h.check_workflow_id(workflow_id))

    async def _first_event(self, workflow_id: str) -> Any:
        async for event in self.store.read_stream(h.workflow_stream(workflow_id), limit=1):
            return event
        return None

    async def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        signal_id: str | uuid.UUID | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Send the signal `name` to a run: its next (or current) ``ctx.wait_for(name)`` returns `payload`.

        Works from any process. `signal_id` makes the call idempotent: the same id is delivered once, however often
        it is sent. `WorkflowNotFound` if no such run was started; `NotSerializable` for a non-JSON payload.
        `metadata` is recorded with the signal (who sent it, from where), as with every run control below.
        """
        h.check_workflow_id(workflow_id)
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"a signal name must be a non-empty str, got {describe(name)}")
        encoded = self.runtime.serializer.to_json(payload, "payload")
        if await self.store.stream_version(h.workflow_stream(workflow_id)) == 0:
            raise WorkflowNotFound(workflow_id)
        data = {"name": name, "payload": encoded}
        if signal_id is None:
            event = NewEvent(h.SIGNAL_SENT, data, metadata)
        else:
            signal_event_id = uuid.uuid5(_START_NAMESPACE, f"{workflow_id}/signal/{signal_id}")
            event = NewEvent(h.SIGNAL_SENT, data, metadata, id=signal_event_id)
        with contextlib.suppress(DuplicateEventId):  # this signal id was sent before: the first signal stays
            await self.store.append(h.signal_stream(workflow_id), [event], expected_version=ANY)

    async def state(self, workflow_id: str) -> str:
        """The run's lifecycle state (Idle when never started): a fold of its events."""
        return (await load_history(self.store, h.check_workflow_id(workflow_id))).state

    async def history(self, workflow_id: str) -> History:
        """Everything the run has recorded, folded."""
        return await load_history(self.store, h.check_workflow_id(workflow_id))

    # -- run control ----------------------------------------------------------------------------------------------

    async def cancel(self, workflow_id: str, reason: str = "", *, metadata: dict[str, Any] | None = None) -> bool:
        """Ask a running run to stop: its code sees `WorkflowCancelled` at its next await and may clean up.

        A step function already running when the cancel arrives runs to its end and its result is recorded; the
        next command the code awaits raises `WorkflowCancelled` (a step a crashed worker left in doubt is
        abandoned there, neither reconciled nor run again). Whatever the code does after catching it, the run
        ends `Cancelled`. A worker serving the workflow delivers the cancel. Returns False, writing nothing, when
        a cancel was already asked; `RunControlRefused` for a run that has ended.
        """
        data = {"reason": _check_reason(reason)}
        return await self._control(workflow_id, "cancel", h.WORKFLOW_CANCEL_REQUESTED, data, metadata)

    async def terminate(self, workflow_id: str, reason: str = "", *, metadata: dict[str, Any] | None = None) -> None:
        """End a running run now, `Terminated`: no more of its code runs, step functions in flight are cancelled.

        Needs no worker. `RunControlRefused` for a run that has ended.
        """
        data = {"reason": _check_reason(reason)}
        await self._control(workflow_id, "terminate", h.WORKFLOW_TERMINATED, data, metadata)

    async def retry(self, workflow_id: str, *, metadata: dict[str, Any] | None = None) -> int:
        """Run a failed run again: recorded results before its first failed command are kept, the rest runs again.

        Returns the new attempt's number. `RunControlRefused` unless the run is `Failed`.
        """
        return await self._restart(workflow_id, "retry", None, metadata)

    async def restart(self, workflow_id: str, *, from_step: str, metadata: dict[str, Any] | None = None) -> int:
        """Start a new attempt that keeps the recorded results before the first step named `from_step`.

        Everything the run recorded from that step on is forgotten and runs again (signals its waits consumed are
        delivered again). For a run that has ended, or one suspended because its code changed; a run still going
        must be cancelled or terminated first (`RunControlRefused`). `InvalidInput` when no step has that name.
        Returns the new attempt's number.
        """
        if not isinstance(from_step, str) or not from_step:
            raise InvalidInput(f"from_step must be a non-empty step name, got {describe(from_step)}")
        return await self._restart(workflow_id, "restart", from_step, metadata)

    async def _restart(
        self, workflow_id: str, action: str, from_step: str | None, metadata: dict[str, Any] | None
    ) -> int:
        for _ in range(CONTROL_RACES):
            history = await self._existing_history(workflow_id)
            status = _status(history)
            if action == "retry" and history.state != FAILED:
                raise RunControlRefused(workflow_id, action, status, "only a Failed run can be retried")
            if history.finished is None and history.suspended is None:
                raise RunControlRefused(
                    workflow_id, action, status, "it is still running: cancel or terminate it first"
                )
            if from_step is None:
                from_seq = history.first_failed_seq()
            else:
                found = history.step_seq(from_step)
                if found is None:
                    steps = sorted({r.name for r in history.commands.values() if r.kind == h.STEP})
                    raise InvalidInput(
                        f"workflow {workflow_id!r} has no recorded step {from_step!r} "
                        f"(recorded steps: {', '.join(repr(step) for step in steps) or 'none'})"
                    )
                from_seq = found
            data = {
                "workflow": history.workflow,
                "reason": action,
                "from_seq": from_seq,
                "from_step": from_step,
                "attempt": history.attempt + 1,
                "previous_state": status,
            }
            event = NewEvent(h.WORKFLOW_RESTARTED, data, metadata)
            try:
                await self.store.append(h.workflow_stream(workflow_id), [event], expected_version=history.version)
            except WrongExpectedVersion:
                continue
            return history.attempt + 1
        raise RunControlRefused(workflow_id, action, "busy", "it kept changing while this action was checked")

    async def _control(
        self, workflow_id: str, action: str, event_type: str, data: dict[str, Any], metadata: dict[str, Any] | None
    ) -> bool:
        """Append a control event at the exact version its state was checked at, folding again after a race."""
        for _ in range(CONTROL_RACES):
            history = await self._existing_history(workflow_id)
            status = _status(history)
            if history.state not in (PROCESSING, AWAITING_INPUT):
                raise RunControlRefused(workflow_id, action, status, "only a run still going can be stopped")
            if event_type == h.WORKFLOW_CANCEL_REQUESTED and history.cancel_requested is not None:
                return False
            event = NewEvent(event_type, data, metadata)
            try:
                await self.store.append(h.workflow_stream(workflow_id), [event], expected_version=history.version)
            except WrongExpectedVersion:
                continue
            return True
        raise RunControlRefused(workflow_id, action, "busy", "it kept changing while this action was checked")

    async def _existing_history(self, workflow_id: str) -> History:
        history = await load_history(self.store, h.check_workflow_id(workflow_id))
        if history.version == 0:
            raise WorkflowNotFound(workflow_id)
        return history

    async def result(self, workflow_id: str, *, timeout: Any = None) -> Any:
        """Wait for the run to finish and return its result, decoded as the workflow declares.

        Raises `WorkflowFailed` with the stored failure, `NonDeterminism` while the run is suspended because its code
        no longer matches its history, `WorkflowNotFound` if it was never started, `TimeoutError` after `timeout`
        (seconds or timedelta), `WorkflowCancelled` or `WorkflowTerminated` for a run stopped that way. Waiting is
        pushed by the store, not a polling loop. When the run is still going after a few seconds and no live worker
        serves its workflow, a warning naming the workflow is logged (``agentfold.runtime``) once.
        """
        h.check_workflow_id(workflow_id)
        limit = None if timeout is None else seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        check_workers_at: float | None = time.monotonic() + NO_WORKER_WARNING_SECONDS
        history = History(workflow_id)
        stream = h.workflow_stream(workflow_id)
        while True:
            head = await self.store.head_position()
            async for page in self.store.read_stream_pages(stream, history.version):
                for event in page:
                    history.apply(event.type, event.data)
                history.version = page[-1].version
            if history.finished is not None:
                return self._outcome(history)
            if history.suspended is not None and history.cancel_requested is None:
                data = history.suspended
                raise NonDeterminism(workflow_id, int(data["seq"]), str(data["recorded"]), str(data["requested"]))
            if history.version == 0:
                raise WorkflowNotFound(workflow_id)
            pause = WAKE_CHECK_SECONDS
            if check_workers_at is not None:
                if time.monotonic() >= check_workers_at:
                    check_workers_at = None
                    await self._warn_if_unserved(workflow_id, history.workflow)
                else:
                    pause = min(pause, check_workers_at - time.monotonic())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"workflow {workflow_id!r} did not finish within {limit} s")
                pause = min(pause, remaining)
            await endings_of(self.store).wait(workflow_id, head, pause)

    async def workers_serving(self, workflow: str) -> list[str] | None:
        """The live workers whose heartbeats say they run `workflow`, sorted (None: a live worker does not say)."""
        return (await worker_liveness(self.store)).serving(workflow)

    async def _warn_if_unserved(self, workflow_id: str, workflow: str) -> None:
        if await self.workers_serving(workflow) == []:
            logger.warning(
                "run %r waits for a worker: no live worker serves workflow %r (start one with "
                "`agentfold worker package.module:runtime`, whose runtime registers it)",
                workflow_id,
                workflow,
            )

    def _outcome(self, history: History) -> Any:
        assert history.finished is not None
        if history.finished_type == h.WORKFLOW_COMPLETED:
            result_type = None
            if self.runtime.knows(history.workflow):
                result_type = self.runtime.definition(history.workflow).result_type
            return self.runtime.serializer.from_json(history.finished["result"], result_type)
        if history.finished_type == h.WORKFLOW_CANCELLED:
            raise WorkflowCancelled(history.workflow_id, str(history.finished.get("reason", "")))
        if history.finished_type == h.WORKFLOW_TERMINATED:
            raise WorkflowTerminated(history.workflow_id, str(history.finished.get("reason", "")))
        error = history.finished.get("error", {})
        raise WorkflowFailed(history.workflow_id, str(error.get("type")), str(error.get("message")))


def _status(history: History) -> str:
    """The run's state as people see it: the lifecycle state, or Suspended."""
    return SUSPENDED if history.suspended is not None and history.finished is None else history.state


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str):
        raise InvalidInput(f"a reason must be a str, got {type(reason).__name__}")
    return reason
