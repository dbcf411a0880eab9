"""`agentfold bench`: speed figures measured through the public API, beside the bare driver on the same machine.

Benchmarks measure; tests assert. Every figure here comes from a run on the machine at hand, with the raw-driver
baseline of the same backend measured in the same run, so the ratio is meaningful even when machines differ.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

import agentfold
from agentfold import NewEvent
from agentfold.connect import redact
from agentfold.runtime import history as h
from agentfold.store import EventStore

BACKEND_NAMES = ("memory", "sqlite", "postgres", "redis")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

Figures = dict[str, float]
Progress = Callable[[str], None]


def event_payload(index: int) -> dict[str, Any]:
    """About 200 bytes of JSON, the size of a typical agent event."""
    return {
        "order_id": index,
        "agent_id": "payment-agent-7",
        "status": "authorised",
        "amount": 1234.56,
        "currency": "EUR",
        "items": [{"sku": f"sku-{index % 97}", "qty": index % 5 + 1}],
        "note": "x" * 48,
    }


RUN_WORKFLOWS: Final = ("intake", "payment", "fulfilment", "notification")


WAITING_EVERY: Final = 20
FIRST_WAITING: Final = 5
"""Of the runs `run_events` writes, the one of index `FIRST_WAITING` and every `WAITING_EVERY`-th after it wait for
a signal."""


def waits(index: int) -> bool:
    """Whether run `index` of `run_events` waits for a signal."""
    return index % WAITING_EVERY == FIRST_WAITING


def run_events(index: int, signalled: bool = False) -> list[NewEvent]:
    """One workflow run's events as the runtime writes them: 1 in 10 fails its step, 1 in 20 waits for a signal
    (with `signalled`, it got the signal and completed), the rest complete. Four events each."""
    workflow = RUN_WORKFLOWS[index % len(RUN_WORKFLOWS)]
    started = NewEvent(h.WORKFLOW_STARTED, {"workflow": workflow, "input": {"args": [index]}})
    if waits(index) and signalled:
        wait = {"seq": 1, "name": "approve"}
        return [
            started,
            NewEvent(h.WAIT_STARTED, {**wait, "deadline_us": None}),
            NewEvent(h.SIGNAL_RECEIVED, {**wait, "payload": "true", "signal_version": 1}),
            NewEvent(h.WORKFLOW_COMPLETED, {"result": index}),
        ]
    step = {"seq": 1, "name": "work", "attempt": 1}
    events = [started, NewEvent(h.STEP_STARTED, step)]
    if index % 10 == 0:
        error = {"type": "RuntimeError", "message": f"run {index} failed"}
        events += [
            NewEvent(h.STEP_FAILED, {**step, "final": True, "error": error}),
            NewEvent(h.WORKFLOW_FAILED, {"error": error}),
        ]
    elif waits(index):
        events += [
            NewEvent(h.STEP_COMPLETED, {**step, "result": index}),
            NewEvent(h.WAIT_STARTED, {"seq": 2, "name": "approve", "deadline_us": None}),
        ]
    else:
        events += [
            NewEvent(h.STEP_COMPLETED, {**step, "result": index}),
            NewEvent(h.WORKFLOW_COMPLETED, {"result": index}),
        ]
    return events


def event_payload_text(index: int) -> str:
    """`event_payload` as stored JSON text, for the bare-driver baselines: decoding cost depends on the shape (keys,
    nesting, numbers), not only on the size, so they write and decode the same events the store does."""
    return msgspec.json.encode(event_payload(index)).decode()


@asynccontextmanager
async def scratch_store(backend: str, base_url: str | None = None) -> AsyncIterator[tuple[str, EventStore]]:
    """A fresh store for one measurement: own temp file, schema or key prefix, removed afterwards."""
    tag = f"bench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="agentfold-bench-") as folder:
        if backend == "memory":
            url = "memory://"
        elif backend == "sqlite":
            url = f"sqlite:///{os.path.join(folder, 'bench.db')}"
        elif backend == "postgres":
            root = base_url or os.environ.get("AGENTFOLD_BENCH_PG", DEFAULT_PG)
            url = f"{root}{'&' if '?' in root else '?'}schema={tag}"
        elif backend == "redis":
            root = base_url or os.environ.get("AGENTFOLD_BENCH_REDIS", DEFAULT_REDIS)
            url = f"{root}{'&' if '?' in root else '?'}prefix={tag}"
        else:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        store = await agentfold.connect(url)
        try:
            yield url, store
        finally:
            await store.close()
            await _drop(backend, url, tag)


async def _drop(backend: str, url: str, tag: str) -> None:
    if backend == "postgres":
        import psycopg

        root = url.split("?")[0]
        async with await psycopg.AsyncConnection.connect(root, autocommit=True) as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
    elif backend == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(url.split("?")[0])
        try:
            keys = [key async for key in client.scan_iter(match=f"{tag}:*", count=1000)]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
        finally:
            await client.aclose()


async def measure_appends(store: EventStore, writers: int, seconds: float) -> float:
    """One-event appends from `writers` concurrent tasks for about `seconds`; events per second."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def writer(task: int) -> None:
        nonlocal count
        index = 0
        while time.perf_counter() < deadline:
            await store.append(f"bench-{task}", [NewEvent("OrderUpdated", event_payload(index))])
            index += 1
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(task) for task in range(writers)))
    return count / (time.perf_counter() - started)


async def measure_read(store: EventStore, events: int = 10_000, repeats: int = 5) -> Figures:
    """Read a stream of `events` events into memory (read + decode); best and median of `repeats`, in ms."""
    stream_id = f"read-{uuid.uuid4().hex[:8]}"
    for start in range(0, events, 1000):
        await store.append(
            stream_id, [NewEvent("OrderUpdated", event_payload(index)) for index in range(start, start + 1000)]
        )
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        read = [event async for page in store.read_stream_pages(stream_id) for event in page]
        timings.append((time.perf_counter() - started) * 1000)
        assert len(read) == events
    return {"read_stream_10k_ms": min(timings), "read_stream_10k_ms_median": statistics.median(timings)}


async def _optional(module: str, function: str, *args: Any) -> Figures:
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        return {}
    measure: Callable[..., Awaitable[Figures]] = getattr(loaded, function)
    return await measure(*args)


async def measure_agents(backend: str, base_url: str | None, quick: bool, progress: Progress) -> Figures:
    """The time durability adds to a Pydantic AI agent run (needs the pydantic-ai extra; nothing without it)."""
    progress(f"{backend}: a 10-request Pydantic AI agent run, durable and plain")
    async with scratch_store(backend, base_url) as (url, _):
        return await _optional("agentfold.bench.agent_bench", "measure_agent", url, quick)


async def measure_otel(backend: str, base_url: str | None, quick: bool, progress: Progress) -> Figures:
    """Appends with OpenTelemetry off and on, in turns (needs the otel extra; nothing without it)."""
    progress(f"{backend}: appends with OpenTelemetry off and on, in turns")
    async with scratch_store(backend, base_url) as (_, store):
        return await _optional("agentfold.bench.otel_bench", "measure_tracing", store, 2.0 if quick else 8.0)


async def measure_http_api(backend: str, base_url: str | None, quick: bool, progress: Progress) -> Figures:
    """Appends through `agentfold serve`'s HTTP API beside the same load in process (needs the web extra)."""
    if importlib.util.find_spec("uvicorn") is None or backend not in ("sqlite", "postgres"):
        return {}
    seconds = 3.0 if quick else 20.0
    progress(f"{backend}: 32 HTTP writers through agentfold serve for {seconds:g} s, then 32 in process")
    return await _optional("agentfold.bench.http_bench", "measure_http", backend, base_url, seconds)


async def measure_runs_page(backend: str, base_url: str | None, quick: bool, progress: Progress) -> Figures:
    """The inspector's runs page over 100k runs (10k with `quick`); needs the web extra (nothing without it)."""
    runs = 10_000 if quick else 100_000
    progress(f"{backend}: the inspector's runs page over {runs:,} runs (writing them and their index first)")
    async with scratch_store(backend, base_url) as (url, store):
        return await _optional("agentfold.bench.runs_page", "measure_runs_page", url, store, runs)


async def measure_payloads(backend: str, base_url: str | None, quick: bool, progress: Progress) -> Figures:
    """1 MiB payloads appended and read (MB/s), and a fold of 256 KiB events that reads their small fields only,
    with the payloads in the event and as blobs (`agentfold.bench.blob_bench`)."""
    progress(f"{backend}: 1 MiB payloads appended and read; a fold skipping 256 KiB fields, in the event and as blobs")
    async with scratch_store(backend, base_url) as (_, store):
        return await _optional("agentfold.bench.blob_bench", "measure_blobs", store, quick)


async def run_backend(
    backend: str,
    base_url: str | None = None,
    quick: bool = False,
    progress: Progress = print,
    big: bool = False,
    agents_only: bool = False,
    http_only: bool = False,
    runs_page_only: bool = False,
    otel_only: bool = False,
    payloads_only: bool = False,
) -> Figures:
    """Every figure for one backend, the raw-driver baseline of the same run, and the ratios between them."""
    if otel_only:
        return await measure_otel(backend, base_url, quick, progress)
    if payloads_only:
        return await measure_payloads(backend, base_url, quick, progress)
    if agents_only:
        return await measure_agents(backend, base_url, quick, progress)
    if http_only:
        return await measure_http_api(backend, base_url, quick, progress)
    if runs_page_only:
        return await measure_runs_page(backend, base_url, quick, progress)
    seconds = 1.0 if quick else 3.0
    figures: Figures = {}
    progress(f"{backend}: appends, 1 writer")
    async with scratch_store(backend, base_url) as (_, store):
        figures["append_1_writer_events_per_s"] = await measure_appends(store, 1, seconds)
    progress(f"{backend}: appends, 16 writers")
    async with scratch_store(backend, base_url) as (_, store):
        figures["append_16_writers_events_per_s"] = await measure_appends(store, 16, seconds)
    figures.update(await measure_otel(backend, base_url, quick, progress))
    progress(f"{backend}: read a 10k-event stream")
    async with scratch_store(backend, base_url) as (url, store):
        figures.update(await measure_read(store))
        progress(f"{backend}: fold a 10k-event stream")
        figures.update(await _optional("agentfold.bench.projection_bench", "measure_projection", url, big))
    figures.update(await measure_payloads(backend, base_url, quick, progress))
    progress(f"{backend}: append-to-delivery latency")
    async with scratch_store(backend, base_url) as (url, store):
        figures.update(await _optional("agentfold.bench.delivery", "measure_latency", url, store))
    progress(f"{backend}: 3-member consumer group")
    async with scratch_store(backend, base_url) as (url, store):
        figures.update(await _optional("agentfold.bench.delivery", "measure_group", url, store))
    if backend in ("sqlite", "postgres"):
        progress(f"{backend}: 10-step workflows, 1 and 3 workers; takeover after SIGKILL; relaunch under the same id")
        async with scratch_store(backend, base_url) as (url, _):
            runs = 200 if quick else 500
            figures.update(await _optional("agentfold.bench.workflow_bench", "measure_workflows", url, runs))
        figures.update(await measure_agents(backend, base_url, quick, progress))
        figures.update(await measure_http_api(backend, base_url, quick, progress))
    if backend != "memory":
        progress(f"{backend}: bare driver baseline")
        async with scratch_store(backend, base_url) as (url, _):
            figures.update(await _optional(f"agentfold.bench.raw_{backend}", "measure_raw", url))
    figures.update(_ratios(figures))
    return figures


def _ratios(figures: Figures) -> Figures:
    """Ours over the bare driver's: > 1 is faster for rates, slower for times."""
    pairs = {
        "append_16_writers_vs_raw_1row_tx": ("append_16_writers_events_per_s", "raw_commits_per_s_1row"),
        "append_16_writers_vs_raw_8client_tx": ("append_16_writers_events_per_s", "raw_tx_per_s_8clients_1row"),
        "append_16_writers_vs_raw_xadd": ("append_16_writers_events_per_s", "raw_xadd_per_s_16clients"),
        "fold_10k_vs_raw": ("fold_10k_ms", "raw_read_decode_fold_10k_ms"),
    }
    return {
        name: figures[ours] / figures[raw]
        for name, (ours, raw) in pairs.items()
        if ours in figures and raw in figures and figures[raw]
    }


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "agentfold": agentfold.__version__,
    }


async def run(
    backends: list[str],
    base_urls: dict[str, str],
    quick: bool,
    progress: Progress = print,
    big: bool = False,
    agents_only: bool = False,
    http_only: bool = False,
    runs_page_only: bool = False,
    otel_only: bool = False,
    payloads_only: bool = False,
) -> dict[str, Any]:
    """Run the benchmarks for `backends`; the result is what `--json` writes."""
    results: dict[str, Any] = {"environment": environment(), "backends": {}}
    for backend in backends:
        url = base_urls.get(backend)
        results["backends"][backend] = {
            "url": redact(url) if url else None,
            "figures": await run_backend(
                backend, url, quick, progress, big, agents_only, http_only, runs_page_only, otel_only, payloads_only
            ),
        }
    return results
