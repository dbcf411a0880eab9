"""`agentfold bench --scale`: the costs that must not grow with the log, measured on stores of growing size.

For each size, a fresh store is filled through the public API (big appends, many in flight, so the backend's group
committer writes them in large transactions): per 50 events, one domain stream of 46 events (`order-*`, four event
types) and one workflow run of 4 events (`workflow-*`, as the runtime writes them: 1 in 10 failed, 1 in 20 waiting
for a signal). So 5M events hold 100k streams of orders and 100k runs. Then, on that store:

- one-event appends, one at a time, to a stream of the writer's own and to random existing streams: p50 and p99;
- one-event appends from 16 concurrent writers: events per second;
- a worker's start until it is ready, on a fresh connection: the first workers the store ever had (several, started
  one after another as a fleet starts, before any has saved a registry snapshot), and a restart (which finds the
  registry snapshot the worker before it saved);
- the first trigger dispatches of those first workers: from appending a triggering event to the run it starts
  (a new trigger group reads the whole log for its event type), the median of the group's first three;
- the `agentfold workflows --limit 50` path (the runs index brought up to date, one page, the page's runs folded),
  after the index was built once (that build is reported too);
- bytes per event on disk beside the payload bytes per event.

Each figure is reported with its ratio to the smallest size. The figures that depend most on the disk's latency
of the moment (appends, worker restarts, the runs page) are measured in turns with a reference store of 20,000
events filled the same way, and also reported as `<figure>_vs_reference`: the ratio to the reference measured in
the same minutes, which a busy disk or the machine's other load moves much less than the figure itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

import agentfold
from agentfold.bench import (
    FIRST_WAITING,
    WAITING_EVERY,
    Figures,
    Progress,
    environment,
    event_payload,
    measure_appends,
    run_events,
    scratch_store,
)
from agentfold.connect import redact
from agentfold.events import ANY, NO_STREAM, NewEvent
from agentfold.runs_index import RunsIndex, RunsQuery
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext
from agentfold.runtime import history as h
from agentfold.runtime.inspect import run_summary
from agentfold.store import EventStore

SCALE_BACKENDS: Final = ("memory", "sqlite", "postgres", "redis")
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
"""The event type of the bench's trigger: appended `KICKS` times per size, after the fill."""
WAITING_RUNS: Final = 20
"""The runs a fill leaves waiting for a signal, at every size (`first_waiting_unit`)."""
REFERENCE_SIZE: Final = 20_000
"""The size of the reference store measured in turns with each size (the smallest size, if smaller)."""
PAGE_LIMIT: Final = 50
KICKS: Final = 3
"""Triggering events appended one after another per size: the median of the trigger group's first dispatches is
reported: one dispatch alone, which waits on wake-ups and fsyncs, moved too much from one try to the next."""
DISPATCH_TIMEOUT: Final = 600.0


@dataclass(frozen=True)
class Turns:
    """How much each size is measured: turns with the reference, one-at-a-time appends per turn, seconds of 16
    writers per turn, worker restarts and runs pages per side, and the first workers started on each store (few:
    each runs while the next starts, and wakes for its start)."""

    rounds: int = 4
    appends: int = 1000
    seconds: float = 1.5
    worker_starts: int = 5
    runs_pages: int = 9
    first_workers: int = 3

    @classmethod
    def quick(cls) -> Turns:
        return cls(rounds=2, appends=150, seconds=1.0, worker_starts=3, runs_pages=3, first_workers=3)

    @classmethod
    def tiny(cls) -> Turns:
        """For tests: one of everything."""
        return cls(rounds=1, appends=10, seconds=0.1, worker_starts=1, runs_pages=1, first_workers=1)


RATIO_FIGURES: Final = (
    "append_1_writer_p50_ms",
    "append_1_writer_p99_ms",
    "append_random_stream_p50_ms",
    "append_random_stream_p99_ms",
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


def unit_events(unit: int, units: int) -> tuple[tuple[str, list[NewEvent]], tuple[str, list[NewEvent]]]:
    """The two appends of unit `unit` of a fill of `units`: a domain stream of 46 events and a run of 4."""
    domain = [
        NewEvent(DOMAIN_TYPES[index % len(DOMAIN_TYPES)], event_payload(unit * DOMAIN_EVENTS + index))
        for index in range(DOMAIN_EVENTS)
    ]
    run = run_events(unit, signalled=unit < first_waiting_unit(units))
    return (f"order-{unit:08d}", domain), (f"{h.WORKFLOW_STREAM_PREFIX}scale-{unit:08d}", run)


def first_waiting_unit(units: int) -> int:
    """The first unit of a fill of `units` whose run still waits for its signal: the runs that wait before it got
    theirs, so that every size holds the same unfinished runs (`WAITING_RUNS`), as a fleet whose in-flight work does
    not grow with its history. A worker's start costs what is unfinished; a fill whose waiting runs all stayed open
    would measure the growth of the open runs, not of the log."""
    waiting = _waiting_runs(units)
    return 0 if waiting <= WAITING_RUNS else FIRST_WAITING + WAITING_EVERY * (waiting - WAITING_RUNS)


def open_runs_after_fill(units: int) -> int:
    """How many runs a fill of `units` leaves unfinished."""
    return min(_waiting_runs(units), WAITING_RUNS)


def _waiting_runs(units: int) -> int:
    """How many of the runs of units 0 to `units` - 1 wait for a signal (`agentfold.bench.waits`)."""
    return (units - FIRST_WAITING - 1) // WAITING_EVERY + 1 if units > FIRST_WAITING else 0


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
            (domain_id, domain), (run_id, run) = unit_events(unit, units)
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
    elif backend == "redis":
        return await redis_storage_figures(store, events)
    else:
        return {}
    return {
        "bytes_per_event": sizes["total"] / events,
        "events_table_bytes_per_event": sizes["table"] / events,
        "events_indexes_bytes_per_event": sizes["indexes"] / events,
    }


REDIS_KEY_KINDS: Final = ("s", "all", "ids", "idx", "versions", "type")
"""The Redis key kinds reported on their own (``prefix:s:*`` summed); every other key is in the total only."""


async def redis_storage_figures(store: EventStore, events: int) -> Figures:
    """Bytes in Redis memory per event: ``MEMORY USAGE ... SAMPLES 0`` (every element counted) of each key under
    the store's prefix, in all and per key kind (the per-stream keys, the global stream, the id records (``ids``
    in a layout-1 store, ``idx`` in layout 2), the versions and the type indexes (``prefix:type:*`` summed).
    ``table`` is the per-stream keys and the global stream, ``indexes`` the id records and the versions."""
    from agentfold.backends.redis import RedisStore, make_client

    assert isinstance(store, RedisStore)
    prefix = store.prefix
    kinds = dict.fromkeys(REDIS_KEY_KINDS, 0)
    total = 0
    client = make_client(store.settings, None)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            size = int(await client.memory_usage(key, samples=0) or 0)
            total += size
            kind = key.decode()[len(prefix) + 1 :].partition(":")[0]
            if kind in kinds:
                kinds[kind] += size
    finally:
        await client.aclose()
    figures: Figures = {
        "bytes_per_event": total / events,
        "events_table_bytes_per_event": (kinds["s"] + kinds["all"]) / events,
        "events_indexes_bytes_per_event": (kinds["ids"] + kinds["idx"] + kinds["versions"]) / events,
    }
    figures.update({f"redis_{kind}_bytes_per_event": size / events for kind, size in kinds.items()})
    return figures


async def payload_bytes(store: EventStore, sample: int = 5000) -> float:
    """The mean size of an event's data and metadata as JSON, over the first `sample` events."""
    total = count = 0
    async for event in store.read_all(limit=sample):
        total += len(msgspec.json.encode(event.data)) + len(msgspec.json.encode(event.metadata))
        count += 1
    return total / max(1, count)


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


class Filled:
    """A store filled for the bench: its URL, the open store, and how many units of fill it holds."""

    def __init__(self, url: str, store: EventStore, units: int) -> None:
        self.url = url
        self.store = store
        self.units = units


async def _own_stream_latencies(filled: Filled, stream_id: str, appends: int) -> list[float]:
    """Ms of one-event appends, one at a time, to one stream of the writer's own."""
    timings = []
    for index in range(appends):
        event = NewEvent("OrderNoted", event_payload(index))
        began = time.perf_counter()
        await filled.store.append(stream_id, [event], ANY)
        timings.append((time.perf_counter() - began) * 1000)
    return timings


async def _random_stream_latencies(filled: Filled, chooser: random.Random, appends: int) -> list[float]:
    """Ms of one-event appends, one at a time, each to a random existing domain stream of the fill."""
    timings = []
    for index in range(appends):
        stream_id = f"order-{chooser.randrange(filled.units):08d}"
        event = NewEvent("OrderNoted", event_payload(index))
        began = time.perf_counter()
        await filled.store.append(stream_id, [event], ANY)
        timings.append((time.perf_counter() - began) * 1000)
    return timings


def _latency_figures(name: str, timings: dict[str, list[float]]) -> Figures:
    figures: Figures = {}
    for percentile, fraction in (("p50", 0.5), ("p99", 0.99)):
        measured, reference = (_percentile(sorted(timings[side]), fraction) for side in ("filled", "reference"))
        figures[f"{name}_{percentile}_ms"] = measured
        figures[f"{name}_{percentile}_ms_vs_reference"] = measured / reference
    return figures


async def append_figures(filled: Filled, reference: Filled, turns: Turns) -> Figures:
    """One-event appends: one writer to its own stream, one writer to random existing streams (p50, p99), and 16
    concurrent writers (events/s). Measured in turns with the reference store, so each figure also comes as a
    ratio to the reference measured in the same minutes (`*_vs_reference`): the disk and the machine's other load
    move both alike."""
    rounds, appends, seconds = turns.rounds, turns.appends, turns.seconds
    tag = uuid.uuid4().hex[:6]
    own: dict[str, list[float]] = {"filled": [], "reference": []}
    scattered: dict[str, list[float]] = {"filled": [], "reference": []}
    rates: dict[str, list[float]] = {"filled": [], "reference": []}
    choosers = {"filled": random.Random(filled.units), "reference": random.Random(reference.units)}
    for round_ in range(rounds):
        sides = [("filled", filled), ("reference", reference)]
        for side, target in sides if round_ % 2 == 0 else reversed(sides):
            own[side] += await _own_stream_latencies(target, f"latency-{tag}", appends)
            scattered[side] += await _random_stream_latencies(target, choosers[side], appends)
            rates[side].append(await measure_appends(target.store, 16, seconds))
    rate, reference_rate = statistics.median(rates["filled"]), statistics.median(rates["reference"])
    return {
        **_latency_figures("append_1_writer", own),
        **_latency_figures("append_random_stream", scattered),
        "append_16_writers_events_per_s": rate,
        "append_16_writers_events_per_s_vs_reference": rate / reference_rate,
    }


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


async def _worker_start(filled: Filled, name: str) -> float:
    """Ms from connecting to a worker being ready, on a fresh connection; the worker is stopped again."""
    connected, worker, elapsed = await _open_worker(filled.url, filled.store, name)
    await _close_worker(filled.store, connected, worker)
    return elapsed


async def worker_figures(filled: Filled, reference: Filled, turns: Turns) -> Figures:
    """The first workers' start (no registry snapshot yet), their first trigger dispatch, and restarts (each
    with the registry the worker before saved), in turns with restarts on the reference store.

    The first start is measured `turns.first_workers` times, as a fleet starts on a store: each worker started
    while those before it still run, so none has stopped and saved a registry snapshot yet. The median is
    reported: a single start is a few fsyncs, which move it too much from one try to the next."""
    figures: Figures = {}
    tag = uuid.uuid4().hex[:6]
    store = filled.store
    running: list[tuple[EventStore, Any]] = []
    firsts: list[float] = []
    try:
        for attempt in range(turns.first_workers):
            connected, worker, elapsed = await _open_worker(filled.url, store, f"scale-{tag}-first-{attempt}")
            running.append((connected, worker))
            firsts.append(elapsed)
        figures["worker_first_ready_ms"] = statistics.median(firsts)
        dispatches = []
        for kick_number in range(KICKS):
            kick = NewEvent(KICK_TYPE, {"kick": tag, "number": kick_number})
            began = time.perf_counter()
            await store.append(f"kick-{tag}", [kick])
            dispatches.append(await _until_started(store, began, f"{KICK_TRIGGER.name}-{kick.id}"))
        figures["trigger_first_dispatch_ms"] = statistics.median(dispatches)
    finally:
        for connected, worker in reversed(running):
            await _close_worker(store, connected, worker)
    starts: dict[str, list[float]] = {"filled": [], "reference": []}
    for attempt in range(turns.worker_starts):
        starts["filled"].append(await _worker_start(filled, f"scale-{tag}-{attempt}"))
        starts["reference"].append(await _worker_start(reference, f"scale-{tag}-{attempt}"))
    figures["worker_ready_ms"] = statistics.median(starts["filled"])
    figures["worker_ready_ms_vs_reference"] = figures["worker_ready_ms"] / statistics.median(starts["reference"])
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


async def build_runs_index(filled: Filled) -> float:
    """Bring the store's runs index up to date (the first time: fold the whole log); the seconds it took."""
    async with RunsIndex(filled.store, filled.url) as index:
        began = time.perf_counter()
        await index.catch_up()
        return time.perf_counter() - began


async def _runs_page(filled: Filled) -> float:
    """Ms of `agentfold workflows --limit 50`: the index brought up to date, one page, the page's runs folded."""
    began = time.perf_counter()
    async with RunsIndex(filled.store, filled.url) as index:
        await index.catch_up()
        page = await index.page(RunsQuery(limit=PAGE_LIMIT))
    summaries = await asyncio.gather(*(run_summary(filled.store, row.workflow_id) for row in page.runs))
    assert len(summaries) == min(PAGE_LIMIT, sum(page.counts.values()))
    return (time.perf_counter() - began) * 1000


async def runs_page_figures(filled: Filled, reference: Filled, turns: Turns) -> Figures:
    """The runs index's first build over the filled log, then the runs page, in turns with the reference."""
    figures: Figures = {"runs_index_build_s": await build_runs_index(filled)}
    timings: dict[str, list[float]] = {"filled": [], "reference": []}
    for _ in range(turns.runs_pages):
        timings["filled"].append(await _runs_page(filled))
        timings["reference"].append(await _runs_page(reference))
    figures["runs_page_ms"] = statistics.median(timings["filled"])
    figures["runs_page_ms_vs_reference"] = figures["runs_page_ms"] / statistics.median(timings["reference"])
    return figures


async def measure_size(
    backend: str, base_url: str | None, size: int, reference: Filled, turns: Turns, progress: Progress
) -> dict[str, float]:
    """Fill a fresh store to `size` events and measure it (in turns with `reference` where the figure allows)."""
    label = f"{backend} {size:,}"
    async with scratch_store(backend, base_url) as (url, store):
        began = time.perf_counter()
        units = await fill(store, size, progress, label)
        filled_s = time.perf_counter() - began
        filled = Filled(url, store, units)
        events = units * UNIT_EVENTS
        figures: Figures = {
            "events": float(events),
            "streams": float(units * 2),
            "runs": float(units),
            "open_runs": float(open_runs_after_fill(units)),
            "fill_s": filled_s,
            "fill_events_per_s": events / filled_s,
        }
        progress(f"{label}: settling the database after the fill")
        await settle(backend, url, store)
        progress(f"{label}: bytes per event")
        figures.update(await storage_figures(backend, url, store, events))
        figures["payload_bytes_per_event"] = await payload_bytes(store)
        progress(f"{label}: one-event appends (1 writer, random streams, 16 writers), in turns with the reference")
        figures.update(await append_figures(filled, reference, turns))
        progress(f"{label}: worker start, first trigger dispatch, restarts")
        figures.update(await worker_figures(filled, reference, turns))
        progress(f"{label}: runs index build and the runs page")
        figures.update(await runs_page_figures(filled, reference, turns))
    return figures


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each size's figures beside `<figure>_vs_smallest`: its ratio to the same figure at the smallest size.

    A figure measured in turns with the reference also has its `_vs_reference` ratio compared between sizes
    (`<figure>_vs_reference_vs_smallest`): the reference is one store measured beside every size, so this
    takes out how much the machine moved between the minutes of the smallest size and those of this one,
    which the plain ratio cannot tell from the size's own effect."""
    if not rows:
        return rows
    smallest = rows[0]["figures"]
    names = [*RATIO_FIGURES, *(f"{name}_vs_reference" for name in RATIO_FIGURES)]
    for row in rows:
        row["ratios"] = {
            f"{name}_vs_smallest": row["figures"][name] / smallest[name]
            for name in names
            if name in row["figures"] and smallest.get(name)
        }
    return rows


async def run_scale(
    backends: Sequence[str],
    base_urls: dict[str, str],
    sizes: Sequence[int],
    turns: Turns | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Measure every backend at every size (smallest first); the result is what `--json` writes."""
    reference_size = min(REFERENCE_SIZE, *sizes)
    results: dict[str, Any] = {
        "environment": environment(),
        "sizes": sorted(sizes),
        "reference_size": reference_size,
        "backends": {},
    }
    results["environment"]["load_average_at_start"] = _load_average()
    for backend in backends:
        url = base_urls.get(backend)
        rows = []
        async with scratch_store(backend, url) as (reference_url, reference_store):
            progress(f"{backend}: the reference store ({reference_size:,} events)")
            units = await fill(reference_store, reference_size, progress, f"{backend} reference")
            await settle(backend, reference_url, reference_store)
            reference = Filled(reference_url, reference_store, units)
            await _worker_start(reference, "scale-reference")  # its registry snapshot, as a store in use has one
            await build_runs_index(reference)
            for size in sorted(sizes):
                figures = await measure_size(backend, url, size, reference, turns or Turns(), progress)
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
    if name.endswith("_vs_reference"):
        return f"{value:.2f}x"
    if name in ("events", "streams", "runs", "open_runs") or name.endswith("_per_s"):
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
