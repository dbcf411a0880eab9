"""agentfold: durable, event-sourced state for multi-agent systems."""

from agentfold.connect import connect
from agentfold.errors import (
    CircuitOpen,
    HandlerFailed,
    HistoryTrimmed,
    InvalidProjection,
    LeaseLost,
    ProjectionError,
    TrimRefused,
    UnhandledEvent,
    UpcastFailed,
)
from agentfold.events import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamState,
)
from agentfold.log import LogSnapshot, StreamSnapshot
from agentfold.projection import (
    Folded,
    Projection,
    TrimReport,
    fold,
    handles,
    project,
    save_snapshot,
    trim,
)
from agentfold.runtime import NOT_APPLIED, RetryPolicy, Runtime, StateMachine, Transition, WorkflowContext
from agentfold.shared import SharedKind, SharedState, SharedStream, check_resolver
from agentfold.store import EventStore
from agentfold.upcasting import SCHEMA_VERSION, Upcasters

__all__ = [
    "ANY",
    "NOT_APPLIED",
    "NO_STREAM",
    "SCHEMA_VERSION",
    "STREAM_EXISTS",
    "AppendResult",
    "CircuitOpen",
    "EventStore",
    "ExpectedVersion",
    "Folded",
    "HandlerFailed",
    "HistoryTrimmed",
    "InvalidProjection",
    "LeaseLost",
    "LogSnapshot",
    "NewEvent",
    "Projection",
    "ProjectionError",
    "RecordedEvent",
    "RetryPolicy",
    "Runtime",
    "SharedKind",
    "SharedState",
    "SharedStream",
    "StateMachine",
    "StreamSnapshot",
    "StreamState",
    "Transition",
    "TrimRefused",
    "TrimReport",
    "UnhandledEvent",
    "UpcastFailed",
    "Upcasters",
    "WorkflowContext",
    "check_resolver",
    "connect",
    "fold",
    "handles",
    "project",
    "save_snapshot",
    "trim",
]

__version__ = "0.1.0"
