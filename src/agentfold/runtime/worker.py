"""A worker runs workflows in this process, sharing the store's runs with any number of other workers.

The worker follows the store's global log for a few event types: run starts and ends, signals, worker heartbeats
and claims. At start it loads the registry snapshot the workers keep (every unfinished run and every worker's
liveness at a position; saved every few thousand watched events, and by each worker that stops) and reads the
watched events after it, through the store's type index, so a start costs what happened since the snapshot, not
the length of the log; afterwards it waits on the store's append notification (`_wait_for_append`) and reads only
what is new, so a new run or a signal reaches its execution without a polling delay.

Which worker runs what is decided by leases (`agentfold.runtime.leases`): a run belongs to the worker that made its
latest claim while that worker's heartbeat is fresh. A new run goes first to the worker rendezvous hashing prefers
(so workers rarely race for it) and to any worker after `claim_delay`; of racing workers, the one whose append lands
at the exact expected version wins. Runs whose holder's heartbeat expired are taken over within the TTL plus one
heartbeat; a worker fenced out of a run (its append fails because another worker claimed it) stops that run.

A worker id may outlive its process: each start of an id is a new incarnation (see `agentfold.runtime.leases`). A
relaunch under the same id resumes the id's runs at once, claiming each one before running anything; a start while
an earlier incarnation still heartbeats is refused with `WorkerIdInUse` unless `take_over` is set. An incarnation
superseded by a newer one stops serving (`wait_superseded` returns), and its appends to the runs the newer one
claimed are refused.

`stop` (SIGTERM in `agentfold worker`) is graceful: no new run is claimed and no new command is started, step
functions already running finish (up to `stop_timeout`), and a `WorkerStopped` record frees every run the worker
held, so others take them over at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, Self

from agentfold import instrumentation
from agentfold.errors import (
    AgentfoldError,
    InvalidInput,
    LeaseLost,
    NonDeterminism,
    UnknownWorkflow,
    WorkerSuperseded,
    WrongExpectedVersion,
)
from agentfold.events import NewEvent, RecordedEvent
from agentfold.groups import ConsumerGroupMember, GroupSettings
from agentfold.log import LogSnapshot
from agentfold.runtime import history as h
from agentfold.runtime.breaker import BreakerBoard
from agentfold.runtime.client import WorkflowClient
from agentfold.runtime.context import Drained, WorkflowExecution
from agentfold.runtime.history import load_history
from agentfold.runtime.leases import (
    ALIVE,
    DEFAULT_LEASE_TTL,
    LIVENESS_TYPES,
    STOPPED,
    SUPERSEDED,
    WORKER_HEARTBEAT,
    Heartbeat,
    LeaseSettings,
    Liveness,
    check_worker_id,
    heartbeat_incarnation,
    new_worker_id,
    now_us,
    preferred_worker,
    worker_liveness,
)
from agentfold.runtime.registry import WorkflowRegistry
from agentfold.runtime.retry import seconds
from agentfold.runtime.triggers import TRIGGER_GROUP, TriggerDispatcher
from agentfold.store import EventStore

logger = logging.getLogger("agentfold.runtime")

WATCHED_TYPES: Final = (
    h.WORKFLOW_STARTED,
    *h.FINISHED_TYPES,
    h.WORKFLOW_RESTARTED,
    h.WORKFLOW_CANCEL_REQUESTED,
    h.SIGNAL_SENT,
    h.WORKFLOW_CLAIMED,
    h.WORKFLOW_RELEASED,
    *LIVENESS_TYPES,
)
WAKE_CHECK_SECONDS: Final = 5.0
RESTART_BACKOFF_SECONDS: Final = (0.05, 0.2, 1.0, 5.0)
STOP_TIMEOUT_SECONDS: Final = 2.0
"""How long `stop` lets running step functions finish before cancelling them (`agentfold worker`: 10 s)."""
DRAIN_POLL_SECONDS: Final = 0.02
MAX_CLAIM_DELAY_SECONDS: Final = 0.25
REGISTRY_SNAPSHOT: Final = "workers-registry"
"""The log snapshot (`agentfold.log.LogSnapshot`) of what the workers' follower knew at a position."""
REGISTRY_EVERY_EVENTS: Final = 2000
"""Watched events between saves of the registry snapshot (also saved at most every `REGISTRY_EVERY_SECONDS`)."""
REGISTRY_EVERY_SECONDS: Final = 60.0
UNSERVED_GRACE_SECONDS: Final = 60.0
"""How long a run of a workflow that no live worker serves waits before a worker fails it with `UnknownWorkflow`."""


class Worker:
    """Runs the runtime's workflows from one store, in this process, while the ``async with`` block is open."""

    def __init__(
        self,
        runtime: WorkflowRegistry,
        store: EventStore,
        *,
        concurrency: int = 100,
        lease_ttl: timedelta | float = DEFAULT_LEASE_TTL,
        heartbeat: timedelta | float | None = None,
        worker_id: str | None = None,
        stop_timeout: timedelta | float = STOP_TIMEOUT_SECONDS,
        unserved_grace: timedelta | float | None = UNSERVED_GRACE_SECONDS,
        take_over: bool = False,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInput(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.runtime = runtime
        self.store = store
        self.concurrency = concurrency
        self.lease = LeaseSettings.of(lease_ttl, heartbeat)
        self.worker_id = new_worker_id() if worker_id is None else check_worker_id(worker_id)
        self.stop_timeout = seconds(stop_timeout, "stop_timeout")
        self.unserved_grace = None if unserved_grace is None else seconds(unserved_grace, "unserved_grace")
        """How long a run of a workflow no live worker serves waits before it is failed (None: it waits forever)."""
        self.claim_delay = min(MAX_CLAIM_DELAY_SECONDS, self.lease.heartbeat / 2)
        """How long a new run is left to the worker rendezvous hashing prefers before others race for it."""
        self.liveness = Liveness()
        self.breakers = BreakerBoard(store, runtime.breakers)
        self.taken_over = 0
        """Runs this worker took over from a worker whose lease expired."""
        self.lost = 0
        """Runs this worker was fenced out of."""
        self.take_over = bool(take_over)
        """Start even while an earlier incarnation of the id heartbeats, fencing it out (else `WorkerIdInUse`)."""
        self.superseded: WorkerSuperseded | None = None
        """Set when a newer incarnation of this worker's id took its runs over: it serves nothing more."""
        self._superseded_event = asyncio.Event()
        self._leaving: asyncio.Task[None] | None = None
        self._unfinished: dict[str, None] = {}  # insertion-ordered set: runs are resumed oldest first
        self._workflows: dict[str, str] = {}
        """Every unfinished run in the store (of any workflow) and its workflow's name: the registry's content."""
        self._owners: dict[str, str | None] = {}
        self._known_at: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._executions: dict[str, WorkflowExecution] = {}
        self._suspended: set[str] = set()
        self._ready = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._heartbeat = Heartbeat(
            store,
            self.worker_id,
            self.lease,
            self._describe,
            self._out_of_touch,
            on_superseded=self._on_superseded,
            take_over=self.take_over,
        )
        self._triggers: ConsumerGroupMember | None = None
        self._unserved_since: dict[str, float] = {}
        self._watching_since = 0.0
        self._followed = 0
        """The position up to which the follower has observed the watched events."""
        self._registry_saved = 0
        """The position the last registry snapshot this worker saved covers."""

    @property
    def running(self) -> list[str]:
        """Ids of the runs executing now."""
        return list(self._running)

    @property
    def suspended(self) -> list[str]:
        """Ids of runs stopped because their code no longer matches their history (resumed by a restart)."""
        return sorted(self._suspended)

    @property
    def incarnation(self) -> int | None:
        """This start's number among the starts of the worker id (None before `start`)."""
        return self._heartbeat.incarnation

    async def wait_superseded(self) -> WorkerSuperseded:
        """Return once a newer incarnation of this worker's id has fenced this one out (never, otherwise)."""
        await self._superseded_event.wait()
        assert self.superseded is not None
        return self.superseded

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open a new incarnation of the worker id, learn the unfinished runs and live workers, start running.

        Returns once caught up. Raises `WorkerIdInUse` (having written nothing) while an earlier incarnation of
        the id still heartbeats, unless `take_over` is set.
        """
        if self._serving is not None:
            return
        if self.superseded is not None:
            raise self.superseded
        self._stopping = False
        await self._heartbeat.start()
        self._serving = asyncio.create_task(self._serve(), name=f"agentfold-worker-{self.worker_id}")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._serving}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._serving.done():
            self._serving.result()
        if self.runtime.triggers:
            dispatcher = TriggerDispatcher(WorkflowClient(self.runtime, self.store), self.runtime.triggers)
            settings = GroupSettings(TRIGGER_GROUP, lease_seconds=self.lease.ttl, types=dispatcher.event_types)
            self._triggers = ConsumerGroupMember(self.store, settings, dispatcher, member_id=self.worker_id)
            await self._triggers.__aenter__()

    async def stop(self) -> None:
        """Stop gracefully: claim nothing more, let running step functions finish, free every held run.

        A run stops between commands (no new step, wait or timer is started); a run waiting for a signal or a
        timer stops at once. Step functions still running after `stop_timeout` are cancelled: their steps are in
        doubt and are reconciled by whoever resumes the run.
        """
        if self._serving is None:
            return
        self._stopping = True
        if self._triggers is not None:
            await self._triggers.stop()
            self._triggers = None
        if self._leaving is not None:
            await asyncio.wait({self._leaving}, timeout=self.stop_timeout)
            self._leaving = None
        self._serving.cancel()
        # Bounded: a store call that ignores cancellation must not hold the shutdown up.
        await asyncio.wait({self._serving}, timeout=self.stop_timeout)
        self._serving = None
        if self.superseded is None and self._followed > self._registry_saved:
            # The next worker to start (this one restarted, often) reads on from here, not from the last save.
            await self._save_registry(self._followed)
            self._registry_saved = self._followed
        for execution in self._executions.values():
            execution.draining = True
        deadline = time.monotonic() + self.stop_timeout
        while self._running:
            overdue = time.monotonic() >= deadline
            for workflow_id, task in list(self._running.items()):
                held = self._executions.get(workflow_id)
                if overdue or held is None or held.idle:
                    task.cancel()
            await asyncio.wait(list(self._running.values()), timeout=DRAIN_POLL_SECONDS)
            if overdue:
                break
        stuck = [task for task in self._running.values() if not task.done()]
        if stuck:
            _, still = await asyncio.wait(stuck, timeout=self.stop_timeout)
            for task in still:
                logger.error("%s did not stop within %s s of being cancelled", task.get_name(), self.stop_timeout)
        try:
            await self._heartbeat.stop()
        except AgentfoldError as error:
            logger.warning("worker %s could not record its stop (its leases expire instead): %r", self.worker_id, error)

    def _describe(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "concurrency": self.concurrency,
            "running": len(self._running),
            "workflows": self.runtime.names,
        }

    def _on_superseded(self, newer: int | None) -> None:
        """A newer incarnation of this id started: serve nothing more, stop every run, record nothing on leaving."""
        if self.superseded is not None:
            return
        self.superseded = WorkerSuperseded(self.worker_id, self.incarnation or 0, newer)
        logger.error("%s", self.superseded)
        self._stopping = True
        self._heartbeat.superseded_by(newer)
        for workflow_id, task in list(self._running.items()):
            logger.warning("worker %s: stopping run %r, now held by the newer incarnation", self.worker_id, workflow_id)
            task.cancel()
        if self._serving is not None and asyncio.current_task() is not self._serving:
            self._serving.cancel()
        if self._triggers is not None:  # the newer incarnation joins the trigger group under the same member id
            self._leaving = asyncio.get_running_loop().create_task(self._triggers.stop())
            self._triggers = None
        self._superseded_event.set()

    def _holds(self, owner: object, incarnation: object) -> bool:
        """Whether a claim naming `owner` and `incarnation` is this incarnation's own."""
        return owner == self.worker_id and incarnation == self.incarnation

    def _newer_self(self, owner: object, incarnation: object) -> bool:
        """Whether a claim or heartbeat comes from a newer incarnation of this worker's id."""
        mine = self.incarnation
        return owner == self.worker_id and isinstance(incarnation, int) and mine is not None and incarnation > mine

    def _out_of_touch(self) -> None:
        """No heartbeat for a whole TTL: others may hold our runs now, so stop them rather than be fenced mid-step."""
        for workflow_id, task in list(self._running.items()):
            logger.warning("worker %s lost touch with the store; stopping run %r", self.worker_id, workflow_id)
            task.cancel()

    # -- following the store ------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        position = await self._restore_registry()
        self._followed = self._registry_saved = position
        self._watching_since = time.monotonic()
        saved, saved_at, observed = position, time.monotonic(), 0
        pause = min(WAKE_CHECK_SECONDS, self.lease.heartbeat, self.claim_delay)
        # Not `while True`: a driver that swallows a cancellation (redis-py can, mid-command) must not keep `stop`
        # waiting for this loop forever.
        while not self._stopping:
            head = await self.store.head_position()
            async for page in self.store.read_all_pages(position, types=WATCHED_TYPES):
                for event in page:
                    self._observe(event)
                observed += len(page)
                position = self._followed = max(position, page[-1].position)
            position = self._followed = max(position, head)
            if position > saved and (
                observed >= REGISTRY_EVERY_EVENTS or time.monotonic() - saved_at >= REGISTRY_EVERY_SECONDS
            ):
                await self._save_registry(position)
                saved, saved_at, observed = position, time.monotonic(), 0
                self._registry_saved = saved
            self._ready.set()
            self._launch()
            await self._fail_unserved()
            self._slot_freed.clear()
            await self.store.wait_for_append(position, pause, until=self._slot_freed)

    async def _restore_registry(self) -> int:
        """Start from the latest registry snapshot, if any worker saved one: the position it covers.

        The snapshot holds every unfinished run with its workflow and holder, and every worker's liveness, folded
        from the watched events up to that position. Positions are final, so reading on from there misses nothing,
        and a worker joining a store with a long history does not scan it from the beginning.
        """
        loaded = await self.store.load_log_snapshot(REGISTRY_SNAPSHOT)
        if loaded is None:
            return await self._restore_open_runs()
        registry = json.loads(loaded.state)
        for workflow_id, (workflow, owner) in registry["runs"].items():
            self._know(workflow_id, workflow, owner)
        self.liveness = Liveness.from_json(registry["workers"], registry.get("serves"))
        return loaded.position

    async def _restore_open_runs(self) -> int:
        """Without a registry snapshot (the first worker a store has), start from the open runs the backend keeps
        with each append (`EventStore.open_runs`) and the workers' own streams: a read of the unfinished runs and
        the live workers, not of the log. 0 where the backend does not keep them: the log is read from its start.

        The open runs are as of a committed position at or after the one returned, and the follower applies every
        watched event after it in order; each of those sets what it concerns (a run opened, closed, held or freed;
        a worker's liveness) whatever it was, so the follower ends where a fold of the whole log would.
        """
        kept = await self.store.open_runs()
        if kept is None:
            return 0
        position, runs = kept
        for run in runs:
            self._know(run.workflow_id, run.workflow, run.owner)
        self.liveness = await worker_liveness(self.store)
        return position

    def _know(self, workflow_id: str, workflow: str, owner: str | None) -> None:
        """Take in one unfinished run restored at start."""
        self._workflows[workflow_id] = workflow
        if owner is not None:
            self._owners[workflow_id] = owner
        if self.runtime.knows(workflow):
            self._unfinished[workflow_id] = None
            self._known_at.setdefault(workflow_id, time.monotonic())

    async def _save_registry(self, position: int) -> None:
        """Save what the follower knows at `position` for workers that start later (kept unless a newer one is)."""
        runs = {run: [workflow, self._owners.get(run)] for run, workflow in self._workflows.items()}
        registry = {"runs": runs, "workers": self.liveness.to_json(), "serves": self.liveness.serves_to_json()}
        try:
            await self.store.keep_log_snapshot(LogSnapshot(REGISTRY_SNAPSHOT, position, json.dumps(registry).encode()))
        except AgentfoldError as error:
            logger.warning("could not save the workers' registry snapshot: %r", error)

    def _observe(self, event: RecordedEvent) -> None:
        stream = event.stream_id
        if event.type in LIVENESS_TYPES:
            self.liveness.observe(event)
            if event.type == WORKER_HEARTBEAT and self._newer_self(
                event.data.get("worker"), heartbeat_incarnation(event)
            ):
                self._on_superseded(heartbeat_incarnation(event))
            return
        if event.type == h.SIGNAL_SENT:
            if stream.startswith(h.SIGNAL_STREAM_PREFIX):
                execution = self._executions.get(stream[len(h.SIGNAL_STREAM_PREFIX) :])
                if execution is not None:
                    execution.notify_signal()
            return
        if not stream.startswith(h.WORKFLOW_STREAM_PREFIX):
            return
        workflow_id = stream[len(h.WORKFLOW_STREAM_PREFIX) :]
        if event.type in (h.WORKFLOW_STARTED, h.WORKFLOW_RESTARTED):
            self._workflows[workflow_id] = str(event.data.get("workflow"))
            if event.type == h.WORKFLOW_RESTARTED:
                self._owners[workflow_id] = None  # a new attempt is held by nobody until a worker claims it
                self._suspended.discard(workflow_id)
                self._known_at[workflow_id] = time.monotonic()
            if self.runtime.knows(str(event.data.get("workflow"))):
                self._unfinished[workflow_id] = None
                self._known_at.setdefault(workflow_id, time.monotonic())
        elif event.type == h.WORKFLOW_CANCEL_REQUESTED:
            execution = self._executions.get(workflow_id)
            if execution is not None and event.version > execution.history.version:
                execution.notify_control()
            # A suspended run is run again: code that no longer matches its history ends it as cancelled.
            self._suspended.discard(workflow_id)
        elif event.type == h.WORKFLOW_CLAIMED:
            owner = event.data.get("worker")
            incarnation = event.data.get("incarnation")
            self._owners[workflow_id] = owner if isinstance(owner, str) else None
            if self._newer_self(owner, incarnation):
                self._on_superseded(incarnation if isinstance(incarnation, int) else None)
            task = self._running.get(workflow_id)
            execution = self._executions.get(workflow_id)
            newer = execution is None or event.version > execution.history.version
            if not self._holds(owner, incarnation) and task is not None and newer:
                logger.warning("worker %s: run %r was taken over by %s", self.worker_id, workflow_id, owner)
                self.lost += 1
                task.cancel()
        elif event.type == h.WORKFLOW_RELEASED:
            self._owners[workflow_id] = None
        else:
            task = self._running.get(workflow_id)
            if event.type == h.WORKFLOW_TERMINATED and task is not None:
                logger.info("worker %s: run %r was terminated; stopping it", self.worker_id, workflow_id)
                task.cancel()
            self._unfinished.pop(workflow_id, None)
            self._workflows.pop(workflow_id, None)
            self._owners.pop(workflow_id, None)
            self._known_at.pop(workflow_id, None)
            self._suspended.discard(workflow_id)

    def _launch(self) -> None:
        if self._stopping:
            return
        moment = now_us()
        clock = time.monotonic()
        live: list[str] | None = None
        for workflow_id in list(self._unfinished):
            if len(self._running) >= self.concurrency:
                return
            if workflow_id in self._running or workflow_id in self._suspended:
                continue
            owner = self._owners.get(workflow_id)
            if owner is not None and owner != self.worker_id:
                if self.liveness.state(owner, moment) == ALIVE:
                    continue
            elif owner is None and clock < self._known_at.get(workflow_id, 0.0) + self.claim_delay:
                if live is None:
                    live = sorted({*self.liveness.alive(moment), self.worker_id})
                if preferred_worker(workflow_id, live) != self.worker_id:
                    continue
            self._running[workflow_id] = asyncio.create_task(self._run(workflow_id), name=f"workflow-{workflow_id}")

    # -- one run --------------------------------------------------------------------------------------------------

    async def _run(self, workflow_id: str) -> None:
        try:
            for backoff in (*RESTART_BACKOFF_SECONDS, None):
                try:
                    await self._execute(workflow_id)
                    return
                except LeaseLost as lost:
                    self._owners[workflow_id] = lost.owner
                    logger.debug("%s", lost)
                    return
                except Drained:
                    return
                except WorkerSuperseded:
                    return
                except NonDeterminism as error:
                    logger.error("workflow %r suspended: %s", workflow_id, error)
                    self._suspended.add(workflow_id)
                    return
                except UnknownWorkflow as error:
                    logger.error("workflow %r cannot run here: %s", workflow_id, error)
                    self._suspended.add(workflow_id)
                    return
                except WrongExpectedVersion:
                    if self._stopping and self.superseded is not None:
                        return
                    # Another worker appended first (a race for a new run, or a takeover): load again and see who
                    # holds it now.
                    continue
                except Exception as error:
                    # Store errors or a fault in this process: the run's history is intact, so it is loaded again
                    # and resumed from there.
                    if backoff is None:
                        logger.error("workflow %r stopped after repeated errors: %r", workflow_id, error)
                        await self._release(workflow_id)
                        return
                    expected = isinstance(error, AgentfoldError | OSError)
                    logger.error(
                        "workflow %r interrupted (%r); resuming from its history",
                        workflow_id,
                        error,
                        exc_info=not expected,
                    )
                    await asyncio.sleep(backoff)
                finally:
                    self._executions.pop(workflow_id, None)
        finally:
            self._running.pop(workflow_id, None)
            self._slot_freed.set()

    async def _execute(self, workflow_id: str) -> None:
        execution = await WorkflowExecution.load(self.runtime, self.store, workflow_id)
        history = execution.history
        if history.finished is not None:
            self._unfinished.pop(workflow_id, None)
            return
        owner = history.owner
        incarnation = self.incarnation
        if owner == self.worker_id and history.owner_incarnation != incarnation:
            if self._newer_self(owner, history.owner_incarnation):
                self._on_superseded(history.owner_incarnation)
                raise LeaseLost(workflow_id, owner)
            # An earlier incarnation of this id held the run; it may only be paused: fence it out before anything
            # else runs. This is what makes a relaunch under the same id resume at once.
            execution.claim(self.worker_id, owner, SUPERSEDED, incarnation, history.owner_incarnation)
            await execution.flush()
            logger.info("worker %s resumed run %r from an earlier incarnation", self.worker_id, workflow_id)
        elif owner is not None and owner != self.worker_id:
            self._owners[workflow_id] = owner
            state = self.liveness.state(owner)
            if state != STOPPED:
                state = await self.liveness.refresh(self.store, owner)  # the owner's own stream decides
            if state == ALIVE:
                raise LeaseLost(workflow_id, owner)
            execution.claim(self.worker_id, owner, state, incarnation, history.owner_incarnation)
            if state != STOPPED:
                # The holder may only be paused: fence it out now, before anything else runs.
                await execution.flush()
                self.taken_over += 1
                observer = instrumentation.observer
                if observer is not None:
                    observer.happened(
                        "takeover", {"gen_ai.workflow.name": history.workflow, "agentfold.previous_state": state}
                    )
                logger.info("worker %s took over run %r from %s (%s)", self.worker_id, workflow_id, owner, state)
        else:
            execution.claim(self.worker_id, incarnation=incarnation)
        execution.breakers = self.breakers
        execution.before_intent = self._heartbeat.confirm
        execution.draining = self._stopping
        self._owners[workflow_id] = self.worker_id
        self._executions[workflow_id] = execution
        await execution.run()
        if execution.history.finished is not None:
            self._unfinished.pop(workflow_id, None)

    async def _fail_unserved(self) -> None:
        """Fail the runs of workflows no live worker has served for `unserved_grace` seconds (a misspelt name, or a
        service that is gone), with an `UnknownWorkflow` error on the run itself; `retry` runs them again later.

        Only a worker that has watched the workers for a whole grace period judges, only while every live worker
        says what it serves, and only the one rendezvous hashing prefers for the run appends the failure.
        """
        grace = self.unserved_grace
        clock = time.monotonic()
        if grace is None or self._stopping or clock < self._watching_since + grace:
            return
        moment = now_us()
        served = self.liveness.served(moment)
        if served is None:
            return
        served |= set(self.runtime.names)
        live = sorted({*self.liveness.alive(moment), self.worker_id})
        for workflow_id in [run for run in self._unserved_since if run not in self._workflows]:
            del self._unserved_since[workflow_id]
        for workflow_id, workflow in list(self._workflows.items()):
            if workflow in served:
                self._unserved_since.pop(workflow_id, None)
                continue
            since = self._unserved_since.setdefault(workflow_id, clock)
            if clock < since + grace or preferred_worker(workflow_id, live) != self.worker_id:
                continue
            history = await load_history(self.store, workflow_id)
            if history.finished is not None or history.version == 0:
                continue
            if history.owner is not None and self.liveness.state(history.owner, moment) == ALIVE:
                continue
            served_now = ", ".join(sorted(served)) or "none"
            message = (
                f"no live worker serves workflow {workflow!r} (served: {served_now}); "
                f"once one does, `agentfold retry {workflow_id}` runs it"
            )
            failed = NewEvent(h.WORKFLOW_FAILED, {"error": {"type": "UnknownWorkflow", "message": message}})
            try:
                await self.store.append(h.workflow_stream(workflow_id), [failed], expected_version=history.version)
            except WrongExpectedVersion:
                continue
            except AgentfoldError as error:
                logger.warning("could not fail run %r of unserved workflow %r: %r", workflow_id, workflow, error)
                continue
            logger.error("workflow %r failed: %s", workflow_id, message)

    async def _release(self, workflow_id: str) -> None:
        """Give a run this worker cannot make progress on back to the others (`WorkflowReleased`)."""
        try:
            history = await load_history(self.store, workflow_id)
            if history.finished is None and self._holds(history.owner, history.owner_incarnation):
                released = NewEvent(h.WORKFLOW_RELEASED, {"worker": self.worker_id})
                await self.store.append(h.workflow_stream(workflow_id), [released], expected_version=history.version)
                self._owners[workflow_id] = None
        except AgentfoldError as error:
            logger.warning("could not release run %r (its lease expires instead): %r", workflow_id, error)
