"""Agents as state machines and durable workflows, built only on the store interface.

Everything the runtime knows is an ordinary event in the store: a stream per run (``workflow-<id>``) and an inbox
per run (``signals-<id>``), so it works on every backend and shows in every trace. The core never imports this
package.
"""

from agentfold.runtime.breaker import BreakerSettings, CircuitBreaker
from agentfold.runtime.client import WorkflowClient, WorkflowHandle
from agentfold.runtime.context import NOT_APPLIED, WorkflowContext, WorkflowExecution, idempotency_key
from agentfold.runtime.history import History, signal_stream, workflow_stream
from agentfold.runtime.identity import default_worker_id
from agentfold.runtime.leases import LeaseSettings, RunLease, run_leases, stalled_runs
from agentfold.runtime.registry import RecordHook, WorkflowRegistry
from agentfold.runtime.retry import NO_RETRY, RetryPolicy
from agentfold.runtime.runtime import Runtime, WorkflowDefinition
from agentfold.runtime.serialization import DefaultSerializer, Serializer
from agentfold.runtime.statemachine import (
    AWAITING_INPUT,
    CANCELLED,
    COMPLETED,
    DEFAULT_LIFECYCLE,
    FAILED,
    IDLE,
    PROCESSING,
    TERMINATED,
    Agent,
    StateMachine,
    Transition,
)
from agentfold.runtime.triggers import Trigger
from agentfold.runtime.worker import Worker

__all__ = [
    "AWAITING_INPUT",
    "CANCELLED",
    "COMPLETED",
    "DEFAULT_LIFECYCLE",
    "FAILED",
    "IDLE",
    "NOT_APPLIED",
    "NO_RETRY",
    "PROCESSING",
    "TERMINATED",
    "Agent",
    "BreakerSettings",
    "CircuitBreaker",
    "DefaultSerializer",
    "History",
    "LeaseSettings",
    "RecordHook",
    "RetryPolicy",
    "RunLease",
    "Runtime",
    "Serializer",
    "StateMachine",
    "Transition",
    "Trigger",
    "Worker",
    "WorkflowClient",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowExecution",
    "WorkflowHandle",
    "WorkflowRegistry",
    "default_worker_id",
    "idempotency_key",
    "run_leases",
    "signal_stream",
    "stalled_runs",
    "workflow_stream",
]
