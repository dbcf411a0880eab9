"""`agentfold[otel]`: spans in the GenAI and database conventions, trace context carried by the log, metrics.

Real stores (SQLite files, the PostgreSQL server), real worker processes exporting their spans to files, a real
SIGKILL; spans and metrics are read back through the SDK's own in-memory exporter and reader.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import agentfold
import agentfold.otel
from agentfold import instrumentation
from agentfold.demo.pipeline import AGENTS, INTAKE, LineItem, Order, OrderPipeline, run_id
from agentfold.demo.provider import PaymentProvider, ProviderClient
from agentfold.errors import DuplicateEventId, InvalidInput
from agentfold.events import NewEvent
from agentfold.otel import StoreGauges
from agentfold.runtime import workflow_stream
from agentfold.runtime.breaker import CircuitBreaker

ROOT = Path(__file__).resolve().parent.parent
GUARD = 120.0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    agentfold.otel.instrument(tracer_provider=provider)
    yield spans
    agentfold.otel.uninstrument()


@pytest.fixture
def metric_reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    agentfold.otel.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider(metric_readers=[reader]))
    yield reader
    agentfold.otel.uninstrument()


def named(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {sorted({span.name for span in spans})}"
    return found[0]


def parent_of(spans: Sequence[ReadableSpan], span: ReadableSpan) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    parents = [other for other in spans if other.context.span_id == span.parent.span_id]
    assert len(parents) == 1, f"the parent of {span.name} was not exported"
    return parents[0]


# -- the demo pipeline's span tree ----------------------------------------------------------------------------------


async def test_the_demo_pipeline_is_one_trace_of_runs_steps_and_appends(
    sql_url: str, exporter: InMemorySpanExporter
) -> None:
    with PaymentProvider() as provider:
        async with agentfold.connect(sql_url) as store:
            pipeline = OrderPipeline(store, ProviderClient(provider.url))
            async with pipeline.runtime.worker(store):
                await pipeline.place(Order("o-1", "ann", [LineItem("tea", 2, 450)], "Lyon"))
                result = await pipeline.client.result(run_id("o-1", INTAKE), timeout=GUARD)
    assert result["status"] == "delivered"
    spans = exporter.get_finished_spans()
    system = "sqlite" if sql_url.startswith("sqlite") else "postgresql"

    runs = {agent: named(spans, f"invoke_workflow {agent}") for agent in AGENTS}
    trace_ids = {span.context.trace_id for span in runs.values()}
    assert len(trace_ids) == 1, "the four agents' runs are one trace"
    for agent, span in runs.items():
        assert span.kind is SpanKind.INTERNAL
        assert span.attributes is not None
        assert span.attributes["gen_ai.operation.name"] == "invoke_workflow"
        assert span.attributes["gen_ai.workflow.name"] == agent
        assert span.attributes["gen_ai.conversation.id"] == run_id("o-1", agent)
        assert span.attributes["agentfold.run.outcome"] == "WorkflowCompleted"
        assert span.attributes["agentfold.run.resumed"] is False
        assert "error.type" not in span.attributes

    # The order was placed by an append (the client's), which the intake run continues.
    placed = parent_of(spans, runs[INTAKE])
    assert (placed.name, placed.kind, placed.parent) == ("append", SpanKind.CLIENT, None)
    assert placed.attributes is not None
    assert placed.attributes["agentfold.stream.id"] == workflow_stream(run_id("o-1", INTAKE))
    assert placed.attributes["db.system.name"] == system
    assert placed.attributes["agentfold.result.version"] == 1

    # Each hand-off: a step of one agent, whose append starts the next agent's run.
    for before, after, step, seq in (
        (INTAKE, "payment", "hand_off_to_payment", 2),
        ("payment", "fulfilment", "hand_off_to_fulfilment", 3),
        ("fulfilment", "notification", "hand_off_to_notification", 2),
    ):
        append = parent_of(spans, runs[after])
        assert append.name == "append" and append.kind is SpanKind.CLIENT
        assert append.attributes is not None
        assert append.attributes["db.operation.name"] == "append"
        assert append.attributes["agentfold.stream.id"] == workflow_stream(run_id("o-1", after))
        assert append.attributes["agentfold.expected_version"] == "no_stream"
        assert append.attributes["agentfold.result.version"] == 1
        assert isinstance(append.attributes["agentfold.result.position"], int)
        hand_off = parent_of(spans, append)
        assert hand_off.name == f"execute_tool {step}"
        assert hand_off.attributes is not None
        assert hand_off.attributes["gen_ai.operation.name"] == "execute_tool"
        assert hand_off.attributes["gen_ai.tool.name"] == step
        assert hand_off.attributes["gen_ai.tool.call.id"] == f"{run_id('o-1', before)}/{seq}/{step}"
        assert parent_of(spans, hand_off) is runs[before]

    charge = named(spans, "execute_tool initiate_payment")
    assert parent_of(spans, charge) is runs["payment"]
    assert charge.attributes is not None
    assert charge.attributes["gen_ai.tool.call.id"] == "o-1-payment/1/initiate_payment"
    # The run's own records (step started, completed) are appends inside the run.
    recorded = [span for span in spans if span.name == "append" and span.parent == runs["payment"].context]
    assert len(recorded) >= 4
    assert {span.context.trace_id for span in spans if span.name.startswith(("invoke_", "execute_"))} == trace_ids

    # The report back to intake is a signal appended inside notification's step, in the same trace.
    report = named(spans, "execute_tool report_to_intake")
    assert report.context.trace_id in trace_ids


async def test_an_append_records_its_span_in_the_events_metadata(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with agentfold.connect(f"sqlite:///{tmp_path / 'store.db'}") as store:
        await store.append("orders-1", [NewEvent("Placed", {"n": 1}, {"by": "ann"})])
        [event] = [event async for event in store.read_stream("orders-1")]
    [append] = [span for span in exporter.get_finished_spans() if span.name == "append"]
    context = append.context
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    assert event.metadata == {"by": "ann", "traceparent": traceparent}


async def test_a_retry_from_another_trace_is_still_exact_and_other_content_is_still_refused(
    sql_url: str, exporter: InMemorySpanExporter
) -> None:
    first = NewEvent("Placed", {"n": 1}, {"by": "ann"})
    async with agentfold.connect(sql_url) as store:
        written = await store.append("orders-1", [first])
        assert await store.append("orders-1", [first]) == written  # another append span: another traceparent
        instrumentation.uninstall()
        assert await store.append("orders-1", [first]) == written  # no trace context at all
        with pytest.raises(DuplicateEventId):
            await store.append("orders-1", [NewEvent("Placed", {"n": 1}, {"by": "bob"}, id=first.id)])
        assert await store.stream_version("orders-1") == 1


@pytest.mark.parametrize(
    "events",
    [
        None,
        [],
        [1],
        (event for event in [NewEvent("Placed")]),
        [NewEvent("Placed", metadata=["not", "an", "object"])],  # type: ignore[arg-type]
        [NewEvent("Placed", {"n": float("nan")})],
        [NewEvent("")],
    ],
)
async def test_bad_input_gets_the_same_typed_error_while_traced(
    tmp_path: Path, exporter: InMemorySpanExporter, events: Any
) -> None:
    async with agentfold.connect(f"sqlite:///{tmp_path / 'store.db'}") as store:
        with pytest.raises(InvalidInput) as traced:
            await store.append("orders-1", events)
        instrumentation.uninstall()
        with pytest.raises(InvalidInput) as untraced:
            await store.append("orders-1", events)
        assert type(traced.value) is type(untraced.value)
        assert await store.head_position() == 0
    [append] = [span for span in exporter.get_finished_spans() if span.name == "append"]
    assert append.attributes is not None and append.attributes["error.type"] == type(traced.value).__qualname__


# -- reads and deliveries -------------------------------------------------------------------------------------------


async def test_a_subscriber_and_a_group_member_continue_the_trace_of_the_append(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with agentfold.connect(f"sqlite:///{tmp_path / 'store.db'}") as store:
        await store.append("orders-1", [NewEvent("Placed", {"n": 1})])
        handled = asyncio.Event()

        async def handle(event: Any) -> None:
            await store.append("mail-1", [NewEvent("Mailed", {"for": event.position})])
            handled.set()

        async with store.consumer_group("mailer", handle, types=["Placed"]):
            await asyncio.wait_for(handled.wait(), GUARD)
        async with store.subscribe(name="auditor", types=["Placed"]) as subscription:
            async for _event in subscription:
                await store.append("audit-1", [NewEvent("Audited")])
                break
    spans = exporter.get_finished_spans()
    placed = next(span for span in spans if span.name == "append" and span.parent is None)
    for consumer, kind, written in (("mailer", "group", "mail-1"), ("auditor", "subscription", "audit-1")):
        process = named(spans, f"process {consumer}")
        assert process.kind is SpanKind.CONSUMER
        assert process.parent is not None and process.parent.span_id == placed.context.span_id
        assert process.attributes is not None
        assert process.attributes["agentfold.consumer.kind"] == kind
        assert process.attributes["agentfold.stream.id"] == "orders-1"
        assert process.attributes["agentfold.event.position"] == 1
        [append] = [
            span for span in spans if span.name == "append" and span.attributes["agentfold.stream.id"] == written
        ]
        assert append.parent is not None and append.parent.span_id == process.context.span_id


async def test_subscription_lag_goes_up_with_appends_and_down_as_the_subscriber_reads(
    sql_url: str, metric_reader: InMemoryMetricReader
) -> None:
    def lag() -> int:
        data = metric_reader.get_metrics_data()
        assert data is not None
        points = [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "agentfold.consumer.lag"
            for point in metric.data.data_points
            if point.attributes is not None and point.attributes["agentfold.consumer.name"] == "reporter"
        ]
        assert len(points) == 1
        return int(points[0].value)

    async with agentfold.connect(sql_url) as store:
        await store.append("orders-1", [NewEvent("Placed")])
        async with store.subscribe(name="reporter", page_size=5) as subscription:
            events = aiter(subscription)
            await anext(events)
            assert lag() == 1  # it read the first page from position 0, one event behind the head
            await store.append("orders-2", [NewEvent("Placed") for _ in range(20)])
            seen = []
            for _ in range(5):
                seen.append(await anext(events))
            assert lag() == 20  # up: the next page was read from position 1, with the head at 21
            for _ in range(15):
                seen.append(await anext(events))
            assert lag() == 5  # down: the last page was read from position 16
            assert [event.position for event in seen] == list(range(2, 22))

    data = metric_reader.get_metrics_data()
    assert data is not None
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {"agentfold.appended_events", "db.client.operation.duration"} <= names


# -- across processes -----------------------------------------------------------------------------------------------


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.workflow_apps.traced",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def expect_line(process: asyncio.subprocess.Process, prefix: str) -> str:
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), GUARD)
        if not raw:
            assert process.stderr is not None
            errors = (await process.stderr.read()).decode(errors="replace")
            raise AssertionError(f"process exited before printing {prefix!r}:\n{errors}")
        line = raw.decode().strip()
        if line.startswith(prefix):
            return line


def exported(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), GUARD)


async def test_a_hand_off_between_agents_in_two_processes_is_one_trace(
    sql_url: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    writer_spans, reviewer_spans = tmp_path / "writer.jsonl", tmp_path / "reviewer.jsonl"
    writer = await spawn("serve", sql_url, "writer", str(writer_spans))
    reviewer = await spawn("serve", sql_url, "reviewer", str(reviewer_spans))
    try:
        await expect_line(writer, "READY")
        await expect_line(reviewer, "READY")
        async with agentfold.connect(sql_url) as store:
            from tests.workflow_apps import traced

            client = traced.runtime.client(store)
            await client.start("writer", "otters", workflow_id="essay-1")
            assert await client.result("essay-1", timeout=GUARD) == "reviewed: a draft about otters"
    finally:
        await stop(writer)
        await stop(reviewer)
    first, second = exported(writer_spans), exported(reviewer_spans)
    by_id = {span["context"]["span_id"]: span for span in [*first, *second]}
    writer_run = next(span for span in first if span["name"] == "invoke_workflow writer")
    reviewer_run = next(span for span in second if span["name"] == "invoke_workflow reviewer")
    assert reviewer_run["context"]["trace_id"] == writer_run["context"]["trace_id"]
    # The reviewer's run (process 2) is a child of the append that started it, made by the writer's hand-off step
    # (process 1).
    append = by_id[reviewer_run["parent_id"]]
    assert append in first and append["name"] == "append" and append["kind"] == "SpanKind.CLIENT"
    assert append["attributes"]["agentfold.stream.id"] == workflow_stream("essay-1/review")
    hand_off = by_id[append["parent_id"]]
    assert hand_off["name"] == "execute_tool child:reviewer"
    assert hand_off["parent_id"] == writer_run["context"]["span_id"]
    review_step = next(span for span in second if span["name"] == "execute_tool review")
    assert review_step["parent_id"] == reviewer_run["context"]["span_id"]
    assert review_step["attributes"]["gen_ai.tool.call.id"] == "essay-1/review/1/review"


async def test_a_run_resumed_after_a_sigkill_links_to_its_original_trace(
    sql_url: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    killed_spans = tmp_path / "killed.jsonl"
    victim = await spawn("serve", sql_url, "writer", str(killed_spans), "hang")
    try:
        await expect_line(victim, "READY")
        async with agentfold.connect(sql_url) as store:
            from tests.workflow_apps import traced

            await traced.runtime.client(store).start("writer", "owls", workflow_id="essay-2")
            await expect_line(victim, "HANGING")
            started = [event async for event in store.read_stream(workflow_stream("essay-2"))]
    finally:
        if victim.returncode is None:
            victim.send_signal(signal.SIGKILL)
        await victim.wait()
    original_trace = started[0].metadata["traceparent"].split("-")[1]
    step_started = started[-1]
    assert step_started.type == "StepStarted"

    resumed_spans = tmp_path / "resumed.jsonl"
    resumer = await spawn("serve", sql_url, "writer,reviewer", str(resumed_spans))
    try:
        await expect_line(resumer, "READY")
        async with agentfold.connect(sql_url) as store:
            from tests.workflow_apps import traced

            assert await traced.runtime.client(store).result("essay-2", timeout=GUARD) == (
                "reviewed: a draft about owls"
            )
    finally:
        await stop(resumer)
    spans = exported(resumed_spans)
    run = next(span for span in spans if span["name"] == "invoke_workflow writer")
    assert run["attributes"]["agentfold.run.resumed"] is True
    assert run["parent_id"] is None
    assert run["context"]["trace_id"] != f"0x{original_trace}", "the resume is a trace of its own"
    links = {link["attributes"]["agentfold.link.reason"]: link["context"] for link in run["links"]}
    assert links["run started"]["trace_id"] == f"0x{original_trace}"
    stopped_at = step_started.metadata["traceparent"].split("-")
    assert (links["resumed after"]["trace_id"], links["resumed after"]["span_id"]) == (
        f"0x{stopped_at[1]}",
        f"0x{stopped_at[2]}",
    )
    # The child it hands off to continues the resume's trace.
    reviewer = next(span for span in spans if span["name"] == "invoke_workflow reviewer")
    assert reviewer["context"]["trace_id"] == run["context"]["trace_id"]
    # The resumer took the run over from the killed worker's expired lease, and counted it.
    [exported_metrics] = exported(Path(f"{resumed_spans}.metrics"))
    takeovers = [
        point
        for resource in exported_metrics["resource_metrics"]
        for scope in resource["scope_metrics"]
        for metric in scope["metrics"]
        if metric["name"] == "agentfold.lease.takeovers"
        for point in metric["data"]["data_points"]
    ]
    assert [(point["attributes"]["gen_ai.workflow.name"], point["value"]) for point in takeovers] == [("writer", 1)]


# -- what the store holds -------------------------------------------------------------------------------------------


async def test_store_gauges_report_runs_by_state_stalled_runs_and_breakers(sql_url: str) -> None:
    reader = InMemoryMetricReader()
    runtime = agentfold.Runtime()
    runtime.breaker("mail", failure_threshold=1)

    async def done(ctx: agentfold.WorkflowContext) -> str:
        return "done"

    async def waits(ctx: agentfold.WorkflowContext) -> Any:
        return await ctx.wait_for("go")

    runtime.workflow(name="done")(done)
    runtime.workflow(name="waits")(waits)
    async with agentfold.connect(sql_url) as store:
        client = runtime.client(store)
        async with runtime.worker(store):
            await client.start("done", workflow_id="run-done")
            await client.result("run-done", timeout=GUARD)
            await client.start("waits", workflow_id="run-waits")
            async with asyncio.timeout(GUARD):
                async with store.subscribe(types=["WaitStarted"]) as subscription:
                    await anext(aiter(subscription))  # the run waits for its signal
        await client.start("nobody-serves-this", workflow_id="run-stalled")
        breaker = CircuitBreaker(store, "mail", runtime.breakers["mail"])
        await breaker.failed(await breaker.acquire("k"), RuntimeError("the mail server is down"), "k")

        def observed(name: str) -> dict[str, float]:
            data = reader.get_metrics_data()
            assert data is not None
            return {
                next(iter(point.attributes.values()), "") if point.attributes else "": point.value
                for resource in data.resource_metrics
                for scope in resource.scope_metrics
                for metric in scope.metrics
                if metric.name == name
                for point in metric.data.data_points
            }

        async with StoreGauges(
            store, sql_url, runtime=runtime, meter_provider=MeterProvider(metric_readers=[reader])
        ) as gauges:
            runs = observed("agentfold.runs")
            assert {state: count for state, count in runs.items() if count} == {
                "Completed": 1,
                "Stalled": 2,  # the waiting run's worker stopped, and nobody serves the third
            }
            assert observed("agentfold.runs.stalled") == {"": 2}
            assert observed("agentfold.breaker.state") == {"mail": 2}
            async with runtime.worker(store):
                await client.signal("run-waits", "go", {"n": 1})
                await client.result("run-waits", timeout=GUARD)
            await gauges.refresh()
            runs = observed("agentfold.runs")
            assert {state: count for state, count in runs.items() if count} == {"Completed": 2, "Stalled": 1}


# -- an integration's agent and token usage -------------------------------------------------------------------------


async def test_a_pydantic_ai_agent_run_is_invoke_agent_with_its_token_usage(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from agentfold.integrations.pydantic_ai import AgentfoldDurability, DurableAgent

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("quote", {"order": "o-9"}, tool_call_id="q-1")])
        return ModelResponse(parts=[TextPart("quoted 17")])

    agent = Agent(FunctionModel(respond), name="quoter", capabilities=[AgentfoldDurability()])

    @agent.tool_plain
    def quote(order: str) -> int:
        return 17

    runtime = agentfold.Runtime()
    quoter = DurableAgent(runtime, agent)
    async with agentfold.connect(f"sqlite:///{tmp_path / 'store.db'}") as store, runtime.worker(store):
        await quoter.start(store, "quote o-9", run_id="quote-1")
        assert await quoter.result(store, "quote-1", timeout=GUARD) == "quoted 17"
        recorded = await runtime.client(store).result("quote-1")
    spans = exporter.get_finished_spans()
    run = named(spans, "invoke_agent quoter")
    assert run.attributes is not None
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert run.attributes["gen_ai.agent.name"] == "quoter"
    assert run.attributes["gen_ai.agent.id"] == "quote-1"
    assert run.attributes["gen_ai.workflow.name"] == "pydantic_ai:quoter"
    usage = recorded["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert (run.attributes["gen_ai.usage.input_tokens"], run.attributes["gen_ai.usage.output_tokens"]) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    requests = [span for span in spans if span.attributes and "gen_ai.usage.input_tokens" in span.attributes]
    requests = [span for span in requests if span.name.startswith("execute_tool")]
    assert len(requests) == 2, [span.name for span in spans]
    assert all(parent_of(spans, span) is run for span in requests)
    assert (
        sum(int(span.attributes["gen_ai.usage.input_tokens"]) for span in requests if span.attributes)
        == (usage["input_tokens"])
    )
    tool = [span for span in spans if span.attributes and span.attributes.get("gen_ai.tool.name", "").endswith(":q-1")]
    assert len(tool) == 1 and parent_of(spans, tool[0]) is run


# -- the HTTP API ---------------------------------------------------------------------------------------------------


async def test_an_append_through_the_http_api_continues_the_callers_trace(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    import httpx

    from tests.api_server import api_only_app, bearer, running, token_for

    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with agentfold.connect(f"sqlite:///{tmp_path / 'api.db'}") as store:
        token = await token_for(store, "researcher", write=["notes-*"], read=["notes-*"])
        async with running(api_only_app(store)) as base, httpx.AsyncClient(base_url=f"{base}/api/v1") as http:
            headers = {**bearer(token), "traceparent": f"00-{caller_trace}-{caller_span}-01"}
            body = {"events": [{"type": "Noted", "data": {"n": 1}}]}
            answered = await http.post("/streams/notes-1", json=body, headers=headers)
            assert answered.status_code == 200, answered.text
            untraced = await http.post("/streams/notes-2", json=body, headers=bearer(token))
            assert untraced.status_code == 200, untraced.text
        [noted] = [event async for event in store.read_stream("notes-1")]
        [other] = [event async for event in store.read_stream("notes-2")]
    appends = {
        span.attributes["agentfold.stream.id"]: span
        for span in exporter.get_finished_spans()
        if span.name == "append" and span.attributes
    }
    append = appends["notes-1"]
    assert append.parent is not None and append.parent.is_remote
    assert (append.context.trace_id, append.parent.span_id) == (int(caller_trace, 16), int(caller_span, 16))
    assert noted.metadata["traceparent"].split("-")[1:3] == [caller_trace, f"{append.context.span_id:016x}"]
    assert appends["notes-2"].parent is None and other.metadata["traceparent"].split("-")[1] != caller_trace
