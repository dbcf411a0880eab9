"""Running one workflow: the `WorkflowContext` the code sees, and the `WorkflowExecution` that records for it.

Resuming a run means calling the workflow function again from the start. Every command the code issues gets the
next sequence number (synchronously, at call time) and is looked up in the history:

- recorded with an outcome: the recorded result comes back (or the recorded failure is raised), nothing runs;
- recorded without an outcome (a step whose process died between intent and outcome, a pending wait or timer):
  it continues from where it stopped (a step's `reconcile` callback is asked first);
- recorded as a different command: `NonDeterminism`; nothing is appended and the run is suspended;
- not recorded: it runs, recording intent before any effect and the outcome after.

Appends go to the run's own stream at the exact version this execution last saw. Another writer on that stream
(a second worker holding the same run) makes the append fail with `WrongExpectedVersion`, which stops this
execution: history is never forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import time
import types
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, ParamSpec, TypeVar, overload

from agentfold import instrumentation
from agentfold.errors import (
    AgentfoldError,
    CircuitOpen,
    InvalidInput,
    NonDeterminism,
    StepError,
    StepTimeout,
    WaitTimedOut,
    WorkflowCancelled,
    WorkflowIdConflict,
    WorkflowNotFound,
    WrongExpectedVersion,
)
from agentfold.events import NewEvent, RecordedEvent
from agentfold.instrumentation import RunStart
from agentfold.runtime import history as h
from agentfold.runtime.breaker import BreakerBoard, Permit, check_breaker_name
from agentfold.runtime.client import WorkflowClient
from agentfold.runtime.history import CommandRecord, History, load_history
from agentfold.runtime.registry import WorkflowDefinition, WorkflowRegistry
from agentfold.runtime.retry import RetryPolicy, seconds
from agentfold.runtime.serialization import JsonValue, declared_types
from agentfold.runtime.statemachine import DEFAULT_LIFECYCLE
from agentfold.store import EventStore
from agentfold.wakeup import wait_event

logger = logging.getLogger("agentfold.runtime")

P = ParamSpec("P")
R = TypeVar("R")

APPEND_RETRIES: Final = 5
SIGNAL_RECHECK_SECONDS: Final = 30.0
"""A waiting run re-reads its inbox at least this often, even if no notification reached it."""


class _NotApplied:
    """The type of `NOT_APPLIED`."""

    _instance: _NotApplied | None = None

    def __new__(cls) -> _NotApplied:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_APPLIED"


NOT_APPLIED: Final = _NotApplied()
"""What a `reconcile` callback returns when the provider never applied the effect: the step runs again."""


class RunFinished(Exception):
    """Raised in a command still running after its run was recorded as finished."""


class Drained(BaseException):
    """Raised instead of recording a new intent once the worker is shutting down: the run stops between commands.

    A `BaseException`, like cancellation, so workflow code catching `Exception` cannot swallow it.
    """


INTENT_TYPES: Final = frozenset({h.STEP_STARTED, h.WAIT_STARTED, h.TIMER_STARTED})


def idempotency_key(workflow_id: str, seq: int, name: str) -> str:
    """The key a step passes to external APIs: the same for every attempt and every resume of that step."""
    return f"{workflow_id}/{seq}/{name}"


def _now_us() -> int:
    return time.time_ns() // 1000


def _error_data(error: BaseException) -> dict[str, Any]:
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ in ("builtins", "agentfold.errors")
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {"type": name, "message": str(error)}


def _opens_a_command(batch: Sequence[NewEvent]) -> bool:
    """Whether `batch` records an intent without its outcome: a command that would start now (a repeatable step's
    start written with its result is a command already done)."""
    started = {event.data["seq"] for event in batch if event.type in INTENT_TYPES}
    ended = {event.data["seq"] for event in batch if event.type in (h.STEP_COMPLETED, h.STEP_FAILED)}
    return bool(started - ended)


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    """Whether `function` takes `keyword`; asked for every step, so a plain function's answer is kept per code
    object (closures made anew for each call share it)."""
    plain = function.__func__ if isinstance(function, types.MethodType) else function
    if not isinstance(plain, types.FunctionType):  # a callable object: its class's __call__ decides
        plain = type(function).__call__
    if isinstance(plain, types.FunctionType) and not hasattr(plain, "__wrapped__"):
        return _code_accepts_keyword(plain.__code__, keyword)
    return _signature_accepts_keyword(function, keyword)


@functools.lru_cache(maxsize=1024)
def _code_accepts_keyword(code: types.CodeType, keyword: str) -> bool:
    keyword_only = code.co_kwonlyargcount
    names = code.co_varnames[code.co_posonlyargcount : code.co_argcount + keyword_only]
    return keyword in names or bool(code.co_flags & inspect.CO_VARKEYWORDS)


def _signature_accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


async def _call(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Await an async function; run a plain function in a thread so it cannot block other runs."""
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__):
        return await function(*args, **kwargs)
    result = await asyncio.to_thread(functools.partial(function, *args, **kwargs))
    if inspect.isawaitable(result):
        return await result
    return result


class WorkflowExecution:
    """One attempt at running a workflow to its end, in this process, from its recorded history."""

    def __init__(
        self,
        runtime: WorkflowRegistry,
        store: EventStore,
        definition: WorkflowDefinition,
        history: History,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.definition = definition
        self.history = history
        self.workflow_id = history.workflow_id
        self.stream_id = h.workflow_stream(self.workflow_id)
        self._lock = asyncio.Lock()
        self._pending: list[NewEvent] = []
        self._next_seq = 1
        self._fatal: BaseException | None = None
        self._patch_decisions: dict[str, bool] = {}
        self._signal_arrived = asyncio.Event()
        self._inbox: list[RecordedEvent] = []
        self._inbox_version = 0
        self.worker_id: str | None = None
        """The worker running this execution; its first append names it in the metadata (the claim)."""
        self.incarnation: int | None = None
        """Which start of that worker's id runs it; named beside the worker."""
        self._claim_recorded = True
        self.draining = False
        """Set when the worker stops: no new intent is recorded; commands already started finish."""
        self.steps_in_flight = 0
        """Step attempts whose intent is recorded and whose function is running: a stopping worker lets them end."""
        self.breakers: BreakerBoard | None = None
        """The worker's `BreakerBoard`, shared by its executions (one is made on first use otherwise)."""
        self.before_intent: Callable[[], Awaitable[None]] | None = None
        """Awaited before an intent is recorded: the worker checks there that it still holds its id (after a pause,
        say), and raises if a newer start of the id took its runs over."""
        self._control_arrived = asyncio.Event()
        """Set when another process may have appended run control (a cancel) to this run's stream."""
        self._cancel_boundary: int | None = None
        """Once the cancel is delivered: commands numbered below this raise `WorkflowCancelled` instead of running;
        those the code issues afterwards (its clean-up) run as usual."""
        self.context = WorkflowContext(self)

    @classmethod
    async def load(cls, runtime: WorkflowRegistry, store: EventStore, workflow_id: str) -> WorkflowExecution:
        """Fold the run's stream and prepare to resume it."""
        history = await load_history(store, workflow_id)
        definition = runtime.definition(history.workflow)
        return cls(runtime, store, definition, history)

    def claim(
        self,
        worker_id: str,
        previous: str | None = None,
        previous_state: str = "",
        incarnation: int | None = None,
        previous_incarnation: int | None = None,
    ) -> None:
        """Run as `worker_id` (its start `incarnation`): the first append names it; taking over from `previous` (or
        from an earlier incarnation of the same id) also records `WorkflowClaimed`.

        The claim is written with the execution's next append (or by `flush`), at the exact expected version, so a
        previous owner still running is fenced out: its next append fails with `WrongExpectedVersion`.
        """
        self.worker_id = worker_id
        self.incarnation = incarnation
        self._claim_recorded = (self.history.owner, self.history.owner_incarnation) == (worker_id, incarnation)
        if previous is not None and (previous != worker_id or previous_incarnation != incarnation):
            data: dict[str, Any] = {"worker": worker_id, "previous": previous, "previous_state": previous_state}
            if incarnation is not None:
                data.update(incarnation=incarnation, previous_incarnation=previous_incarnation)
            self._pending.insert(0, NewEvent(h.WORKFLOW_CLAIMED, data))

    async def flush(self) -> None:
        """Append what is pending (a claim, recorded values) now, before the run blocks."""
        async with self._lock:
            if (self._pending or not self._claim_recorded) and self.history.finished is None:
                await self._record_locked([])

    @property
    def idle(self) -> bool:
        """No step function is running and no append is in progress: stopping the run now loses nothing."""
        return self.steps_in_flight == 0 and not self._lock.locked()

    def notify_signal(self) -> None:
        """A signal may have arrived in the inbox: waiting commands re-read it."""
        self._signal_arrived.set()

    def notify_control(self) -> None:
        """A cancel may have been appended to the run's stream: blocked commands read it and stop."""
        self._control_arrived.set()
        self._signal_arrived.set()

    # -- cancellation -------------------------------------------------------------------------------------------

    def _cancel_due(self, seq: int) -> bool:
        """Whether command `seq`, which has no recorded outcome, raises `WorkflowCancelled` instead of running.

        The first such command after the cancel is in the history gets it; so does every command issued before it
        (steps passed to one `asyncio.gather`). Replay reaches the same command: every command before it has a
        recorded outcome, and the first one without is where the cancel was delivered.
        """
        if self.history.cancel_requested is None:
            return False
        if self._cancel_boundary is None:
            self._cancel_boundary = self._next_seq
            return True
        return seq < self._cancel_boundary

    def _cancelled_command(self, events: Sequence[NewEvent]) -> int | None:
        """The sequence number of the command whose intent is in `events`, if the cancel now stops it."""
        for event in events:
            if event.type in INTENT_TYPES and self._cancel_due(int(event.data["seq"])):
                return int(event.data["seq"])
        return None

    def _cancelled(self) -> WorkflowCancelled:
        requested = self.history.cancel_requested or {}
        return WorkflowCancelled(self.workflow_id, str(requested.get("reason", "")))

    async def _absorb_control_events(self) -> bool:
        """Fold what others appended since this execution's last append, if it is all run control: True.

        False, folding nothing, when anything else is there: another worker claimed the run, or it was terminated
        or restarted; this execution is then stale and must stop.
        """
        events = [event async for event in self.store.read_stream(self.stream_id, self.history.version)]
        if not events or any(event.type not in h.CONTROL_TYPES for event in events):
            return False
        for event in events:
            self.history.apply_recorded(event)
        self.history.version = events[-1].version
        return True

    async def _catch_up(self) -> None:
        """Read run control appended by others (after `notify_control`); `WrongExpectedVersion` if we are stale."""
        if not self._control_arrived.is_set():
            return
        self._control_arrived.clear()
        async with self._lock:
            if not await self._absorb_control_events():
                actual = await self.store.stream_version(self.stream_id)
                if actual != self.history.version:
                    self._fatal = WrongExpectedVersion(self.stream_id, self.history.version, actual)
                    raise self._fatal

    # -- the run ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run (or replay) the workflow to its end and record the result or failure.

        Raises `NonDeterminism` (after appending `WorkflowSuspended`) and store errors (after appending nothing
        more); in both cases the run stays unfinished, to be resumed later.
        """
        if self.history.finished is not None:
            return
        observer = instrumentation.observer
        if observer is None:
            await self._run_unobserved()
            return
        history = self.history
        start = RunStart(
            history.workflow,
            self.workflow_id,
            history.attempt,
            self.worker_id,
            history.start_trace,
            history.written_trace,
            history.executed,
        )
        with observer.run(start):
            try:
                await self._run_unobserved()
            finally:
                if history.finished is not None:
                    error = history.finished.get("error") if history.finished_type == h.WORKFLOW_FAILED else None
                    observer.run_finished(history.finished_type, str(error["type"]) if error else None)

    async def _run_unobserved(self) -> None:
        try:
            await self._run_to_end()
        except NonDeterminism as error:
            if self.history.cancel_requested is not None:
                # Code that no longer matches its history cannot clean up: the cancel ends the run as it stands.
                self._fatal = None
                self._pending.clear()
                await self._finish_cancelled(error)
                return
            await self.suspend(error)
            raise

    async def _run_to_end(self) -> None:
        serializer = self.runtime.serializer
        try:
            args = self.definition.decode_input(self.history.input, serializer)
            result = await self.definition.function(self.context, *args)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # A store error or a determinism failure may have been caught and replaced by the workflow's own code;
            # it still ends this execution without recording a failure.
            self._raise_if_fatal()
            if self._cancel_boundary is not None:
                await self._finish_cancelled(None if isinstance(error, WorkflowCancelled) else error)
            else:
                await self._finish(h.WORKFLOW_FAILED, {"error": _error_data(error)})
            return
        self._raise_if_fatal()
        if self._cancel_boundary is not None:
            await self._finish_cancelled(None)
            return
        leftover = self._first_unrequested()
        if leftover is not None:
            self._fail_nondeterministic(
                leftover.seq, h.describe(leftover.kind, leftover.name), "the workflow to return"
            )
            self._raise_if_fatal()
        try:
            encoded = serializer.to_json(result, "result")
        except InvalidInput as error:
            await self._finish(h.WORKFLOW_FAILED, {"error": _error_data(error)})
            return
        await self._finish(h.WORKFLOW_COMPLETED, {"result": encoded})

    async def _finish_cancelled(self, error: BaseException | None) -> None:
        """Record that the cancel ended the run; `error` is how its clean-up failed, if it did."""
        requested = self.history.cancel_requested or {}
        data: dict[str, Any] = {"reason": requested.get("reason", "")}
        if error is not None:
            data["error"] = _error_data(error)
        await self._record([NewEvent(h.WORKFLOW_CANCELLED, data)])

    async def _finish(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            await self._record([NewEvent(event_type, data)])
        except InvalidInput as error:  # e.g. a result larger than the store's event size limit
            await self._record([NewEvent(h.WORKFLOW_FAILED, {"error": _error_data(error)})])

    def _first_unrequested(self) -> CommandRecord | None:
        for seq in range(self._next_seq, self.history.max_seq + 1):
            record = self.history.commands.get(seq)
            if record is not None:
                return record
        return None

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _fail_nondeterministic(self, seq: int, recorded: str, requested: str) -> None:
        if self._fatal is None:
            self._fatal = NonDeterminism(self.workflow_id, seq, recorded, requested)

    async def suspend(self, error: NonDeterminism) -> None:
        """Record that the run stopped because its code no longer matches its history."""
        data = {
            "error": _error_data(error),
            "seq": error.seq,
            "recorded": error.recorded,
            "requested": error.requested,
        }
        self._fatal = None
        self._pending.clear()
        await self._record([NewEvent(h.WORKFLOW_SUSPENDED, data)])

    # -- recording ------------------------------------------------------------------------------------------------

    async def _record(self, events: list[NewEvent]) -> None:
        async with self._lock:
            await self._record_locked(events)

    async def _record_locked(self, events: list[NewEvent]) -> None:
        """Append pending records and `events` in one write at the exact expected version."""
        self._raise_if_fatal()
        if self.history.finished is not None:
            # A step left running by `asyncio.gather` after another one failed the run: its outcome no longer
            # matters and the finished stream takes no more events.
            raise RunFinished(f"workflow {self.workflow_id!r} has already finished; nothing more is recorded")
        batch = [*self._pending, *events]
        if not batch and self._claim_recorded:
            return
        intent = any(event.type in INTENT_TYPES for event in batch)
        if self.draining and _opens_a_command(batch):
            raise Drained(f"workflow {self.workflow_id!r}: the worker is stopping; no new command is started")
        if intent and self.before_intent is not None:
            try:
                await self.before_intent()
            except Exception as error:
                self._fatal = error  # not the workflow's failure: this execution stops, the run stays unfinished
                raise
        if not self._claim_recorded and self.worker_id is not None:
            if not batch:
                claimed: dict[str, Any] = {"worker": self.worker_id, "previous": None}
                if self.incarnation is not None:
                    claimed["incarnation"] = self.incarnation
                batch = [NewEvent(h.WORKFLOW_CLAIMED, claimed)]
            first = batch[0]
            metadata = {**(first.metadata or {}), h.OWNER_KEY: self.worker_id}
            if self.incarnation is not None:
                metadata[h.INCARNATION_KEY] = self.incarnation
            batch[0] = NewEvent(first.type, first.data, metadata, first.id)
        state = self.history.state
        for event in batch:
            state = DEFAULT_LIFECYCLE.next_state(state, event.type, event.data, self.workflow_id)
        for hook in self.runtime.hooks:
            hook.before_append(self.workflow_id, batch)
        for retry in range(APPEND_RETRIES):
            try:
                result = await self.store.append(self.stream_id, batch, expected_version=self.history.version)
                break
            except InvalidInput:
                raise
            except WrongExpectedVersion as error:
                # A cancel appended by a client moves the stream on without taking the run: fold it and append
                # again. Anything else (another worker's claim, a termination) means this execution is stale.
                if retry < APPEND_RETRIES - 1 and await self._absorb_control_events():
                    cancelled = self._cancelled_command(events)
                    if cancelled is None:
                        continue
                    # The cancel came before this command's intent: the command is not started (as a replay,
                    # which finds no record of it, will decide too); what else was pending is still recorded.
                    remaining = [event for event in events if event.data.get("seq") != cancelled]
                    if self._pending or remaining:
                        await self._record_locked(remaining)
                    raise self._cancelled() from None
                self._fatal = error
                raise
            except AgentfoldError as error:
                # Retrying the same events is safe: their ids make a repeated append a no-op.
                if error.retryable and retry < APPEND_RETRIES - 1:
                    await asyncio.sleep(0.05 * 2**retry)
                    continue
                self._fatal = error
                raise
        self._pending.clear()
        for event in batch:
            self.history.apply(event.type, event.data)
        self.history.version = result.version
        if not self._claim_recorded:
            self._claim_recorded = True
            self.history.owner = self.worker_id
            self.history.owner_incarnation = self.incarnation
        for hook in self.runtime.hooks:
            hook.after_append(self.workflow_id, batch, result)

    def _take_seq(self, kind: str, name: str) -> tuple[int, CommandRecord | None]:
        """The next sequence number, checked against what the history recorded there."""
        self._raise_if_fatal()
        seq = self._next_seq
        self._next_seq += 1
        record = self.history.commands.get(seq)
        if record is not None and (record.kind, record.name) != (kind, name):
            self._fail_nondeterministic(seq, h.describe(record.kind, record.name), h.describe(kind, name))
            self._raise_if_fatal()
        return seq, record

    # -- steps ----------------------------------------------------------------------------------------------------

    async def run_step(
        self,
        seq: int,
        record: CommandRecord | None,
        name: str,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        reconcile: Callable[..., Any] | None,
        policy: RetryPolicy,
        timeout: float | None,
        breaker: str | None = None,
        repeatable: bool = False,
        batched: bool = False,
    ) -> Any:
        serializer = self.runtime.serializer
        result_type = declared_types(function).get("return")
        key = idempotency_key(self.workflow_id, seq, name)
        attempt = 0
        failures = 0
        prefix: list[NewEvent] = []
        if record is not None:
            if record.outcome_type == h.STEP_COMPLETED:
                assert record.outcome is not None
                return serializer.from_json(record.outcome["result"], result_type)
            if record.outcome_type == h.STEP_FAILED:
                assert record.outcome is not None
                raise _step_error(name, seq, record.outcome)
            attempt, failures = record.attempt, record.failures
            if self._cancel_due(seq):
                raise self._cancelled()
            if record.in_doubt and reconcile is not None:
                outcome = await self._reconcile(seq, name, attempt, key, reconcile, args, kwargs, policy)
                if not isinstance(outcome, _NotApplied):
                    return serializer.from_json(outcome, result_type)
                prefix.append(
                    NewEvent(h.STEP_RECONCILED, {"seq": seq, "name": name, "attempt": attempt, "applied": False})
                )
            elif record.retry_at_us is not None:
                await self._block(max(0.0, (record.retry_at_us - _now_us()) / 1e6))
        call_kwargs = dict(kwargs)
        if _accepts_keyword(function, "idempotency_key"):
            call_kwargs["idempotency_key"] = key
        circuit = None if breaker is None else self._breaker_board().get(breaker)
        while True:
            if self._cancel_due(seq):
                if prefix:
                    await self._record(prefix)
                raise self._cancelled()
            attempt += 1
            started = NewEvent(h.STEP_STARTED, {"seq": seq, "name": name, "attempt": attempt, "idempotency_key": key})
            error: BaseException | None = None
            permit: Permit | None = None
            if circuit is not None:
                try:
                    permit = await circuit.acquire(key)
                except CircuitOpen as refused:
                    error = refused
                    prefix.append(started)  # recorded with its failure: the attempt made no call
            if error is None:
                if repeatable:
                    # The run's claim is its fence: recorded before the call, so a worker racing for a new run
                    # loses before calling anything rather than after.
                    if not self._claim_recorded:
                        await self.flush()
                    prefix.append(started)  # recorded with the outcome, in one append
                else:
                    await self._record([*prefix, started])
                    prefix = []
                self.steps_in_flight += 1
                try:
                    observer = instrumentation.observer
                    attempt_observed = (
                        contextlib.nullcontext()
                        if observer is None
                        else observer.step(self.definition.name, self.workflow_id, name, seq, attempt, key)
                    )
                    try:
                        with attempt_observed:
                            async with asyncio.timeout(timeout) as deadline:
                                value = await _call(function, args, call_kwargs)
                    except asyncio.CancelledError:
                        raise
                    except Exception as raised:
                        error = raised
                        if isinstance(raised, TimeoutError) and deadline.expired():
                            error = StepTimeout(f"step {name!r} attempt {attempt} ran longer than {timeout} s")
                    if circuit is not None and permit is not None:
                        if error is None:
                            await circuit.succeeded(permit)
                        else:
                            await circuit.failed(permit, error, key)
                    if error is None:
                        try:
                            encoded = serializer.to_json(value, f"step {name!r} result")
                            completed = {"seq": seq, "name": name, "attempt": attempt, "result": encoded}
                            if batched:  # written with the run's next append
                                self._pending.extend([*prefix, NewEvent(h.STEP_COMPLETED, completed)])
                            else:
                                await self._record([*prefix, NewEvent(h.STEP_COMPLETED, completed)])
                        except InvalidInput as refused:
                            if prefix:  # a repeatable step's start, still unrecorded
                                await self._record(prefix)
                            raise await self._fail_step(seq, name, attempt, refused) from refused
                        return serializer.from_json(encoded, result_type)
                finally:
                    self.steps_in_flight -= 1
            failures += 1
            failed: dict[str, Any] = {"seq": seq, "name": name, "attempt": attempt, "error": _error_data(error)}
            if breaker is not None:
                failed["breaker"] = breaker
            if not policy.should_retry(error, failures):
                failed["final"] = True
                await self._record([*prefix, NewEvent(h.STEP_FAILED, failed)])
                raise _step_error(name, seq, failed) from error
            delay = policy.backoff(failures)
            failed["final"] = False
            failed["retry_at_us"] = _now_us() + int(delay * 1e6)
            await self._record([*prefix, NewEvent(h.STEP_FAILED, failed)])
            prefix = []
            await self._block(delay)

    async def _fail_step(self, seq: int, name: str, attempt: int, error: BaseException, **extra: Any) -> StepError:
        """Record that the step failed for good with `error`; the `StepError` to raise."""
        failed = {"seq": seq, "name": name, "attempt": attempt, "final": True, **extra, "error": _error_data(error)}
        await self._record([NewEvent(h.STEP_FAILED, failed)])
        return _step_error(name, seq, failed)

    def _breaker_board(self) -> BreakerBoard:
        if self.breakers is None:
            self.breakers = BreakerBoard(self.store, self.runtime.breakers)
        return self.breakers

    async def _reconcile(
        self,
        seq: int,
        name: str,
        attempt: int,
        key: str,
        reconcile: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: RetryPolicy,
    ) -> JsonValue | _NotApplied:
        """Ask `reconcile` what became of the in-doubt attempt; record its answer when the effect was applied.

        The callback only reads (the provider's status for the key), so failed calls are repeated, unrecorded, per
        the step's retry policy; if it keeps failing the step fails for good rather than risk a second effect.
        """
        calls = 0
        while True:
            calls += 1
            try:
                outcome = await _call(reconcile, (key, *args), kwargs)
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if calls < policy.max_attempts and not isinstance(error, policy.non_retryable):
                    await asyncio.sleep(policy.backoff(calls))
                    continue
                raise await self._fail_step(seq, name, attempt, error, reconcile=True) from error
        observer = instrumentation.observer
        if observer is not None:
            applied = not isinstance(outcome, _NotApplied)
            observer.happened("reconcile", {"gen_ai.workflow.name": self.definition.name, "agentfold.applied": applied})
        if isinstance(outcome, _NotApplied):
            return outcome
        try:
            encoded = self.runtime.serializer.to_json(outcome, f"step {name!r} reconciled result")
        except InvalidInput as refused:
            raise await self._fail_step(seq, name, attempt, refused) from refused
        completed = {"seq": seq, "name": name, "attempt": attempt, "result": encoded, "reconciled": True}
        await self._record([NewEvent(h.STEP_COMPLETED, completed)])
        return encoded

    # -- waits and timers -----------------------------------------------------------------------------------------

    async def wait_for(
        self, seq: int, record: CommandRecord | None, name: str, timeout: float | None, as_type: Any
    ) -> Any:
        serializer = self.runtime.serializer
        if record is not None and record.outcome is not None:
            if record.outcome_type == h.SIGNAL_RECEIVED:
                return serializer.from_json(record.outcome["payload"], as_type)
            raise WaitTimedOut(self.workflow_id, name)
        if self._cancel_due(seq):
            raise self._cancelled()
        if record is None:
            deadline_us = None if timeout is None else _now_us() + int(timeout * 1e6)
            await self._record([NewEvent(h.WAIT_STARTED, {"seq": seq, "name": name, "deadline_us": deadline_us})])
        else:
            deadline_us = record.deadline_us
        while True:
            self._signal_arrived.clear()
            await self._catch_up()
            if self._cancel_due(seq):
                raise self._cancelled()
            async with self._lock:
                signal = await self._take_signal(name, deadline_us)
                if signal is not None:
                    received = {
                        "seq": seq,
                        "name": name,
                        "payload": signal.data.get("payload"),
                        "signal_version": signal.version,
                    }
                    await self._record_locked([NewEvent(h.SIGNAL_RECEIVED, received)])
                    return serializer.from_json(received["payload"], as_type)
                if deadline_us is not None and _now_us() >= deadline_us:
                    await self._record_locked([NewEvent(h.WAIT_TIMED_OUT, {"seq": seq, "name": name})])
                    raise WaitTimedOut(self.workflow_id, name)
            pause = SIGNAL_RECHECK_SECONDS
            if deadline_us is not None:
                pause = min(pause, max(0.0, (deadline_us - _now_us()) / 1e6))
            await self.flush()
            await wait_event(self._signal_arrived, pause)

    async def _take_signal(self, name: str, deadline_us: int | None) -> RecordedEvent | None:
        """The oldest unconsumed signal `name` in the inbox that arrived before the deadline."""
        try:
            async for page in self.store.read_stream_pages(h.signal_stream(self.workflow_id), self._inbox_version):
                self._inbox.extend(event for event in page if event.type == h.SIGNAL_SENT)
                self._inbox_version = page[-1].version
        except AgentfoldError as error:
            # A store failure is not the workflow's failure: it ends this execution, to be resumed later.
            self._fatal = error
            raise
        for event in self._inbox:
            if (
                event.data.get("name") == name
                and event.version not in self.history.consumed_signals
                and (deadline_us is None or event.recorded_at_us <= deadline_us)
            ):
                return event
        return None

    async def sleep(self, seq: int, record: CommandRecord | None, duration: float) -> None:
        if record is not None and record.outcome is not None:
            return
        if self._cancel_due(seq):
            raise self._cancelled()
        if record is None:
            fire_at_us = _now_us() + int(duration * 1e6)
            await self._record([NewEvent(h.TIMER_STARTED, {"seq": seq, "deadline_us": fire_at_us})])
        else:
            fire_at_us = record.deadline_us or 0
        await self._block(max(0.0, (fire_at_us - _now_us()) / 1e6))
        if self._cancel_due(seq):
            raise self._cancelled()
        await self._record([NewEvent(h.TIMER_FIRED, {"seq": seq})])

    async def _block(self, duration: float) -> None:
        """Sleep with nothing in flight; the claim is written first, so other workers see who holds the run.

        Returns early when a cancel arrives (the caller checks `_cancel_due`).
        """
        if duration <= 0:
            return
        await self.flush()
        deadline = time.monotonic() + duration
        while self.history.cancel_requested is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await wait_event(self._control_arrived, remaining)
            await self._catch_up()

    # -- recorded values ------------------------------------------------------------------------------------------

    def recorded_now(self) -> datetime:
        seq, record = self._take_seq(h.NOW, h.NOW)
        if record is not None:
            assert record.outcome is not None
            value_us: int = record.outcome["now_us"]
        else:
            value_us = _now_us()
            self._pending.append(NewEvent(h.TIME_RECORDED, {"seq": seq, "now_us": value_us}))
        return datetime.fromtimestamp(value_us / 1e6, UTC)

    def recorded_random(self) -> float:
        seq, record = self._take_seq(h.RANDOM, h.RANDOM)
        if record is not None:
            assert record.outcome is not None
            value: float = record.outcome["value"]
            return value
        value = random.random()
        self._pending.append(NewEvent(h.RANDOM_RECORDED, {"seq": seq, "value": value}))
        return value

    def patched(self, patch_id: str) -> bool:
        if not isinstance(patch_id, str) or not patch_id:
            raise InvalidInput(f"a patch id must be a non-empty str, got {patch_id!r}")
        self._raise_if_fatal()
        decided = self._patch_decisions.get(patch_id)
        if decided is not None:
            return decided
        if patch_id in self.history.patches:
            decided = True
        elif self.history.max_seq >= self._next_seq:
            # The history already holds commands from this point on: the run got here on code without the patch.
            decided = False
        else:
            decided = True
            self._pending.append(NewEvent(h.PATCH_APPLIED, {"patch": patch_id, "before_seq": self._next_seq}))
        self._patch_decisions[patch_id] = decided
        return decided


_HAND_OFF_RETRY: Final = RetryPolicy(
    max_attempts=5, initial_backoff=0.1, non_retryable=(WorkflowIdConflict, WorkflowNotFound, InvalidInput)
)
_CHILD_RESULT_RETRY: Final = RetryPolicy(max_attempts=1)


def _step_error(name: str, seq: int, data: dict[str, Any]) -> StepError:
    error = data.get("error", {})
    return StepError(name, seq, str(error.get("type", "Exception")), str(error.get("message", "")))


class WorkflowContext:
    """What a workflow function receives as `ctx`: every way it may touch the world, each one recorded."""

    def __init__(self, execution: WorkflowExecution) -> None:
        self._execution = execution

    @property
    def workflow_id(self) -> str:
        """The id this run was started with."""
        return self._execution.workflow_id

    @property
    def version(self) -> Any:
        """The code version the run was started with (`@runtime.workflow(version=...)`), recorded at start."""
        return self._execution.history.code_version

    @overload
    def step(
        self, name: str, function: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Awaitable[R]: ...

    @overload
    def step(self, name: str, function: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]: ...

    # With options, the arguments are not checked against `function` (they cannot share a ParamSpec) and the result
    # is Any: each overload below needs one option named, so calls without options get the checked ones above.
    @overload
    def step(
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        reconcile: Callable[..., Any],
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
        breaker: str | None = None,
        **kwargs: Any,
    ) -> Awaitable[Any]: ...

    @overload
    def step(
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        retry: RetryPolicy | None,
        timeout: timedelta | float | None = None,
        breaker: str | None = None,
        repeatable: bool = False,
        batched: bool = False,
        **kwargs: Any,
    ) -> Awaitable[Any]: ...

    @overload
    def step(
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        timeout: timedelta | float | None,
        breaker: str | None = None,
        repeatable: bool = False,
        batched: bool = False,
        **kwargs: Any,
    ) -> Awaitable[Any]: ...

    @overload
    def step(
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        breaker: str | None,
        repeatable: bool = False,
        batched: bool = False,
        **kwargs: Any,
    ) -> Awaitable[Any]: ...

    @overload
    def step(
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        repeatable: bool,
        batched: bool = False,
        **kwargs: Any,
    ) -> Awaitable[Any]: ...

    def step(  # type: ignore[misc]  # options are taken out of what P.kwargs would pass on
        self,
        name: str,
        function: Callable[..., Any],
        /,
        *args: Any,
        reconcile: Callable[..., Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
        breaker: str | None = None,
        repeatable: bool = False,
        batched: bool = False,
        **kwargs: Any,
    ) -> Awaitable[Any]:
        """Run `function(*args, **kwargs)` once for this run, recording intent before and the outcome after.

        The sequence number is taken now, when `step` is called, so steps passed to `asyncio.gather` are numbered
        in call order. `function` gets ``idempotency_key=`` when it accepts that keyword: pass it on to the external
        API. `reconcile(idempotency_key, *args, **kwargs)` is called instead of running again when a previous
        process recorded the intent but not the outcome; it returns the step's result if the effect was applied, or
        `NOT_APPLIED`. Failed attempts are retried per `retry` (default: the runtime's policy); `timeout` (seconds
        or timedelta) cancels an attempt that runs longer and records it as failed with `StepTimeout`; without it
        the runtime's `step_timeout` applies. `breaker` names the circuit breaker guarding the dependency
        (`agentfold.runtime.breaker`): while it is open an attempt fails fast with `CircuitOpen`, recorded like any
        failed attempt, and `retry` decides what follows. Raises `StepError` when the step fails for good.

        `repeatable=True` is for a function that may run again after a crash without harm (a read, a computation, a
        model call whose only cost is its price): its start and its outcome are recorded together when it ends, one
        append instead of two, and a crash while it runs leaves nothing, so a resumed run calls it again. A step with
        an effect keeps the default, and `reconcile` (which answers for an intent left in doubt) refuses it. With
        `batched=True` as well, a repeatable step's record joins the run's next append (at the latest when the run
        waits, sleeps or ends) instead of taking one of its own: quick pure steps in a row cost no append each, and a
        crash before that append runs them again.

        Typed: without options, mypy checks `args` and `kwargs` against `function`'s parameters and the await
        returns `function`'s return type. A function that takes the key declares it with a default
        (``idempotency_key: str = ""``) so callers need not pass it; the runtime always does.
        """
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"a step name must be a non-empty str, got {name!r}")
        if not callable(function):
            raise InvalidInput(f"step {name!r}: {function!r} is not callable")
        if reconcile is not None and not callable(reconcile):
            raise InvalidInput(f"step {name!r}: reconcile {reconcile!r} is not callable")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInput(f"step {name!r}: retry must be a RetryPolicy, got {type(retry).__name__}")
        if not isinstance(repeatable, bool):
            raise InvalidInput(f"step {name!r}: repeatable must be a bool, got {type(repeatable).__name__}")
        if not isinstance(batched, bool):
            raise InvalidInput(f"step {name!r}: batched must be a bool, got {type(batched).__name__}")
        if batched and not repeatable:
            raise InvalidInput(
                f"step {name!r}: batched=True needs repeatable=True (a step with an effect is recorded first)"
            )
        if repeatable and reconcile is not None:
            raise InvalidInput(
                f"step {name!r}: a repeatable step records no intent, so there is nothing for reconcile to answer"
            )
        runtime = self._execution.runtime
        chosen = runtime.step_timeout if timeout is None else timeout
        limit = None if chosen is None else seconds(chosen, f"step {name!r} timeout")
        if breaker is not None:
            check_breaker_name(breaker)
        policy = retry or runtime.default_retry
        seq, record = self._execution._take_seq(h.STEP, name)
        return self._execution.run_step(
            seq, record, name, function, args, kwargs, reconcile, policy, limit, breaker, repeatable, batched
        )

    def wait_for(self, name: str, timeout: timedelta | float | None = None, *, as_type: Any = None) -> Awaitable[Any]:
        """Wait, durably, for the signal `name` (sent with `client.signal`); return its payload.

        Like every command, it takes its sequence number when called, so waits passed to `asyncio.gather` are
        numbered in argument order. The run is `AwaitingInput` meanwhile. Signals sent before the wait began are
        kept and delivered in the order they were sent, each to one wait. Raises `WaitTimedOut` (a recorded
        outcome) when `timeout` passes first; a signal sent before the deadline still wins, even if read later.
        """
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"a signal name must be a non-empty str, got {name!r}")
        limit = None if timeout is None else seconds(timeout, f"wait_for {name!r} timeout")
        seq, record = self._execution._take_seq(h.WAIT, name)
        return self._execution.wait_for(seq, record, name, limit, as_type)

    def sleep(self, duration: timedelta | float) -> Awaitable[None]:
        """A durable timer: the wake-up time is recorded, so a resumed run sleeps only what is left."""
        length = seconds(duration, "sleep duration")
        seq, record = self._execution._take_seq(h.SLEEP, h.SLEEP)
        return self._execution.sleep(seq, record, length)

    # -- hand-offs --------------------------------------------------------------------------------------------------

    def start_child(
        self, workflow: Callable[..., Any] | str, *args: Any, workflow_id: str | None = None
    ) -> Awaitable[str]:
        """Start a child run of `workflow` with `args`, once, and return its workflow id.

        `workflow` is a decorated function or a name; a name this runtime does not register starts a workflow
        registered on another service's runtime, without its code (a worker there runs it; if none serves the
        name, the child run fails with `UnknownWorkflow`, not this run). Recorded as the step ``child:<name>``.
        The child's id is `workflow_id` when given (e.g. ``f"{ctx.workflow_id}/writer"``, an id people and other
        agents can know in advance), else that step's idempotency key (``<parent id>/<seq>/child:<name>``); either
        way a resumed parent finds the same child instead of starting another. Await its result with
        `child_result`.
        """
        execution = self._execution
        if isinstance(workflow, str) and not execution.runtime.knows(workflow):
            target: Callable[..., Any] | str = h.check_workflow_name(workflow)
            name = workflow
        else:
            definition = execution.runtime.definition(workflow)
            target, name = definition.function, definition.name
        chosen_id = None if workflow_id is None else h.check_workflow_id(workflow_id)
        client = WorkflowClient(execution.runtime, execution.store)

        async def start_child_run(*inputs: Any, idempotency_key: str) -> str:
            handle = await client.start(target, *inputs, workflow_id=chosen_id or idempotency_key)
            return handle.workflow_id

        return self.step(f"child:{name}", start_child_run, *args, retry=_HAND_OFF_RETRY)

    def child_result(self, workflow_id: str, timeout: timedelta | float | None = None) -> Awaitable[Any]:
        """Wait for the run `workflow_id` to finish and return its result (JSON), recorded as a step.

        The child's failure fails this step with `StepError` (``error_type`` ``WorkflowFailed``); `timeout` fails it
        with `StepTimeout` (default: the runtime's `step_timeout`). A parent resumed elsewhere while waiting waits
        again; the child runs on regardless.
        """
        client = WorkflowClient(self._execution.runtime, self._execution.store)

        async def await_child(child_id: str) -> Any:
            return await client.result(child_id)

        return self.step(f"result:{workflow_id}", await_child, workflow_id, retry=_CHILD_RESULT_RETRY, timeout=timeout)

    async def child(
        self,
        workflow: Callable[..., Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: timedelta | float | None = None,
    ) -> Any:
        """Start a child run and wait for its result: `start_child` then `child_result`."""
        child_id = await self.start_child(workflow, *args, workflow_id=workflow_id)
        return await self.child_result(child_id, timeout)

    def send(self, workflow_id: str, name: str, payload: Any = None) -> Awaitable[None]:
        """Put a message in another run's mailbox: its ``ctx.wait_for(name)`` returns `payload`.

        Recorded as the step ``send:<name>``, with the step's idempotency key as the signal id, so the message is
        delivered once even if this run is resumed after sending it. The receiving run may be of a workflow
        registered on another service's runtime: only its id is needed. `WorkflowNotFound` (as a failed step) if
        the receiving run was never started.
        """
        client = WorkflowClient(self._execution.runtime, self._execution.store)

        async def send_message(target: str, message: Any, *, idempotency_key: str) -> None:
            await client.signal(target, name, message, signal_id=idempotency_key)

        return self.step(f"send:{name}", send_message, workflow_id, payload, retry=_HAND_OFF_RETRY)

    def now(self) -> datetime:
        """The current time (UTC), recorded: a replay sees the same value."""
        return self._execution.recorded_now()

    def random(self) -> float:
        """A random float in [0, 1), recorded: a replay sees the same value."""
        return self._execution.recorded_random()

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the code path guarded by `patch_id` (a change deployed while runs are in flight).

        True for runs that reach this point on code that has the patch; False for a run whose history shows it
        passed this point on older code. The answer is fixed for the rest of the run and on every replay.
        """
        return self._execution.patched(patch_id)
