"""Every error agentfold raises on purpose.

Each error names what was wrong. Errors marked *retryable* leave the store in a state where repeating the same call
is safe: appends are idempotent by event id, so a retried append is applied at most once.
"""

from __future__ import annotations

from typing import Any, Protocol


class NamedEvent(Protocol):
    """What an error needs of the event it names (a `RecordedEvent` is one); the errors stay below the events."""

    @property
    def stream_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def type(self) -> str: ...


class AgentfoldError(Exception):
    """Base class of every agentfold error."""

    retryable: bool = False


class InvalidInput(AgentfoldError, ValueError):
    """An argument was refused before anything was written."""


class InvalidStreamId(InvalidInput):
    """A stream id is empty, too long, or holds non-printable characters."""


class InvalidEventType(InvalidInput):
    """An event type is empty, too long, or holds non-printable characters."""


class InvalidEventData(InvalidInput):
    """Event data or metadata is not a JSON object of finite numbers, strings, lists and objects.

    `path` points at the offending value, e.g. ``data.items[3].price``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class EventTooLarge(InvalidInput):
    """An encoded event is larger than the store's `max_event_size`."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        super().__init__(f"event {event_type!r} is {size} bytes encoded; the limit is {limit} bytes")
        self.event_type = event_type
        self.size = size
        self.limit = limit


class BlobTooLarge(EventTooLarge):
    """A field of an event's data that the store keeps as a blob (`agentfold.blobs`) is larger than its
    `max_blob_size`; nothing was written. `field` names the field, `path` where it is (``events[0].data.prompt``)."""

    def __init__(self, event_type: str, field: str, path: str, size: int, limit: int) -> None:
        InvalidInput.__init__(
            self,
            f"{path} of event {event_type!r} is {size} bytes encoded; a data field kept as a blob may be at most "
            f"{limit} bytes (max_blob_size)",
        )
        self.event_type = event_type
        self.field = field
        self.path = path
        self.size = size
        self.limit = limit


class InvalidExpectedVersion(InvalidInput):
    """`expected_version` is neither ANY, NO_STREAM, STREAM_EXISTS nor a non-negative int."""


class InvalidURL(InvalidInput):
    """A store URL cannot be used: unknown scheme, bad option, or a missing part."""


class WrongExpectedVersion(AgentfoldError):
    """The stream's version is not the one the caller expected; nothing was written."""

    def __init__(self, stream_id: str, expected: Any, actual: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {_describe_expected(expected)}, actual version {actual}"
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventId(AgentfoldError):
    """An event id was reused in a way that is not an exact retry of its original append; nothing was written."""

    def __init__(self, event_id: Any, stream_id: str, reason: str) -> None:
        super().__init__(f"event id {event_id} on stream {stream_id!r}: {reason}")
        self.event_id = event_id
        self.stream_id = stream_id
        self.reason = reason


class StoreUnavailable(AgentfoldError):
    """The backend could not be reached or dropped the connection. Retryable: appends are idempotent."""

    retryable = True


class StoreTimeout(AgentfoldError):
    """A lock, statement or pool wait ran out of time. Retryable: appends are idempotent."""

    retryable = True


class EventsTrimmed(AgentfoldError):
    """A read fetched events that were trimmed before it could load their blobs, so it cannot hand them over
    whole. Retryable: a new read starts after the trimmed events."""

    retryable = True

    def __init__(self, stream_id: str, version: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: the events up to version {version} were trimmed while this read was loading "
            "their blobs; read again"
        )
        self.stream_id = stream_id
        self.version = version


class StoreCorrupted(AgentfoldError):
    """A stored record could not be decoded; the store holds data agentfold did not write."""


class StoreClosed(AgentfoldError):
    """The store was used after `close()`."""


class StoreFull(AgentfoldError):
    """The backend refused a write for lack of space; nothing of the failed append was written."""


class StoreReadOnly(AgentfoldError):
    """The backend refused a write because it is read-only; nothing was written."""


class CapabilityMissing(AgentfoldError):
    """The store's backend lacks the optional capability a call needs (`agentfold.backend`: `WatchingAppends`, say);
    nothing was read or written."""


class StoreNotFound(AgentfoldError):
    """`connect(url, create=False)` found no agentfold store at the URL (no such file, schema or key prefix), or one
    that needs an upgrade it was told not to make. Nothing was created or changed."""


def _describe_expected(expected: Any) -> str:
    return expected.name if hasattr(expected, "name") else repr(expected)


# -- agents and workflows ----------------------------------------------------------------------------------------


class IllegalTransition(AgentfoldError):
    """An event would move an agent along a transition its state machine does not allow; nothing was written."""

    def __init__(self, agent: str, state: str, transition: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"agent {agent!r} in state {state!r} cannot take transition {transition!r}{detail}")
        self.agent = agent
        self.state = state
        self.transition = transition
        self.reason = reason


class NotSerializable(InvalidInput):
    """A workflow input, step result, signal payload or workflow result is not a JSON value.

    `path` points at the offending value, e.g. ``input.args[0].items[2]``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class NonDeterminism(AgentfoldError):
    """Resumed workflow code asked for a different command than the one its history recorded at that point.

    The history is left as it was; the run is suspended until code that matches its history resumes it.
    """

    def __init__(self, workflow_id: str, seq: int, recorded: str, requested: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} at command #{seq}: the history recorded {recorded}, the code now asks for "
            f"{requested}"
        )
        self.workflow_id = workflow_id
        self.seq = seq
        self.recorded = recorded
        self.requested = requested


class StepError(AgentfoldError):
    """A workflow step failed for good (retries exhausted or a non-retryable error).

    Raised inside the workflow, the same way on the first run and on every replay: `error_type` and `message`
    describe the step's last exception.
    """

    def __init__(self, step: str, seq: int, error_type: str, message: str) -> None:
        super().__init__(f"step {step!r} (#{seq}) failed: {error_type}: {message}")
        self.step = step
        self.seq = seq
        self.error_type = error_type
        self.error_message = message


class StepTimeout(AgentfoldError, TimeoutError):
    """One attempt of a step ran longer than the step's timeout and was cancelled."""

    retryable = True


class WaitTimedOut(AgentfoldError, TimeoutError):
    """`ctx.wait_for` reached its timeout before a matching signal arrived; the timeout is a recorded event."""

    def __init__(self, workflow_id: str, name: str) -> None:
        super().__init__(f"workflow {workflow_id!r}: no signal {name!r} arrived before the wait's timeout")
        self.workflow_id = workflow_id
        self.name = name


class WorkflowFailed(AgentfoldError):
    """The run ended with an exception; `error_type` and `error_message` are the stored failure."""

    def __init__(self, workflow_id: str, error_type: str, message: str) -> None:
        super().__init__(f"workflow {workflow_id!r} failed: {error_type}: {message}")
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.error_message = message


class WorkflowCancelled(AgentfoldError):
    """The run was cancelled (`client.cancel`).

    Raised inside the workflow at its next await after the cancel arrived, so its code may catch it to clean up
    (the run ends `Cancelled` however the code ends after that); raised by `client.result` for a cancelled run.
    """

    def __init__(self, workflow_id: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"workflow {workflow_id!r} was cancelled{detail}")
        self.workflow_id = workflow_id
        self.reason = reason


class WorkflowTerminated(AgentfoldError):
    """The run was terminated (`client.terminate`): it stopped at once, without running any more of its code."""

    def __init__(self, workflow_id: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"workflow {workflow_id!r} was terminated{detail}")
        self.workflow_id = workflow_id
        self.reason = reason


class RunControlRefused(IllegalTransition):
    """A cancel, terminate, retry or restart asked of a run whose state forbids it; nothing was written.

    `action` is what was asked, `state` the run's state (``Suspended`` for a suspended run).
    """

    def __init__(self, workflow_id: str, action: str, state: str, reason: str) -> None:
        AgentfoldError.__init__(self, f"cannot {action} workflow {workflow_id!r}: it is {state}; {reason}")
        self.agent = workflow_id
        self.transition = action
        self.reason = reason
        self.workflow_id = workflow_id
        self.action = action
        self.state = state


class WorkflowNotFound(AgentfoldError, LookupError):
    """No run with this workflow id was started in this store."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow with id {workflow_id!r} was started")
        self.workflow_id = workflow_id


class WorkflowIdConflict(AgentfoldError):
    """The workflow id is already used by a run of a different workflow; nothing was written."""

    def __init__(self, workflow_id: str, existing: str, requested: str) -> None:
        super().__init__(f"workflow id {workflow_id!r} already runs workflow {existing!r}, not {requested!r}")
        self.workflow_id = workflow_id
        self.existing = existing
        self.requested = requested


class UnknownWorkflow(InvalidInput):
    """A workflow was named that this runtime does not have registered."""


class InvalidSharedOperation(InvalidInput):
    """An operation on shared state is malformed: bad key, value, amount, timestamp or event shape."""


class SharedTypeMismatch(InvalidInput):
    """A key of a shared stream was used as a different replicated type than its schema or its history says."""


class SharedTypeConflict(AgentfoldError):
    """A key of a shared stream holds operations of several replicated types, written concurrently without a schema.

    The state is still deterministic; reading the key as one type is refused until a schema names its type.
    """

    def __init__(self, key: str, kinds: list[str]) -> None:
        super().__init__(f"shared key {key!r} holds operations of several types: {', '.join(kinds)}")
        self.key = key
        self.kinds = kinds


class NondeterministicResolver(AgentfoldError):
    """A custom conflict resolver gave different results for the same concurrent values (another order, or twice)."""


# -- folds and projections ----------------------------------------------------------------------------------------


class ProjectionError(AgentfoldError):
    """Base class of the errors a fold raises on purpose."""


class InvalidProjection(InvalidInput):
    """A projection is declared wrongly (name, version, snapshot interval, handlers or state type)."""


class UnhandledEvent(ProjectionError):
    """A strict projection met an event type it has no handler for."""

    def __init__(self, projection: str, event: NamedEvent) -> None:
        super().__init__(
            f"projection {projection!r} has no handler for event {event.type!r} at version {event.version} of "
            f"stream {event.stream_id!r}, and it is strict"
        )
        self.projection = projection
        self.stream_id = event.stream_id
        self.version = event.version
        self.event_type = event.type


class HandlerFailed(ProjectionError):
    """A handler raised; the original error is the `__cause__`. Names the event it failed on."""

    def __init__(self, projection: str, event: NamedEvent, error: BaseException) -> None:
        super().__init__(
            f"projection {projection!r} failed on event {event.type!r} at version {event.version} of stream "
            f"{event.stream_id!r}: {type(error).__name__}: {error}"
        )
        self.projection = projection
        self.stream_id = event.stream_id
        self.version = event.version
        self.event_type = event.type


class HistoryTrimmed(ProjectionError):
    """The requested state needs events that were trimmed from the stream, and no usable snapshot covers them."""

    def __init__(self, projection: str, stream_id: str, needed_from: int, available_from: int | None) -> None:
        available = "none are left" if available_from is None else f"the oldest left is version {available_from}"
        super().__init__(
            f"projection {projection!r} needs stream {stream_id!r} from version {needed_from}, but events were "
            f"trimmed ({available}) and no snapshot of this projection version covers them"
        )
        self.projection = projection
        self.stream_id = stream_id
        self.needed_from = needed_from
        self.available_from = available_from


class TrimRefused(ProjectionError):
    """A trim would remove events no snapshot covers; nothing was trimmed."""


class UpcastFailed(AgentfoldError):
    """An upcaster raised or returned something other than a dict; names the event it failed on."""

    def __init__(self, event: NamedEvent, schema_version: int, reason: str) -> None:
        super().__init__(
            f"upcasting event {event.type!r} (schema version {schema_version}) at version {event.version} "
            f"of stream {event.stream_id!r} failed: {reason}"
        )
        self.stream_id = event.stream_id
        self.version = event.version
        self.event_type = event.type
        self.schema_version = schema_version


# -- workers, leases and breakers ---------------------------------------------------------------------------------


class CircuitOpen(AgentfoldError):
    """A step's circuit breaker is open (or its probe is out): the call was not made. Retryable after `until_us`."""

    retryable = True

    def __init__(self, breaker: str, until_us: int) -> None:
        super().__init__(f"circuit breaker {breaker!r} is open; calls fail fast until {until_us} µs since the epoch")
        self.breaker = breaker
        self.until_us = until_us


class LeaseLost(AgentfoldError):
    """Another worker holds the run: this worker was fenced out (or never got it) and stopped running it."""

    def __init__(self, workflow_id: str, owner: str | None) -> None:
        super().__init__(f"workflow {workflow_id!r} is held by worker {owner!r}; this worker stopped running it")
        self.workflow_id = workflow_id
        self.owner = owner


class WorkerIdInUse(AgentfoldError):
    """A worker was started under an id whose earlier start still heartbeats; nothing was written.

    Stop the other worker, start this one under another id, or take the id over (`take_over=True`,
    ``agentfold worker --take-over``): the running one is then fenced out and stops.
    """

    def __init__(self, worker_id: str, incarnation: int, holder: str, heartbeat_age: float) -> None:
        super().__init__(
            f"worker id {worker_id!r} is in use: its incarnation {incarnation} ({holder}) heartbeated "
            f"{heartbeat_age:.1f} s ago; stop that worker, choose another worker id, or take the id over "
            "(--take-over, take_over=True), which fences that worker out"
        )
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.holder = holder
        self.heartbeat_age = heartbeat_age


class WorkerSuperseded(AgentfoldError):
    """A newer start of this worker's id took its runs over: this worker was fenced out and stopped serving."""

    def __init__(self, worker_id: str, incarnation: int, newer: int | None) -> None:
        by = "a newer incarnation" if newer is None else f"incarnation {newer}"
        super().__init__(
            f"worker {worker_id!r} incarnation {incarnation} was superseded by {by} of the same id; "
            "it stopped serving, and its appends to the runs it held are refused"
        )
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.newer = newer


# -- the HTTP API's credentials and limits ------------------------------------------------------------------------


class StreamNotFound(AgentfoldError, LookupError):
    """The stream has no events (it was never written to)."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"stream {stream_id!r} has no events")
        self.stream_id = stream_id


class InvalidToken(AgentfoldError):
    """A request named no token, a malformed one, or one this store never issued."""


class TokenExpired(InvalidToken):
    """The token's expiry time has passed."""


class TokenRevoked(InvalidToken):
    """The token was revoked; it is refused on every process from the next request on."""


class AccessDenied(AgentfoldError):
    """The token is valid but its scope does not cover the stream or operation; nothing was read or written."""

    def __init__(self, message: str, stream_id: str | None = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id


class RateLimited(AgentfoldError):
    """The token made more requests than its rate allows. Retryable after `retry_after` seconds."""

    retryable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTooLarge(InvalidInput):
    """A request body is larger than the API accepts; it was refused before it was parsed."""

    def __init__(self, size: int | None, limit: int) -> None:
        shown = "larger than" if size is None else f"{size} bytes;"
        super().__init__(f"the request body is {shown} the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class CheckpointConflict(AgentfoldError):
    """A checkpoint did not extend the head of its thread: another writer extended it first; nothing was written."""

    def __init__(self, thread_id: str, checkpoint_ns: str, parent_id: str | None, head_id: str | None) -> None:
        where = f"thread {thread_id!r}" + (f" (namespace {checkpoint_ns!r})" if checkpoint_ns else "")
        super().__init__(
            f"{where}: the checkpoint extends {parent_id!r}, but the thread's head is now {head_id!r} "
            "(another writer saved a checkpoint first); nothing was written"
        )
        self.thread_id = thread_id
        self.checkpoint_ns = checkpoint_ns
        self.parent_id = parent_id
        self.head_id = head_id
