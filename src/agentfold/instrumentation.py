"""The instrumentation hook: what the store, its features and the runtime report to an observer, when one is installed.

Nothing is observed unless an observer is installed (`install`; `agentfold.otel.instrument` installs the
OpenTelemetry one). Every call site reads the module attribute `observer` once and does nothing more when it is None,
so a process without an observer pays one attribute read per append, read or delivery.

The hook knows no telemetry library: it names what happened (an append to a stream, a step attempt, an event handed
to a subscriber) in agentfold's own words, and an observer turns that into spans and metrics. An observer must not
change what the store does: it may add trace context to an appended event's metadata (`TRACE_KEYS`), which exact
retries ignore, and it must let every error through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from agentfold.errors import InvalidInput
from agentfold.events import TRACE_KEYS, AppendResult, ExpectedVersion, NewEvent, RecordedEvent

__all__ = ["TRACE_KEYS", "Observer", "RunStart", "install", "observer", "uninstall"]

Write = Callable[[Sequence[NewEvent]], Awaitable[AppendResult]]
"""Appends the (possibly annotated) events to the stream the observer was told about, at the expected version."""

Pages = AsyncGenerator[list[RecordedEvent], None]


class RunStart:
    """What an observer learns when an execution of a run begins: enough to place it in its trace."""

    __slots__ = ("attempt", "resumed", "start_context", "worker_id", "workflow", "workflow_id", "written_context")

    def __init__(
        self,
        workflow: str,
        workflow_id: str,
        attempt: int,
        worker_id: str | None,
        start_context: Mapping[str, Any] | None,
        written_context: Mapping[str, Any] | None,
        resumed: bool,
    ) -> None:
        self.workflow = workflow
        self.workflow_id = workflow_id
        self.attempt = attempt
        self.worker_id = worker_id
        self.start_context = start_context
        """The trace context recorded with the run's start (or its latest restart): where the run was asked for."""
        self.written_context = written_context
        """The trace context of the newest event an earlier execution of this attempt wrote (None if none did)."""
        self.resumed = resumed
        """An earlier execution of this attempt wrote to the run already: this one resumes it (after a crash, a
        takeover or a worker's stop)."""


class Observer:
    """What is reported while this observer is installed. Each method here observes nothing; subclasses override.

    Methods are called in the task doing the work, so an observer may keep per-task state in context variables
    (a current span). They must not raise, except to let through the error of the work they wrap.
    """

    async def append(
        self, scheme: str, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion, write: Write
    ) -> AppendResult:
        """An append to `stream_id` (arguments not yet validated): `write(events)` does it and must be awaited once."""
        return await write(events)

    def read(self, scheme: str, operation: str, attributes: Mapping[str, Any], pages: Pages) -> Pages:
        """A read (`read_stream`, `read_all`), page by page: the pages the reader gets are the ones returned."""
        return pages

    def run(self, start: RunStart) -> contextlib.AbstractContextManager[None]:
        """An execution of a workflow run, from its (re)start or resume to its end or interruption."""
        return contextlib.nullcontext()

    def step(
        self, workflow: str, workflow_id: str, name: str, seq: int, attempt: int, idempotency_key: str
    ) -> contextlib.AbstractContextManager[None]:
        """One attempt of a step's function (not its replay: a recorded outcome calls nothing)."""
        return contextlib.nullcontext()

    def run_finished(self, outcome: str, error_type: str | None) -> None:
        """The run executing in this task was recorded as finished: `outcome` is its last event's type, `error_type`
        the type of the error it failed with (None unless it failed)."""

    def agent(self, name: str, agent_id: str) -> None:
        """The run executing in this task is the run of the agent `name` (an integration knows it)."""

    def usage(self, input_tokens: int | None, output_tokens: int | None, model: str | None = None) -> None:
        """The run or step attempt executing in this task used these tokens (an integration knows them)."""

    def deliver(self, consumer: str, kind: str, event: RecordedEvent) -> contextlib.AbstractContextManager[None]:
        """`event` is being handled by the consumer group (`kind` "group") or subscriber ("subscription")
        `consumer`: for a subscriber, from when it gets the event until it asks for the next one."""
        return contextlib.nullcontext()

    def remote(self, carrier: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
        """Work done for a caller in another process (an HTTP request) that named its trace context in `carrier`
        (W3C `traceparent` and `tracestate`)."""
        return contextlib.nullcontext()

    def lag(self, consumer: str, kind: str, behind: int) -> None:
        """The subscriber or group `consumer` was `behind` positions behind the head when it last read a page."""

    def happened(self, what: str, attributes: Mapping[str, Any]) -> None:
        """Something counted: a lease takeover ("takeover"), a reconcile ("reconcile")."""


observer: Observer | None = None
"""The installed observer, read by every call site; None: nothing is observed."""


def install(chosen: Observer) -> None:
    """Make `chosen` the observer of everything this process does from now on (replacing any other)."""
    global observer
    if not isinstance(chosen, Observer):
        raise InvalidInput(f"install takes an agentfold.instrumentation.Observer, got {type(chosen).__name__}")
    observer = chosen


def uninstall() -> None:
    """Observe nothing from now on."""
    global observer
    observer = None
