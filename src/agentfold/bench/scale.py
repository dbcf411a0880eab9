"""`agentfold bench --scale`: the costs that must not grow with the log, measured on stores of growing size.

For each size, a fresh store is filled through the public API (big appends, many in flight, so the backend's group
committer writes them in large transactions): per 50 events, one domain stream of 46 events (`order-*`, four event
types) and one workflow run of 4 events (`workflow-*`, as the runtime writes them: 1 in 10 failed, 1 in 20 waiting
for a signal). So 5M events hold 100k streams of orders and 100k runs. Then, on that store:

- one-event appends to existing streams, one at a time: p50 and p99;
- one-event appends from 16 concurrent writers: events per second;
- a worker's start until it is ready, on a fresh connection: the first worker the store ever had, and a restart;
- the first trigger dispatch of that first worker: from appending the triggering event to the run it starts
  (a new trigger group reads the whole log for its event type);
- the `agentfold workflows --limit 50` path (the runs index brought up to date, one page, the page's runs folded),
  after the index was built once (that build is reported too);
- bytes per event on disk beside the payload bytes per event.

Each figure is reported with its ratio to the smallest size. The figures come from one run, on one machine, at
the same hour: on a shared machine only the ratios mean much (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Final

import msgspec

import agentfold
from agentfold.bench import Figures, Progress, environment, event_payload, measure_appends, scratch_store
from agentfold.bench.runs_page import run_events
from agentfold.connect import redact
from agentfold.events import ANY, NO_STREAM, NewEvent
from agentfold.runs_index import RunsIndex, RunsQuery
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext
from agentfold.runtime import history as h
from agentfold.runtime.inspect import run_summary
from agentfold.store import EventStore

SCALE_BACKENDS: Final = ("memory", "sqlite", "postgres")
DEFAULT_SIZES: Final = (20_000, 200_000)
"""Small enough to run in about a minute per backend; `--scale-sizes` names others (5,000,000 takes tens of
minutes to fill on SQLite)."""
UNIT_EVENTS: Final = 50
"""Events per unit of fill: one domain stream and one run."""
RUN_EVENTS: Final = 4
DOMAIN_EVENTS: Final = UNIT_EVENTS - RUN_EVENTS
DOMAIN_TYPES: Final = ("OrderPlaced", "OrderUpdated", "OrderPaid", "OrderShipped")
FILL_TASKS: Final = 32
"""Units appended at once while filling: their appends share the backend's group commits."""
KICK_TYPE: Final = "ScaleBenchKick"
"""The event type of the bench's trigger: appended once per size, after the fill."""
PAGE_LIMIT: Final = 50
WORKER_STARTS: Final = 3
RUNS_PAGE_REPEATS: Final = 5
DISPATCH_TIMEOUT: Final = 600.0

RATIO_FIGURES: Final = (
    "append_1_writer_p50_ms",
    "append_1_writer_p99_ms",
    "append_16_writers_events_per_s",
    "worker_ready_ms",
    "worker_first_ready_ms",
    "trigger_first_dispatch_ms",
    "runs_page_ms",
    "bytes_per_event",
)
"""The figures whose ratio to the smallest size is reported (`<figure>_vs_smallest`)."""

runtime = Runtime(default_retry=NO_RETRY)


@runtime.workflow(name="scale_bench_kicked")
async def kicked(ctx: WorkflowContext, event: dict[str, Any]) -> int:
    """The run a kick starts: it only returns the kick's position."""
    return int(event["position"])


KICK_TRIGGER: Final = runtime.trigger(KICK_TYPE, kicked)


def unit_events(unit: int) -> tuple[tuple[str, list[NewEvent]], tuple[str, list[NewEvent]]]:
    """The two appends of one unit of fill: a domain stream of 46 events and a run of 4."""
    domain = [
        NewEvent(DOMAIN_TYPES[index % len(DOMAIN_TYPES)], event_payload(unit * DOMAIN_EVENTS + index))
        for index in range(DOMAIN_EVENTS)
    ]
    return (f"order-{unit:08d}", domain), (f"{h.WORKFLOW_STREAM_PREFIX}scale-{unit:08d}", run_events(unit))


async def fill(store: EventStore, events: int, progress: Progress, label: str) -> int:
    """Fill an empty store with `events` events (rounded up to whole units); the number of units written."""
    units = -(-events // UNIT_EVENTS)
    next_unit = 0
    done = 0
    began = time.perf_counter()
    shown = began

    async def appender() -> None:
        nonlocal next_unit, done, shown
        while next_unit < units:
            unit = next_unit
            next_unit += 1
            (domain_id, domain), (run_id, run) = unit_events(unit)
            await asyncio.gather(store.append(domain_id, domain, NO_STREAM), store.append(run_id, run, NO_STREAM))
            done += 1
            now = time.perf_counter()
            if now - shown >= 2.0:
                shown = now
                rate = done * UNIT_EVENTS / (now - began)
                progress(f"{label}: filling, {done * UNIT_EVENTS:,} of {units * UNIT_EVENTS:,} events ({rate:,.0f}/s)")

    await asyncio.gather(*(appender() for _ in range(FILL_TASKS)))
    return units


async def settle(backend: str, url: str, store: EventStore) -> None:
    """After a bulk fill, what the database would soon do on its own, done now so it does not run in the middle
    of a measurement: PostgreSQL's VACUUM ANALYZE (autovacuum after many inserts), SQLite's WAL checkpoint."""
    if backend == "postgres":
        import psycopg

        from agentfold.backends.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        schema = store.schema
        async with await psycopg.AsyncConnection.connect(url.split("?")[0], autocommit=True) as connection:
            for table in ("events", "streams", "checkpoints", "snapshots", "trimmed_event_ids"):
                exists = await (await connection.execute("SELECT to_regclass(%s)", (f'"{schema}".{table}',))).fetchone()
                if exists and exists[0] is not None:
                    await connection.execute(f'VACUUM (ANALYZE) "{schema}".{table}'.encode())
    elif backend == "sqlite":
        import sqlite3

        from agentfold.backends.sqlite import SQLiteStore

        assert isinstance(store, SQLiteStore)
        path = store.path

        def checkpoint() -> None:
            connection = sqlite3.connect(path, timeout=60)
            try:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                connection.close()

        await asyncio.to_thread(checkpoint)


async def storage_figures(backend: str, url: str, store: EventStore, events: int) -> Figures:
    """Bytes on disk per event: everything the store keeps (tables, indexes), the events table alone, its indexes."""
    if backend == "sqlite":
        import sqlite3

        from agentfold.backends.sqlite import SQLiteStore

        assert isinstance(store, SQLiteStore)
        path = store.path

        def measure() -> dict[str, int]:
            connection = sqlite3.connect(path, timeout=60)
            try:
                sizes = dict(connection.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
                indexes = [
                    str(row[0])
                    for row in connection.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
                    )
                ]
            finally:
                connection.close()
            return {
                "total": sum(int(size) for size in sizes.values()),
                "table": int(sizes.get("events", 0)),
                "indexes": sum(int(sizes.get(name, 0)) for name in indexes),
            }

        sizes = await asyncio.to_thread(measure)
    elif backend == "postgres":
        import psycopg

        from agentfold.backends.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        schema = store.schema
        async with await psycopg.AsyncConnection.connect(url.split("?")[0], autocommit=True) as connection:
            row = await (
                await connection.execute(
                    "SELECT (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'), "
                    "pg_table_size(to_regclass(%s)), pg_indexes_size(to_regclass(%s))",
                    (schema, f'"{schema}".events', f'"{schema}".events'),
                )
            ).fetchone()
        assert row is not None
        sizes = {"total": int(row[0]), "table": int(row[1]), "indexes": int(row[2])}
    else:
        return {}
    return {
        "bytes_per_event": sizes["total"] / events,
        "events_table_bytes_per_event": sizes["table"] / events,
        "events_indexes_bytes_per_event": sizes["indexes"] / events,
    }


async def payload_bytes(store: EventStore, sample: int = 5000) -> float:
    """The mean size of an event's data and metadata as JSON, over the first `sample` events."""
    total = count = 0
    async for event in store.read_all(limit=sample):
        total += len(msgspec.json.encode(event.data)) + len(msgspec.json.encode(event.metadata))
        count += 1
    return total / max(1, count)


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


async def append_latency(store: EventStore, units: int, appends: int) -> Figures:
    """One-event appends, one at a time, each to a random existing domain stream: p50 and p99 in ms."""
    chooser = random.Random(units)
    timings = []
    for index in range(appends):
        stream_id = f"order-{chooser.randrange(units):08d}"
        event = NewEvent("OrderNoted", event_payload(index))
        began = time.perf_counter()
        await store.append(stream_id, [event], ANY)
        timings.append((time.perf_counter() - began) * 1000)
    timings.sort()
    return {"append_1_writer_p50_ms": _percentile(timings, 0.5), "append_1_writer_p99_ms": _percentile(timings, 0.99)}


async def _open_worker(url: str, store: EventStore, name: str) -> tuple[EventStore, Any, float]:
    """A fresh connection (the store itself for memory://) and a started worker on it; the ms it took."""
    began = time.perf_counter()
    connected = store if url.startswith("memory:") else await agentfold.connect(url)
    worker = runtime.worker(connected, worker_id=name, unserved_grace=None)
    await worker.start()
    return connected, worker, (time.perf_counter() - began) * 1000


async def _close_worker(store: EventStore, connected: EventStore, worker: Any) -> None:
    await worker.stop()
    if connected is not store:
        await connected.close()


async def worker_figures(url: str, store: EventStore) -> Figures:
    """The first worker's start (no registry snapshot yet), its first trigger dispatch, and restarts."""
    figures: Figures = {}
    tag = uuid.uuid4().hex[:6]
    connected, worker, figures["worker_first_ready_ms"] = await _open_worker(url, store, f"scale-{tag}-first")
    try:
        kick = NewEvent(KICK_TYPE, {"kick": tag})
        began = time.perf_counter()
        await store.append(f"kick-{tag}", [kick])
        figures["trigger_first_dispatch_ms"] = await _until_started(store, began, f"{KICK_TRIGGER.name}-{kick.id}")
    finally:
        await _close_worker(store, connected, worker)
    starts = []
    for attempt in range(WORKER_STARTS):
        connected, worker, elapsed = await _open_worker(url, store, f"scale-{tag}-{attempt}")
        starts.append(elapsed)
        await _close_worker(store, connected, worker)
    figures["worker_ready_ms"] = statistics.median(starts)
    return figures


async def _until_started(store: EventStore, began: float, workflow_id: str) -> float:
    """Ms from `began` until the run `workflow_id` has started."""
    stream_id = h.workflow_stream(workflow_id)
    deadline = began + DISPATCH_TIMEOUT
    while await store.stream_version(stream_id) == 0:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the trigger did not start {workflow_id!r} within {DISPATCH_TIMEOUT:g} s")
        await asyncio.sleep(0.002)
    return (time.perf_counter() - began) * 1000


async def runs_page_figures(url: str, store: EventStore) -> Figures:
    """`agentfold workflows --limit 50`: the index brought up to date, one page, the page's runs folded."""
    figures: Figures = {}
    async with RunsIndex(store, url, page_size=2000) as index:
        began = time.perf_counter()
        await index.catch_up()
        figures["runs_index_build_s"] = time.perf_counter() - began
    timings = []
    for _ in range(RUNS_PAGE_REPEATS):
        began = time.perf_counter()
        async with RunsIndex(store, url) as index:
            await index.catch_up()
            page = await index.page(RunsQuery(limit=PAGE_LIMIT))
        summaries = await asyncio.gather(*(run_summary(store, row.workflow_id) for row in page.runs))
        timings.append((time.perf_counter() - began) * 1000)
        assert len(summaries) == min(PAGE_LIMIT, sum(page.counts.values()))
    figures["runs_page_ms"] = statistics.median(timings)
    return figures


async def measure_size(
    backend: str, base_url: str | None, size: int, quick: bool, progress: Progress
) -> dict[str, float]:
    """Fill a fresh store to `size` events and measure it."""
    label = f"{backend} {size:,}"
    async with scratch_store(backend, base_url) as (url, store):
        began = time.perf_counter()
        units = await fill(store, size, progress, label)
        filled_s = time.perf_counter() - began
        events = units * UNIT_EVENTS
        figures: Figures = {
            "events": float(events),
            "streams": float(units * 2),
            "runs": float(units),
            "fill_s": filled_s,
            "fill_events_per_s": events / filled_s,
        }
        progress(f"{label}: settling the database after the fill")
        await settle(backend, url, store)
        progress(f"{label}: bytes per event")
        figures.update(await storage_figures(backend, url, store, events))
        figures["payload_bytes_per_event"] = await payload_bytes(store)
        progress(f"{label}: one-event appends, one writer")
        figures.update(await append_latency(store, units, 300 if quick else 1000))
        progress(f"{label}: one-event appends, 16 writers")
        figures["append_16_writers_events_per_s"] = await measure_appends(store, 16, 1.0 if quick else 3.0)
        progress(f"{label}: worker start, first trigger dispatch, restarts")
        figures.update(await worker_figures(url, store))
        progress(f"{label}: runs index build and the runs page")
        figures.update(await runs_page_figures(url, store))
    return figures


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each size's figures beside `<figure>_vs_smallest`: its ratio to the same figure at the smallest size."""
    if not rows:
        return rows
    smallest = rows[0]["figures"]
    for row in rows:
        row["ratios"] = {
            f"{name}_vs_smallest": row["figures"][name] / smallest[name]
            for name in RATIO_FIGURES
            if name in row["figures"] and smallest.get(name)
        }
    return rows


async def run_scale(
    backends: Sequence[str],
    base_urls: dict[str, str],
    sizes: Sequence[int],
    quick: bool = False,
    progress: Progress = print,
) -> dict[str, Any]:
    """Measure every backend at every size (smallest first); the result is what `--json` writes."""
    results: dict[str, Any] = {"environment": environment(), "sizes": sorted(sizes), "backends": {}}
    results["environment"]["load_average_at_start"] = _load_average()
    for backend in backends:
        url = base_urls.get(backend)
        rows = []
        for size in sorted(sizes):
            figures = await measure_size(backend, url, size, quick, progress)
            rows.append({"size": size, "figures": figures})
        results["backends"][backend] = {"url": redact(url) if url else None, "sizes": with_ratios(rows)}
    results["environment"]["load_average_at_end"] = _load_average()
    return results


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def parse_sizes(text: str) -> list[int]:
    """`20000,1000000` (underscores allowed) as sizes; `ValueError` naming what is wrong."""
    sizes = []
    for part in text.split(","):
        cleaned = part.strip().replace("_", "")
        if not cleaned.isdigit() or int(cleaned) < UNIT_EVENTS:
            raise ValueError(f"{part.strip()!r} is not a store size (a whole number of events, at least {UNIT_EVENTS})")
        sizes.append(int(cleaned))
    return sorted(set(sizes))


def figure_rows(result: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(figure, one cell per size with its ratio to the smallest) for a backend's result, for tables."""
    rows: list[dict[str, Any]] = result["sizes"]
    names = dict.fromkeys(name for row in rows for name in row["figures"])
    for name in names:
        cells = []
        for row in rows:
            value = row["figures"].get(name)
            ratio = row.get("ratios", {}).get(f"{name}_vs_smallest")
            cell = "" if value is None else format_figure(name, value)
            if ratio is not None and row is not rows[0]:
                cell += f" ({ratio:.2f}x)"
            cells.append(cell)
        yield name, cells


def format_figure(name: str, value: float) -> str:
    if name in ("events", "streams", "runs") or name.endswith("_per_s"):
        return f"{value:,.0f}"
    if name.endswith("_bytes_per_event") or name == "bytes_per_event":
        return f"{value:,.0f}"
    if name.endswith("_ms"):
        return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"
    return f"{value:,.2f}"


def markdown(results: dict[str, Any]) -> str:
    """One table per backend: a row per figure, a column per size (ratio to the smallest size in brackets)."""
    env = results["environment"]
    lines = [
        f"{env['measured_at']}, {env['cpus']} CPUs, load average {env.get('load_average_at_start')} at the start "
        f"and {env.get('load_average_at_end')} at the end"
    ]
    for backend, result in results["backends"].items():
        sizes = [row["size"] for row in result["sizes"]]
        lines += ["", f"{backend}:", ""]
        lines.append("| figure | " + " | ".join(f"{size:,} events" for size in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in figure_rows(result)]
    return "\n".join(lines)


__all__ = ["DEFAULT_SIZES", "SCALE_BACKENDS", "fill", "markdown", "parse_sizes", "run_scale", "unit_events"]
