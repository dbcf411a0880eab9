"""Two agents for the tracing tests: `writer` drafts and hands the draft to `reviewer` as a child run.

``python -m tests.workflow_apps.traced serve URL WORKFLOWS SPANS [hang]`` runs a worker serving the comma-separated
WORKFLOWS, instrumented with OpenTelemetry, exporting each span as one JSON line to the file SPANS as soon as it
ends, and its metrics to SPANS.metrics when it stops (SIGTERM). With ``hang``, the writer's draft step prints
``HANGING`` and never returns (the test SIGKILLs it there).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import agentfold
import agentfold.otel
from agentfold.runtime import Runtime, WorkflowContext

HANG = {"on": False}


async def draft(topic: str) -> str:
    if HANG["on"]:
        os.write(1, b"HANGING\n")
        await asyncio.Event().wait()
    return f"a draft about {topic}"


async def review(text: str) -> str:
    return f"reviewed: {text}"


async def writer(ctx: WorkflowContext, topic: str) -> str:
    text = await ctx.step("draft", draft, topic)
    child = await ctx.start_child("reviewer", text, workflow_id=f"{ctx.workflow_id}/review")
    result: str = await ctx.child_result(child)
    return result


async def reviewer(ctx: WorkflowContext, text: str) -> str:
    return await ctx.step("review", review, text)


WORKFLOWS = {"writer": writer, "reviewer": reviewer}


def make_runtime(names: list[str]) -> Runtime:
    made = Runtime()
    for name in names:
        made.workflow(name=name)(WORKFLOWS[name])
    return made


runtime = make_runtime(list(WORKFLOWS))
"""Both agents: what the test's client starts and awaits them with."""


async def serve(url: str, names: list[str], spans: str) -> None:
    out = open(spans, "a", buffering=1)
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n"))
    )
    metrics_out = open(f"{spans}.metrics", "w")
    exporter = ConsoleMetricExporter(out=metrics_out, formatter=lambda data: data.to_json(indent=None) + "\n")
    meters = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)])
    agentfold.otel.instrument(tracer_provider=provider, meter_provider=meters)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    async with agentfold.connect(url) as store, make_runtime(names).worker(store):
        os.write(1, b"READY\n")
        await stopping.wait()
    meters.shutdown()
    metrics_out.close()


if __name__ == "__main__":
    command, url, names, spans, *rest = sys.argv[1:]
    assert command == "serve"
    HANG["on"] = rest == ["hang"]
    asyncio.run(serve(url, names.split(","), spans))
