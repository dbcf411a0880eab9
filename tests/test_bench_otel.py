"""`agentfold bench --otel` runs (tiny sizes): both sides measured, and the process left as it was found."""

from __future__ import annotations

import agentfold
from agentfold import instrumentation
from agentfold.bench.otel_bench import measure_tracing


async def test_tracing_figures_on_and_off_leave_no_observer_behind() -> None:
    async with agentfold.connect("memory://") as store:
        figures = await measure_tracing(store, 0.2)
    for writers in (1, 16):
        for side in ("off", "on"):
            assert figures[f"otel_{side}_append_{writers}_writers_events_per_s"] > 0
        assert figures[f"otel_on_vs_off_append_{writers}_writers"] > 0
    assert instrumentation.observer is None
