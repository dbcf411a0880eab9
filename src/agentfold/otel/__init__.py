"""OpenTelemetry for agentfold (`pip install 'agentfold[otel]'`): off until `instrument()` is called.

``instrument()`` installs an observer (`agentfold.instrumentation`) that reports this process's appends, reads,
deliveries, runs and steps as spans in the OpenTelemetry GenAI and database semantic conventions, records the trace
context of each append in its events' metadata (W3C ``traceparent``) so whoever picks the events up continues the
trace, and records metrics. It uses the global tracer and meter providers unless given others: configure the SDK
(exporters, sampling, resource) the usual way, then call it. See docs/observability.md.
"""

from __future__ import annotations

from opentelemetry import metrics, trace

from agentfold import instrumentation
from agentfold.otel.store_gauges import StoreGauges
from agentfold.otel.tracing import OpenTelemetryObserver

__all__ = ["OpenTelemetryObserver", "StoreGauges", "instrument", "uninstrument"]


def instrument(
    tracer_provider: trace.TracerProvider | None = None, meter_provider: metrics.MeterProvider | None = None
) -> OpenTelemetryObserver:
    """Report everything this process does with agentfold from now on (replacing an earlier `instrument`)."""
    observer = OpenTelemetryObserver(tracer_provider, meter_provider)
    instrumentation.install(observer)
    return observer


def uninstrument() -> None:
    """Stop reporting: every call site is back to doing nothing more than with no SDK at all."""
    instrumentation.uninstall()
