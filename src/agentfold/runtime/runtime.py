"""`Runtime`: the registry of workflows, and where workers and clients come from."""

from __future__ import annotations

from datetime import timedelta

from agentfold.runtime.client import WorkflowClient
from agentfold.runtime.leases import DEFAULT_LEASE_TTL
from agentfold.runtime.registry import DEFAULT_RETRY, WorkflowDefinition, WorkflowFunction, WorkflowRegistry
from agentfold.runtime.worker import STOP_TIMEOUT_SECONDS, UNSERVED_GRACE_SECONDS, Worker
from agentfold.store import EventStore

__all__ = ["DEFAULT_RETRY", "Runtime", "WorkflowDefinition", "WorkflowFunction"]


class Runtime(WorkflowRegistry):
    """The workflows of an application. Safe to create at import time: it touches no store until asked.

    Workers and clients of every process must register the same workflows under the same names.
    """

    def worker(
        self,
        store: EventStore,
        *,
        concurrency: int = 100,
        lease_ttl: timedelta | float = DEFAULT_LEASE_TTL,
        heartbeat: timedelta | float | None = None,
        worker_id: str | None = None,
        stop_timeout: timedelta | float | None = None,
        unserved_grace: timedelta | float | None = UNSERVED_GRACE_SECONDS,
        take_over: bool = False,
    ) -> Worker:
        """A worker running this runtime's workflows from `store` in this process (use with ``async with``).

        Any number of workers, in any processes, may serve one store: each run is held by one worker at a time
        under a lease (`lease_ttl`, renewed by a heartbeat every `heartbeat` seconds, default a third of the TTL).
        Leaving the block lets running step functions finish for up to `stop_timeout` seconds (default 2).
        A run of a workflow that no live worker serves for `unserved_grace` seconds (default 60; None: never) is
        failed with an `UnknownWorkflow` error on the run, so a misspelt hand-off shows on the run that was asked
        for, not on its caller; `retry` runs it again once a worker serves it.

        `worker_id` names the worker across restarts (default: a fresh ``host-pid-random`` id; pass
        `agentfold.runtime.default_worker_id()` in a process that runs one worker). A relaunch under the same id
        resumes the id's runs at once; starting while an earlier start of the id still heartbeats raises
        `WorkerIdInUse` unless `take_over` is set, which fences the earlier one out.
        """
        return Worker(
            self,
            store,
            concurrency=concurrency,
            lease_ttl=lease_ttl,
            heartbeat=heartbeat,
            worker_id=worker_id,
            stop_timeout=STOP_TIMEOUT_SECONDS if stop_timeout is None else stop_timeout,
            unserved_grace=unserved_grace,
            take_over=take_over,
        )

    def client(self, store: EventStore) -> WorkflowClient:
        """A client that starts, signals and awaits runs; it needs no worker in its process."""
        return WorkflowClient(self, store)
