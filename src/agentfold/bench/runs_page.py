"""The inspector's runs page over a store holding many runs: how long its first page takes, through the app itself.

The store gets `runs` runs written as the runtime writes them (started, a step, an outcome; some failed, some
waiting for a signal), the runs index is folded from the log (where appends kept it, folded again, as `agentfold
reindex` does), and then the page is requested over ASGI as a browser
would (HTML, counts per state and the workflow list included), unfiltered, filtered by state, and deep in the
listing through its cursor.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Final

import httpx

from agentfold.bench import run_events
from agentfold.events import NO_STREAM
from agentfold.runs_index import RunsIndex
from agentfold.runtime import history as h
from agentfold.store import EventStore
from agentfold.web.app import create_app
from agentfold.web.settings import ServeSettings

Figures = dict[str, float]

APPEND_CONCURRENCY: Final = 500
REQUESTS: Final = 20
DEEP_PAGES: Final = 20


async def populate(store: EventStore, runs: int) -> None:
    """Append `runs` runs, many appends in flight at once (each run is one append to its own stream)."""
    for start in range(0, runs, APPEND_CONCURRENCY):
        batch = range(start, min(runs, start + APPEND_CONCURRENCY))
        await asyncio.gather(
            *(
                store.append(f"{h.WORKFLOW_STREAM_PREFIX}bench-{index:07d}", run_events(index), NO_STREAM)
                for index in batch
            )
        )


async def _timed_get(client: httpx.AsyncClient, url: str) -> float:
    began = time.perf_counter()
    response = await client.get(url)
    elapsed = (time.perf_counter() - began) * 1000
    response.raise_for_status()
    return elapsed


async def _median(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    await client.get(url)  # the first request warms the connections and the template cache
    times = sorted([await _timed_get(client, url) for _ in range(REQUESTS)])
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


async def measure_runs_page(url: str, store: EventStore, runs: int = 100_000) -> Figures:
    """Populate `runs` runs, build the index, and time the runs page (median and p95 of 20 requests)."""
    began = time.perf_counter()
    await populate(store, runs)
    populate_s = time.perf_counter() - began
    figures: Figures = {"runs_page_runs": float(runs), "runs_page_populate_runs_per_s": runs / populate_s}
    settings = ServeSettings(store_url=url)
    app = create_app(store, settings)
    async with RunsIndex(store, url) as index:
        began = time.perf_counter()
        if index.kept_by_store:  # appends kept it: what is left to time is folding it from the log again
            await index.rebuild()
            figures["runs_index_rebuild_runs_per_s"] = runs / (time.perf_counter() - began)
        else:
            applied = await index.catch_up()
            figures["runs_index_build_events_per_s"] = applied / (time.perf_counter() - began)
        app.state.index = index
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            median, p95 = await _median(client, "/runs")
            figures["runs_page_first_ms"] = median
            figures["runs_page_first_p95_ms"] = p95
            figures["runs_page_failed_filter_ms"], _ = await _median(client, "/runs?status=Failed")
            cursor: Any = None
            for _ in range(DEEP_PAGES):
                listing = (await client.get("/runs.json", params={"after": cursor} if cursor else {})).json()
                cursor = listing["next_cursor"]
            figures["runs_page_deep_ms"], _ = await _median(client, f"/runs?after={cursor}")
            figures["runs_json_first_ms"], _ = await _median(client, "/runs.json")
    return figures
