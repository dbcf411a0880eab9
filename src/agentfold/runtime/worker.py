"""A worker runs workflows in this process: it resumes unfinished runs at start and picks up new ones by push.

The worker follows the store's global log for a few event types (`WorkflowStarted`, `WorkflowCompleted`,
`WorkflowFailed`, `SignalSent`). At start it reads them from the beginning to find every unfinished run of a
registered workflow and resumes it; afterwards it waits on the store's append notification (`_wait_for_append`)
and reads only what is new, so a new run or a signal reaches its execution without a polling delay.

Which runs this worker may execute is decided by its `Ownership`. `SoleOwnership` (the default) claims every
run: correct when one worker serves the store. Appends still use exact expected versions, so a second worker on
the same runs cannot fork a history; it fails with `WrongExpectedVersion` and backs off.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self

from agentfold.errors import AgentfoldError, InvalidInput, NonDeterminism, UnknownWorkflow, WrongExpectedVersion
from agentfold.events import RecordedEvent
from agentfold.runtime import history as h
from agentfold.runtime.context import WorkflowExecution
from agentfold.store import EventStore

if TYPE_CHECKING:
    from agentfold.runtime.runtime import Runtime

logger = logging.getLogger("agentfold.runtime")

WATCHED_TYPES: Final = (h.WORKFLOW_STARTED, h.WORKFLOW_COMPLETED, h.WORKFLOW_FAILED, h.SIGNAL_SENT)
WAKE_CHECK_SECONDS: Final = 5.0
RESTART_BACKOFF_SECONDS: Final = (0.05, 0.2, 1.0, 5.0)
STOP_TIMEOUT_SECONDS: Final = 10.0
"""How long `stop` waits for cancelled runs; a run blocked in a store call that ignores cancellation is left."""


class Ownership(Protocol):
    """Decides which runs this worker executes (the seam for leases across workers)."""

    async def claim(self, workflow_id: str) -> bool:
        """Take the run; False when another worker holds it."""
        ...

    async def release(self, workflow_id: str) -> None:
        """Give the run back (it finished, failed to run, or the worker stops)."""
        ...


class SoleOwnership:
    """Every run belongs to this worker: the store is served by one worker."""

    async def claim(self, workflow_id: str) -> bool:
        return True

    async def release(self, workflow_id: str) -> None:
        return None


class Worker:
    """Runs the runtime's workflows from one store, in this process, while the ``async with`` block is open."""

    def __init__(
        self,
        runtime: Runtime,
        store: EventStore,
        *,
        concurrency: int = 100,
        ownership: Ownership | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInput(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.runtime = runtime
        self.store = store
        self.concurrency = concurrency
        self.ownership: Ownership = ownership or SoleOwnership()
        self._unfinished: dict[str, None] = {}  # insertion-ordered set: runs are resumed oldest first
        self._running: dict[str, asyncio.Task[None]] = {}
        self._executions: dict[str, WorkflowExecution] = {}
        self._suspended: set[str] = set()
        self._ready = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self._slot_freed = asyncio.Event()

    @property
    def running(self) -> list[str]:
        """Ids of the runs executing now."""
        return list(self._running)

    @property
    def suspended(self) -> list[str]:
        """Ids of runs stopped because their code no longer matches their history (resumed by a restart)."""
        return sorted(self._suspended)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Scan for unfinished runs, resume them, and keep following the store. Returns once the scan is done."""
        if self._serving is not None:
            return
        self._serving = asyncio.create_task(self._serve(), name="agentfold-worker")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._serving}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._serving.done():
            self._serving.result()

    async def stop(self) -> None:
        """Stop following the store and cancel running executions.

        A cancelled run records nothing more; a step cut short is in doubt and is reconciled when the run resumes.
        """
        tasks = [task for task in (self._serving, *self._running.values()) if task is not None]
        for task in tasks:
            task.cancel()
        self._serving = None
        if not tasks:
            return
        done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("%s ended with %r while the worker stopped", task.get_name(), task.exception())
        for task in stuck:
            logger.error("%s did not stop within %s s of being cancelled", task.get_name(), STOP_TIMEOUT_SECONDS)

    # -- following the store ------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        position = 0
        while True:
            head = await self.store.head_position()
            async for page in self.store.read_all_pages(position, types=WATCHED_TYPES):
                for event in page:
                    self._observe(event)
                position = max(position, page[-1].position)
            position = max(position, head)
            self._ready.set()
            self._launch()
            self._slot_freed.clear()
            wake = asyncio.create_task(self.store._wait_for_append(position, WAKE_CHECK_SECONDS))
            freed = asyncio.create_task(self._slot_freed.wait())
            try:
                await asyncio.wait({wake, freed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wake.cancel()
                freed.cancel()

    def _observe(self, event: RecordedEvent) -> None:
        stream = event.stream_id
        if event.type == h.SIGNAL_SENT:
            if stream.startswith(h.SIGNAL_STREAM_PREFIX):
                execution = self._executions.get(stream[len(h.SIGNAL_STREAM_PREFIX) :])
                if execution is not None:
                    execution.notify_signal()
            return
        if not stream.startswith(h.WORKFLOW_STREAM_PREFIX):
            return
        workflow_id = stream[len(h.WORKFLOW_STREAM_PREFIX) :]
        if event.type == h.WORKFLOW_STARTED:
            if self.runtime.knows(str(event.data.get("workflow"))):
                self._unfinished[workflow_id] = None
        else:
            self._unfinished.pop(workflow_id, None)
            self._suspended.discard(workflow_id)

    def _launch(self) -> None:
        for workflow_id in list(self._unfinished):
            if len(self._running) >= self.concurrency:
                return
            if workflow_id in self._running or workflow_id in self._suspended:
                continue
            self._running[workflow_id] = asyncio.create_task(self._run(workflow_id), name=f"workflow-{workflow_id}")

    # -- one run --------------------------------------------------------------------------------------------------

    async def _run(self, workflow_id: str) -> None:
        try:
            for backoff in (*RESTART_BACKOFF_SECONDS, None):
                if not await self.ownership.claim(workflow_id):
                    return
                try:
                    await self._execute(workflow_id)
                    return
                except NonDeterminism as error:
                    logger.error("workflow %r suspended: %s", workflow_id, error)
                    self._suspended.add(workflow_id)
                    return
                except UnknownWorkflow as error:
                    logger.error("workflow %r cannot run here: %s", workflow_id, error)
                    self._suspended.add(workflow_id)
                    return
                except Exception as error:
                    # Store errors, a lost append race (`WrongExpectedVersion`), or a fault in this process: the run's
                    # history is intact, so it is loaded again and resumed from there.
                    if backoff is None:
                        logger.error("workflow %r stopped after repeated errors: %r", workflow_id, error)
                        return
                    expected = isinstance(error, AgentfoldError | OSError)
                    level = logging.WARNING if isinstance(error, WrongExpectedVersion) else logging.ERROR
                    logger.log(
                        level,
                        "workflow %r interrupted (%r); resuming from its history",
                        workflow_id,
                        error,
                        exc_info=not expected,
                    )
                    await asyncio.sleep(backoff)
                finally:
                    self._executions.pop(workflow_id, None)
                    await self.ownership.release(workflow_id)
        finally:
            self._running.pop(workflow_id, None)
            self._slot_freed.set()

    async def _execute(self, workflow_id: str) -> None:
        execution = await WorkflowExecution.load(self.runtime, self.store, workflow_id)
        self._executions[workflow_id] = execution
        await execution.run()
        if execution.history.finished is not None:
            self._unfinished.pop(workflow_id, None)
