"""The OpenTelemetry observer: spans in the GenAI and database semantic conventions, trace context in the log.

- A run's execution is an ``invoke_workflow {workflow}`` span (``invoke_agent {agent}`` once an integration names
  the agent); each step attempt an ``execute_tool {step}`` span inside it.
- Each append is an ``append`` client span; its W3C ``traceparent`` is recorded in the metadata of the events it
  writes. Reads are ``read_stream``/``read_all`` client spans; a consumer group's handling of an event and a
  subscriber's, until it asks for the next one, are ``process {consumer}`` consumer spans.
- Whoever picks an event up continues the trace its ``traceparent`` names: a worker starting a run (the run started
  by a hand-off in another process is in the hand-off's trace), a subscriber, a group member. A run resumed after
  its execution stopped (a crash, a takeover, a worker's stop) starts a new trace linked to where it was asked for
  and to where the earlier execution stopped: the new trace is about the resume, the links lead back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from agentfold.events import AppendResult, ExpectedVersion, NewEvent, RecordedEvent, StreamState
from agentfold.instrumentation import Observer, Pages, RunStart, Write

INSTRUMENTATION_NAME: Final = "agentfold"

DB_SYSTEMS: Final = {"sqlite": "sqlite", "postgresql": "postgresql", "redis": "redis", "memory": "agentfold.memory"}
"""`db.system.name` by store scheme (the well-known values where there is one)."""

STREAM_ID: Final = "agentfold.stream.id"
EXPECTED_VERSION: Final = "agentfold.expected_version"
RESULT_VERSION: Final = "agentfold.result.version"
RESULT_POSITION: Final = "agentfold.result.position"
EVENT_COUNT: Final = "agentfold.event.count"
EVENT_POSITION: Final = "agentfold.event.position"
EVENT_VERSION: Final = "agentfold.event.version"
EVENT_TYPE: Final = "agentfold.event.type"
CONSUMER: Final = "agentfold.consumer.name"
CONSUMER_KIND: Final = "agentfold.consumer.kind"
LINK_REASON: Final = "agentfold.link.reason"

_READ_KEYS: Final = {"stream_id": STREAM_ID}
_propagator = TraceContextTextMapPropagator()


def _error_type(error: BaseException) -> str:
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ in ("builtins", "agentfold.errors")
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _expected(expected: ExpectedVersion) -> str | int:
    return expected.value if isinstance(expected, StreamState) else expected


def _span_context(carrier: Mapping[str, Any] | None) -> trace.SpanContext | None:
    if not carrier:
        return None
    span_context = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


class OpenTelemetryObserver(Observer):
    """Reports to an OpenTelemetry tracer and meter provider (the global ones unless given)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        from agentfold.otel.meters import Meters

        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self.meters = Meters(metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider))

    # -- the store -----------------------------------------------------------------------------------------------

    async def append(
        self, scheme: str, stream_id: str, events: Sequence[NewEvent], expected: ExpectedVersion, write: Write
    ) -> AppendResult:
        system = DB_SYSTEMS.get(scheme, scheme)
        attributes: dict[str, Any] = {
            "db.system.name": system,
            "db.operation.name": "append",
            STREAM_ID: str(stream_id),
            EXPECTED_VERSION: _expected(expected) if isinstance(expected, StreamState | int) else repr(expected),
        }
        started = time.perf_counter()
        outcome = ""
        if stream_id.startswith("$") if isinstance(stream_id, str) else False:
            if not trace.get_current_span().get_span_context().is_valid:
                # agentfold's own upkeep (heartbeats, leases, partitions) outside any traced operation: a trace of
                # one span per heartbeat would drown the traces that matter. Measured, not traced.
                try:
                    return await write(events)
                except BaseException as error:
                    outcome = _error_type(error)
                    raise
                finally:
                    self.meters.appended(system, 0 if outcome else len(events), time.perf_counter() - started, outcome)
        with self.tracer.start_as_current_span("append", kind=SpanKind.CLIENT, attributes=attributes) as span:
            try:
                carrier: dict[str, str] = {}
                _propagator.inject(carrier)
                result = await write(_with_trace_context(events, carrier))
            except BaseException as error:
                outcome = _error_type(error)
                span.set_attribute("error.type", outcome)
                raise
            finally:
                self.meters.appended(system, len(events) if not outcome else 0, time.perf_counter() - started, outcome)
            span.set_attributes(
                {RESULT_VERSION: result.version, RESULT_POSITION: result.position, EVENT_COUNT: len(events)}
            )
            return result

    def read(self, scheme: str, operation: str, attributes: Mapping[str, Any], pages: Pages) -> Pages:
        return self._read(DB_SYSTEMS.get(scheme, scheme), operation, attributes, pages)

    async def _read(
        self, system: str, operation: str, attributes: Mapping[str, Any], pages: Pages
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        if not trace.get_current_span().get_span_context().is_valid:
            # A read outside any traced operation is a follower polling the log (a worker, a projector): as many
            # one-span traces as polls would drown the traces that matter.
            async with contextlib.aclosing(pages):
                async for page in pages:
                    yield page
            return
        # Not the current span: the reader's own code runs between the pages.
        span = self.tracer.start_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": system,
                "db.operation.name": operation,
                **{
                    _READ_KEYS.get(key, f"agentfold.{key}"): value
                    for key, value in attributes.items()
                    if value is not None
                },
            },
        )
        count = 0
        last: RecordedEvent | None = None
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    count += len(page)
                    last = page[-1]
                    yield page
        except GeneratorExit:
            raise
        except BaseException as error:
            span.set_attribute("error.type", _error_type(error))
            span.set_status(Status(StatusCode.ERROR, str(error)))
            raise
        finally:
            span.set_attribute(EVENT_COUNT, count)
            if last is not None:
                span.set_attributes({EVENT_POSITION: last.position, EVENT_VERSION: last.version})
            span.end()

    # -- the runtime ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self, start: RunStart) -> Iterator[None]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": start.workflow,
            "gen_ai.conversation.id": start.workflow_id,
            "agentfold.run.attempt": start.attempt,
            "agentfold.run.resumed": start.resumed,
        }
        if start.worker_id is not None:
            attributes["agentfold.worker.id"] = start.worker_id
        links: list[Link] = []
        if start.resumed:
            parent = otel_context.Context()  # a new trace: the resume's own
            asked = _span_context(start.start_context)
            if asked is not None:
                links.append(Link(asked, {LINK_REASON: "run started"}))
            stopped = _span_context(start.written_context)
            if stopped is not None and (asked is None or stopped.span_id != asked.span_id):
                links.append(Link(stopped, {LINK_REASON: "resumed after"}))
        else:
            parent = _propagator.extract(start.start_context or {})
        with self.tracer.start_as_current_span(
            f"invoke_workflow {start.workflow}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as error:
                # Not the run's failure (that is recorded and reported by `finished`): what stopped this execution.
                span.set_attribute("agentfold.run.interrupted", _error_type(error))
                raise

    @contextlib.contextmanager
    def step(
        self, workflow: str, workflow_id: str, name: str, seq: int, attempt: int, idempotency_key: str
    ) -> Iterator[None]:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": idempotency_key,
            "gen_ai.tool.type": "function",
            "gen_ai.conversation.id": workflow_id,
            "gen_ai.workflow.name": workflow,
            "agentfold.step.seq": seq,
            "agentfold.step.attempt": attempt,
        }
        with self.tracer.start_as_current_span(
            f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes, set_status_on_exception=False
        ) as span:
            try:
                yield
            except BaseException as error:
                span.set_attribute("error.type", _error_type(error))
                span.set_status(Status(StatusCode.ERROR, str(error)))
                raise

    def run_finished(self, outcome: str, error_type: str | None) -> None:
        span = trace.get_current_span()
        span.set_attribute("agentfold.run.outcome", outcome)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        self.meters.run_finished(outcome)

    def agent(self, name: str, agent_id: str) -> None:
        span = trace.get_current_span()
        span.update_name(f"invoke_agent {name}")
        span.set_attributes(
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name, "gen_ai.agent.id": agent_id}
        )

    def usage(self, input_tokens: int | None, output_tokens: int | None, model: str | None = None) -> None:
        span = trace.get_current_span()
        if input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if model is not None:
            span.set_attribute("gen_ai.response.model", model)

    # -- consumers -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def deliver(self, consumer: str, kind: str, event: RecordedEvent) -> Iterator[None]:
        attributes: dict[str, AttributeValue] = {
            CONSUMER: consumer,
            CONSUMER_KIND: kind,
            "db.operation.name": "deliver",
            STREAM_ID: event.stream_id,
            EVENT_POSITION: event.position,
            EVENT_VERSION: event.version,
            EVENT_TYPE: event.type,
        }
        parent = _propagator.extract(event.metadata) if "traceparent" in event.metadata else otel_context.Context()
        with self.tracer.start_as_current_span(
            f"process {consumer}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            try:
                yield
            except BaseException as error:
                span.set_attribute("error.type", _error_type(error))
                raise

    @contextlib.contextmanager
    def remote(self, carrier: Mapping[str, str]) -> Iterator[None]:
        if "traceparent" not in carrier or trace.get_current_span().get_span_context().is_valid:
            # Nothing named, or a server span already continues it (the ASGI instrumentation of OpenTelemetry).
            yield
            return
        token = otel_context.attach(_propagator.extract(carrier))
        try:
            yield
        finally:
            otel_context.detach(token)

    def lag(self, consumer: str, kind: str, behind: int) -> None:
        self.meters.lag(consumer, kind, behind)

    def happened(self, what: str, attributes: Mapping[str, Any]) -> None:
        self.meters.happened(what, attributes)


def _with_trace_context(events: Sequence[NewEvent], carrier: Mapping[str, str]) -> Sequence[NewEvent]:
    """`events` with `carrier` (the append span's trace context) in their metadata; the caller's own keys win.
    Anything that is not a list of `NewEvent` with object metadata is passed on as it is, for the store to refuse."""
    if not carrier or not isinstance(events, list | tuple):
        return events
    annotated: list[NewEvent] = []
    for event in events:
        if type(event) is not NewEvent or not (event.metadata is None or isinstance(event.metadata, dict)):
            return events
        annotated.append(NewEvent(event.type, event.data, {**carrier, **(event.metadata or {})}, event.id))
    return annotated
