"""The registry of workflows: their definitions and the settings runs share (serializer, retries, breakers,
triggers, hooks). Workers, clients and executions read it; `Runtime` adds where workers and clients come from."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

from agentfold.errors import InvalidInput, UnknownWorkflow
from agentfold.events import AppendResult, NewEvent
from agentfold.runtime.breaker import BreakerSettings, check_breaker_name
from agentfold.runtime.retry import RetryPolicy, seconds
from agentfold.runtime.serialization import DefaultSerializer, JsonValue, Serializer, declared_types
from agentfold.runtime.triggers import Trigger
from agentfold.validation import describe


class RecordHook:
    """Called around every append the runtime makes to a workflow stream (tracing, metrics, fault injection).

    Both methods run synchronously inside the execution; an exception they raise stops the run like a crash would.
    """

    def before_append(self, workflow_id: str, events: Sequence[NewEvent]) -> None:
        """`events` are about to be appended to the run's stream."""
        return None

    def after_append(self, workflow_id: str, events: Sequence[NewEvent], result: AppendResult) -> None:
        """`events` are durably appended."""
        return None


WorkflowFunction = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=WorkflowFunction)

DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class WorkflowDefinition:
    """A registered workflow: its stable name, its function, and the code version new runs record."""

    name: str
    function: WorkflowFunction
    version: JsonValue = None

    @property
    def parameter_types(self) -> list[Any]:
        """The declared types of the inputs after `ctx` (None where not declared)."""
        hints = declared_types(self.function)
        parameters = list(inspect.signature(self.function).parameters.values())[1:]
        return [hints.get(parameter.name) for parameter in parameters]

    @property
    def result_type(self) -> Any:
        """The declared return type (None when not declared)."""
        return declared_types(self.function).get("return")

    def encode_input(self, args: tuple[Any, ...], serializer: Serializer) -> dict[str, Any]:
        """The recorded form of the inputs; `NotSerializable` naming the bad one."""
        return {"args": [serializer.to_json(arg, f"input.args[{index}]") for index, arg in enumerate(args)]}

    def decode_input(self, recorded: dict[str, Any], serializer: Serializer) -> list[Any]:
        """The inputs as the function declares them."""
        types = self.parameter_types
        values: list[JsonValue] = recorded.get("args", [])
        return [
            serializer.from_json(value, types[index] if index < len(types) else None)
            for index, value in enumerate(values)
        ]


class WorkflowRegistry:
    """The workflows of an application and the settings their runs share. Safe to create at import time: it
    touches no store.

    Workers and clients of every process must register the same workflows under the same names.
    """

    def __init__(
        self,
        *,
        serializer: Serializer | None = None,
        default_retry: RetryPolicy | None = None,
        hooks: Iterable[RecordHook] = (),
        step_timeout: timedelta | float | None = None,
    ) -> None:
        self.serializer: Serializer = serializer or DefaultSerializer()
        self.default_retry = default_retry or DEFAULT_RETRY
        self.hooks: list[RecordHook] = list(hooks)
        self.step_timeout = None if step_timeout is None else seconds(step_timeout, "step_timeout")
        """The timeout of every step attempt that names none (None: no limit)."""
        self.breakers: dict[str, BreakerSettings] = {}
        self.triggers: list[Trigger] = []
        self._by_name: dict[str, WorkflowDefinition] = {}
        self._by_function: dict[Callable[..., Any], WorkflowDefinition] = {}

    @overload
    def workflow(self, function: F, /) -> F: ...

    @overload
    def workflow(
        self, function: None = None, /, *, name: str | None = None, version: JsonValue = None
    ) -> Callable[[F], F]: ...

    def workflow(
        self, function: F | None = None, /, *, name: str | None = None, version: JsonValue = None
    ) -> F | Callable[[F], F]:
        """Register an ``async def workflow(ctx, *inputs)``: bare, or as ``@runtime.workflow(name=..., version=...)``.

        The name (default: the function's qualified name) is what the store records, so renaming the function
        needs ``name=`` to keep running existing runs. `version` is recorded in each new run (`ctx.version`).
        """

        def register(chosen: F) -> F:
            is_async = inspect.iscoroutinefunction(chosen)
            if not is_async:
                raise InvalidInput(f"workflow {chosen!r} must be an async function taking ctx first")
            workflow_name = name or chosen.__qualname__
            if not isinstance(workflow_name, str) or not workflow_name:
                raise InvalidInput(f"a workflow name must be a non-empty str, got {describe(workflow_name)}")
            existing = self._by_name.get(workflow_name)
            if existing is not None and existing.function is not chosen:
                raise InvalidInput(f"a different function is already registered as workflow {workflow_name!r}")
            definition = WorkflowDefinition(workflow_name, chosen, version)
            self._by_name[workflow_name] = definition
            self._by_function[chosen] = definition
            return chosen

        if function is not None:
            return register(function)
        return register

    def breaker(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        window: timedelta | float = 60.0,
        cool_down: timedelta | float = 30.0,
        probe_timeout: timedelta | float | None = None,
        ignore: tuple[type[BaseException], ...] = (),
    ) -> BreakerSettings:
        """Configure the circuit breaker `name` used by ``ctx.step(..., breaker=name)`` (see `BreakerSettings`).

        A name never configured uses the defaults. Every process should configure a name the same way.
        """
        settings = BreakerSettings(failure_threshold, window, cool_down, probe_timeout, ignore)
        self.breakers[check_breaker_name(name)] = settings
        return settings

    def trigger(
        self,
        event_type: str,
        workflow: str | Callable[..., Any],
        *,
        stream_prefix: str | None = None,
        name: str | None = None,
    ) -> Trigger:
        """Start `workflow` once per event of `event_type` (on streams starting with `stream_prefix`).

        The run gets the event as its input (`TriggerEvent`) and a workflow id derived from the event id, so every
        worker may see the event and still only one run starts. Workers deliver triggers (`agentfold.runtime.triggers`).
        """
        chosen = Trigger.of(self.definition(workflow).name, event_type, stream_prefix, name)
        if any(existing.name == chosen.name for existing in self.triggers):
            raise InvalidInput(f"a trigger named {chosen.name!r} is already registered")
        self.triggers.append(chosen)
        return chosen

    @property
    def names(self) -> list[str]:
        """The registered workflow names, sorted."""
        return sorted(self._by_name)

    def definition(self, workflow: str | Callable[..., Any]) -> WorkflowDefinition:
        """The registered workflow for a name or a decorated function; `UnknownWorkflow` otherwise."""
        if isinstance(workflow, str):
            found = self._by_name.get(workflow)
        else:
            try:
                found = self._by_function.get(workflow)
            except TypeError:
                found = None
        if found is None:
            known = ", ".join(self.names) or "none"
            raise UnknownWorkflow(
                f"workflow {describe(workflow)} is not registered with this runtime (registered: {known})"
            )
        return found

    def knows(self, name: str) -> bool:
        """Whether a workflow of this name is registered."""
        return name in self._by_name
