"""Durable Pydantic AI agents: an agent run is a workflow run, and every model request and tool call is a step.

Attach `AgentfoldDurability` to an `Agent` (Pydantic AI's durability capability interface, the one its Temporal,
DBOS and Prefect integrations implement) and register the agent with `DurableAgent`. Then:

- a run of the agent is a workflow run with the id the caller chooses (`DurableAgent.start(..., run_id=...)`);
- each model request is a step (``model_request``): the request's new message and the whole response (usage,
  model name) are recorded, and a resumed run takes recorded responses from the log without calling the model;
- each tool call is a step (``tool:<tool name>:<tool call id>``) whose result is recorded. A tool named in
  ``effects=`` gets the effect guarantee: its intent is recorded before it runs, it can read its idempotency key
  (`current_idempotency_key()`, derived from the run, the step and the tool call id), and a call whose outcome was
  not recorded is passed to its `reconcile` callback on recovery instead of being run blind;
- Pydantic AI's waits for external events (`RequestInput`, which answers deferred and approval-required tools)
  become ``ctx.wait_for`` on the run: the run waits durably, survives restarts, and is answered by a signal
  (`agentfold signal`, `WorkflowClient.signal`, or `resolve` with the token the ``ask`` callback was given);
- a run with an ``event_stream_handler`` streams each model response to it live; only the final response of
  each request is recorded.

Tool calls run one at a time inside a durable run, so their steps are numbered the same way on every replay.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from agentfold import instrumentation
from agentfold.errors import InvalidInput, WaitTimedOut
from agentfold.runtime import NOT_APPLIED, Runtime, WorkflowContext, WorkflowHandle
from agentfold.runtime.retry import RetryPolicy
from agentfold.store import EventStore

try:
    from pydantic_ai import Agent
    from pydantic_ai.agent import EventStreamHandler
    from pydantic_ai.durable_exec import (
        JSON_CODEC,
        BaseDurabilityCapability,
        CallableOperationBackend,
        CallToolResult,
        DurabilityEngineSpec,
        DurableOperationId,
        EventStreamHandlerId,
        ExternalEventError,
        ExternalEventWaiter,
        JournalOperationNamer,
        ModelRequestId,
        RoleBasedOperationConfig,
        ToolsetCallToolId,
        ToolsetValidateToolArgumentsId,
        conversation_id_from_run_id,
        external_event_scope,
    )
    from pydantic_ai.durable_exec._operation_backend import in_durable_unit  # not re-exported; the unit marker
    from pydantic_ai.durable_exec._toolset import wrap_tool_call_result  # the payload a tool call's unit returns
    from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse
    from pydantic_ai.models import Model
    from pydantic_core import to_jsonable_python
except ImportError as missing:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"agentfold.integrations.pydantic_ai needs Pydantic AI: pip install 'agentfold[pydantic-ai]' ({missing})"
    ) from missing

MODEL_REQUEST_STEP: Final = "model_request"
"""The step name of every model request (with ``:<model id>`` for a model other than the agent's default)."""
TOOL_STEP_PREFIX: Final = "tool:"
"""Tool call steps are named ``tool:<tool name>:<tool call id>``."""
ASK_STEP_PREFIX: Final = "ask:"
"""The step that hands a wait's token to ``ask`` is named ``ask:<wait name>``; the wait itself is that name."""

Reconcile = Callable[..., Any]
"""``reconcile(idempotency_key, **tool_args)``: the tool's result if its effect was applied, else `NOT_APPLIED`."""

_current_run: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar(
    "agentfold_pydantic_ai_run", default=None
)
_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "agentfold_pydantic_ai_idempotency_key", default=None
)


def current_idempotency_key() -> str:
    """The idempotency key of the tool call running now: pass it to the external API the tool calls.

    The same for every attempt and every resume of that call (``<run id>/<seq>/tool:<name>:<tool call id>``).
    Raises `InvalidInput` outside a durable tool call.
    """
    key = _current_key.get()
    if key is None:
        raise InvalidInput("current_idempotency_key() is only available inside a tool call of a durable agent run")
    return key


def _context() -> WorkflowContext:
    ctx = _current_run.get()
    if ctx is None:
        raise InvalidInput("this agent operation runs only inside a durable agent run (DurableAgent)")
    return ctx


async def _returning(value: Any) -> Any:
    return value


class _StepBackend(CallableOperationBackend[dict[str, Any]]):
    """Runs each durable unit Pydantic AI hands over as one step of the current workflow run."""

    def __init__(self, durability: AgentfoldDurability) -> None:
        config: RoleBasedOperationConfig[dict[str, Any]] = RoleBasedOperationConfig(
            model={}, event={}, capability={}, tool={}
        )
        super().__init__(namer=JournalOperationNamer(durability.name), config=config)
        self._durability = durability

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: dict[str, Any],
    ) -> object:
        if isinstance(operation_id, EventStreamHandlerId | ToolsetValidateToolArgumentsId):
            # Delivering an event and validating arguments touch nothing outside the process: they run again
            # on replay instead of costing two appends each.
            return await body()
        ctx = _context()
        if isinstance(operation_id, ModelRequestId):
            return await self._model_request(ctx, operation_id, body, cache_key)
        if isinstance(operation_id, ToolsetCallToolId) and operation_id.toolset_kind != "mcp":
            return await self._tool_call(ctx, body, cache_key)
        return await ctx.step(f"pydantic_ai:{name}", _Unit(body), retry=self._durability.retry)

    async def _model_request(
        self,
        ctx: WorkflowContext,
        operation_id: ModelRequestId,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
    ) -> object:
        messages = cache_key[1]
        request: Any = None
        if isinstance(messages, list) and messages:
            request = ModelMessagesTypeAdapter.dump_python(messages[-1:], mode="json")[0]

        async def call_model() -> dict[str, Any]:
            response = await body()
            observer = instrumentation.observer
            if observer is not None and isinstance(response, dict):
                usage = response.get("usage") or {}
                model = response.get("model_name")
                observer.usage(usage.get("input_tokens"), usage.get("output_tokens"), model if model else None)
            exchange = {"request": request, "response": response}
            cost = _cost(response)
            if cost is not None:
                exchange["cost"] = cost
            return exchange

        step = MODEL_REQUEST_STEP if operation_id.model_id is None else f"{MODEL_REQUEST_STEP}:{operation_id.model_id}"
        # Repeatable: a request cut short by a crash has no answer to keep and is asked again (as it would be
        # with its intent recorded), so its start and its response are recorded in one append.
        recorded = await ctx.step(step, _Unit(call_model), retry=self._durability.retry, repeatable=True)
        return recorded["response"]

    async def _tool_call(
        self, ctx: WorkflowContext, body: Callable[[], Awaitable[object]], cache_key: tuple[object, ...]
    ) -> object:
        tool_name, tool_args, run_context = cache_key[0], cache_key[1], cache_key[2]
        call_id = getattr(run_context, "tool_call_id", None)
        step = f"{TOOL_STEP_PREFIX}{tool_name}:{call_id}"
        effects = self._durability.effects
        if tool_name not in effects:
            # A tool without an effect runs again after a crash: its result is written with the run's next append
            # (the next model request's), so a tool call costs no append of its own.
            return await ctx.step(step, _Unit(body), retry=self._durability.retry, repeatable=True, batched=True)
        reconcile = effects[tool_name]
        adapter = None if reconcile is None else _reconciler(reconcile)
        return await ctx.step(step, _Unit(body), tool_args, reconcile=adapter, retry=self._durability.retry)


def _cost(response: Any) -> dict[str, float] | None:
    """The response's price in USD from Pydantic AI's price table, when its provider and model are in it."""
    if not isinstance(response, dict) or not response.get("provider_name") or not response.get("model_name"):
        return None
    try:
        message = ModelMessagesTypeAdapter.validate_python([response])[0]
        if not isinstance(message, ModelResponse):
            return None
        price = message.cost()
    except (LookupError, ValueError, AssertionError):
        return None
    return {
        "input_usd": float(price.input_price),
        "output_usd": float(price.output_price),
        "total_usd": float(price.total_price),
    }


class _Unit:
    """A durable unit as a step function: it sets the step's idempotency key for the tool (or model) it runs.

    An instance, not a closure: the runtime reads a step function's annotations on every call, and an object
    without any costs nothing to read. The step's arguments (a tool call's arguments) are there for `reconcile`.
    """

    __slots__ = ("_body",)

    def __init__(self, body: Callable[[], Awaitable[object]]) -> None:
        self._body = body

    async def __call__(self, *args: Any, idempotency_key: str = "") -> object:
        token = _current_key.set(idempotency_key)
        try:
            return await self._body()
        finally:
            _current_key.reset(token)


def _reconciler(reconcile: Reconcile) -> Callable[..., Awaitable[object]]:
    """Ask `reconcile` about an in-doubt tool call; record what it found the way the tool's own result is recorded."""

    async def ask(idempotency_key: str, tool_args: dict[str, Any]) -> object:
        found = reconcile(idempotency_key, **tool_args)
        if inspect.isawaitable(found):
            found = await found
        if found is NOT_APPLIED:
            return NOT_APPLIED
        return JSON_CODEC.dump(CallToolResult, await wrap_tool_call_result(_returning(found)))

    return ask


class _SignalWaiter(ExternalEventWaiter):
    """A wait for an external event is ``ctx.wait_for(name)``; its token names the run and the signal."""

    def __init__(self, ctx: WorkflowContext) -> None:
        self._ctx = ctx

    async def wait(self, name: str, *, ask: Callable[[str], Awaitable[Any]], timeout: timedelta | None) -> Any:
        token = event_token(self._ctx.workflow_id, name)

        async def hand_over() -> Any:
            return await ask(token)

        answer = await self._ctx.step(f"{ASK_STEP_PREFIX}{name}", _Unit(hand_over))
        if answer is not None:
            return answer
        try:
            return await self._ctx.wait_for(name, timeout)
        except WaitTimedOut:
            raise ExternalEventError(f"no signal {name!r} arrived within {timeout}") from None


def event_token(workflow_id: str, name: str) -> str:
    """The token a wait hands to ``ask``: `resolve` turns it back into the run and the signal to send."""
    return f"{name}@{workflow_id}"


async def resolve(runtime: Runtime, store: EventStore, token: str, payload: Any) -> None:
    """Answer the wait `token` came from with `payload` (for `RequestInput`: the JSON of `DeferredToolResults`).

    The same as ``agentfold signal <run id> <name> --payload JSON``. `InvalidInput` for a token no wait handed out.
    """
    name, separator, workflow_id = token.partition("@") if isinstance(token, str) else ("", "", "")
    if not separator or not name or not workflow_id:
        raise InvalidInput(f"{token!r} is not a token handed out by a durable agent run's wait")
    await runtime.client(store).signal(workflow_id, name, to_jsonable_python(payload))


class AgentfoldDurability(BaseDurabilityCapability[Any]):
    """The capability that makes an `Agent` durable on agentfold: add it to ``Agent(capabilities=[...])``.

    Outside a `DurableAgent` run the agent runs as it would without it. `effects` maps tool names to their
    `reconcile` callback (or None: the call is repeated with the same idempotency key when its outcome is
    unknown). `retry` is the retry policy of model requests and tool calls (default: the runtime's).
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="agentfold",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="workflow run",
        codec=JSON_CODEC,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        tool_call_result_upgrade_lenient=False,
        journal_discovery=True,
        sequential_tools_in_durable_context=True,
        tool_config_key=None,
    )

    def __init__(
        self,
        *,
        effects: Mapping[str, Reconcile | None] | None = None,
        retry: RetryPolicy | None = None,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        chosen = dict(effects or {})
        for tool_name, reconcile in chosen.items():
            if not isinstance(tool_name, str) or not tool_name:
                raise InvalidInput(f"effects: a tool name must be a non-empty str, got {tool_name!r}")
            if reconcile is not None and not callable(reconcile):
                raise InvalidInput(f"effects[{tool_name!r}]: reconcile {reconcile!r} is not callable")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInput(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.effects: dict[str, Reconcile | None] = chosen
        self.retry = retry

    @property
    def in_durable_context(self) -> bool:
        return _current_run.get() is not None and not in_durable_unit()

    def get_default_run_id(self) -> str | None:
        ctx = _current_run.get()
        return None if ctx is None else ctx.workflow_id

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        ctx = _current_run.get()
        return None if ctx is None or not self.in_durable_context else ctx.now()

    def get_durable_operation_backend(self) -> _StepBackend:
        return _StepBackend(self)


def _has_durability(agent: Agent[Any, Any]) -> bool:
    found: list[bool] = []

    def visit(capability: Any) -> None:
        if isinstance(capability, AgentfoldDurability):
            found.append(True)

    agent.root_capability.apply(visit)
    return bool(found)


class DurableAgent:
    """An `Agent` registered with a `Runtime`: each run is a workflow run, resumed where it stopped after a crash.

    Register it at import time in every process (workers and clients), like any workflow. `deps` is passed to
    every run in this process (it is not recorded).
    """

    def __init__(self, runtime: Runtime, agent: Agent[Any, Any], *, name: str | None = None, deps: Any = None) -> None:
        if not isinstance(agent, Agent):
            raise InvalidInput(f"DurableAgent needs a pydantic_ai.Agent, got {type(agent).__name__}")
        if not _has_durability(agent):
            raise InvalidInput(
                f"agent {agent.name!r} has no AgentfoldDurability capability: add it with "
                "Agent(..., capabilities=[AgentfoldDurability()]), or its runs would not be durable"
            )
        chosen = name or (f"pydantic_ai:{agent.name}" if agent.name else None)
        if chosen is None:
            raise InvalidInput("DurableAgent needs a name: give the Agent a name= or pass name= here")
        self.agent = agent
        self.runtime = runtime
        self.deps = deps
        self.workflow_name = chosen
        runtime.workflow(name=chosen)(self._run)

    async def _run(self, ctx: WorkflowContext, prompt: str | None, history: list[Any] | None = None) -> Any:
        messages = None if history is None else ModelMessagesTypeAdapter.validate_python(history)
        token = _current_run.set(ctx)
        observer = instrumentation.observer
        if observer is not None:
            observer.agent(self.agent.name or self.workflow_name, ctx.workflow_id)
        try:
            with external_event_scope(_SignalWaiter(ctx)):
                result = await self.agent.run(prompt, message_history=messages, deps=self.deps)
        finally:
            _current_run.reset(token)
        usage = result.usage
        if observer is not None:
            observer.usage(usage.input_tokens, usage.output_tokens)
        return {
            "output": to_jsonable_python(result.output),
            "usage": {
                "requests": usage.requests,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
        }

    async def start(
        self,
        store: EventStore,
        prompt: str | None,
        *,
        run_id: str,
        message_history: Sequence[ModelMessage] | None = None,
    ) -> WorkflowHandle:
        """Start the run `run_id` (idempotent: the same id returns the run already started)."""
        history = (
            None
            if message_history is None
            else ModelMessagesTypeAdapter.dump_python(list(message_history), mode="json")
        )
        return await self.runtime.client(store).start(self.workflow_name, prompt, history, workflow_id=run_id)

    async def result(self, store: EventStore, run_id: str, *, timeout: float | timedelta | None = None) -> Any:
        """Wait for the run to finish; its output as JSON (`WorkflowFailed` if the agent raised)."""
        recorded = await self.runtime.client(store).result(run_id, timeout=timeout)
        return recorded["output"]

    async def conversation(self, store: EventStore, run_id: str, *, upto: int | None = None) -> list[ModelMessage]:
        """The run's messages as recorded (from the history it started with), up to the step `upto` if given.

        Nothing is called: the messages are those the run's steps recorded.
        """
        history = await self.runtime.client(store).history(run_id)
        args = history.input.get("args", [])
        recorded: list[Any] = list(args[1]) if len(args) > 1 and isinstance(args[1], list) else []
        for seq in sorted(history.commands):
            if upto is not None and seq > upto:
                break
            record = history.commands[seq]
            if not record.name.startswith(MODEL_REQUEST_STEP) or record.outcome_type != "StepCompleted":
                continue
            assert record.outcome is not None
            result = record.outcome["result"]
            if result.get("request") is not None:
                recorded.append(result["request"])
            recorded.append(result["response"])
        return ModelMessagesTypeAdapter.validate_python(recorded)
