"""What OpenTelemetry costs: appends with no observer installed and with `agentfold.otel.instrument()` over an SDK
that samples every span and exports it in batches, as production does (to an in-memory exporter, so no network is
timed), measured in turns on one
store, so both sides see the same machine. Needs the otel extra."""

from __future__ import annotations

import statistics
from typing import Final

from agentfold.store import EventStore

Figures = dict[str, float]

TURNS: Final = 4


async def measure_tracing(store: EventStore, seconds: float) -> Figures:
    """Median one-writer and 16-writer append rates, tracing off and on, and the on/off ratios."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agentfold.bench import measure_appends
    from agentfold.otel import instrument, uninstrument

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    rates: dict[str, list[float]] = {}
    for _ in range(TURNS):
        for traced in (False, True):
            if traced:
                instrument(tracer_provider, meter_provider)
            try:
                for writers in (1, 16):
                    rate = await measure_appends(store, writers, seconds / TURNS)
                    rates.setdefault(
                        f"otel_{'on' if traced else 'off'}_append_{writers}_writers_events_per_s", []
                    ).append(rate)
            finally:
                if traced:
                    uninstrument()
                    exporter.clear()
    figures = {name: statistics.median(values) for name, values in rates.items()}
    for writers in (1, 16):
        on = figures[f"otel_on_append_{writers}_writers_events_per_s"]
        off = figures[f"otel_off_append_{writers}_writers_events_per_s"]
        figures[f"otel_on_vs_off_append_{writers}_writers"] = on / off
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return figures
