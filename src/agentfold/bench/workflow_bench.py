"""Workflow figures: runs/s and steps/s of a 10-step workflow with 1 and 3 worker processes, and takeover time.

The workers are real `agentfold worker` processes (``agentfold.bench.workflow_bench:runtime``); this process starts
the runs with a client and counts `WorkflowCompleted` events, so the figures include starting, claiming, every
step's intent and outcome appends, and completion. The takeover figure SIGKILLs a worker holding runs and measures,
on the store's own event times, how long after the kill the first of its runs was claimed by the survivor, and
after its last heartbeat. The relaunch figure SIGKILLs a worker in the middle of six runs' steps and starts it again
under the same worker id: how long from the relaunch (the new process's spawn, and its incarnation's first
heartbeat) to the first resumed step, and to the sixth run's result.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any, Final

import agentfold
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext
from agentfold.runtime.leases import worker_stream
from agentfold.store import EventStore

Figures = dict[str, float]

STEPS: Final = 10
LEASE_TTL: Final = 2.0
HEARTBEAT: Final = 0.5
CONCURRENCY: Final = 64
READY_TIMEOUT: Final = 60.0
RELAUNCH_RUNS: Final = 6
HOLD_VARIABLE: Final = "AGENTFOLD_BENCH_HOLD"
"""Set in the worker the relaunch figure kills: its held steps never return, so it dies in the middle of them."""

runtime = Runtime(default_retry=NO_RETRY)


async def work(index: int, idempotency_key: str = "") -> dict[str, Any]:
    """A step with no effect of its own: the figure is the runtime's cost per step."""
    return {"step": index, "key": idempotency_key}


@runtime.workflow(name="bench_ten_steps")
async def ten_steps(ctx: WorkflowContext, number: int) -> int:
    for index in range(STEPS):
        await ctx.step(f"step-{index}", work, index)
    return number


@runtime.workflow(name="bench_waiting")
async def waiting(ctx: WorkflowContext, number: int) -> int:
    await ctx.step("step-0", work, 0)
    await ctx.wait_for("go")
    return number


async def hold(index: int, idempotency_key: str = "") -> dict[str, Any]:
    """A step that never returns in the worker about to be killed, and returns at once elsewhere."""
    if os.environ.get(HOLD_VARIABLE):
        await asyncio.Event().wait()
    return {"step": index, "key": idempotency_key}


@runtime.workflow(name="bench_relaunch")
async def relaunched(ctx: WorkflowContext, number: int) -> int:
    await ctx.step("held", hold, 0)
    await ctx.step("after", work, 1)
    return number


async def spawn_worker(
    url: str, name: str, app: str = "agentfold.bench.workflow_bench:runtime", **env: str
) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentfold.cli",
        "worker",
        app,
        "--store",
        url,
        "--concurrency",
        str(CONCURRENCY),
        "--lease-ttl",
        str(LEASE_TTL),
        "--heartbeat",
        str(HEARTBEAT),
        "--worker-id",
        name,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), READY_TIMEOUT)
        if not line:
            raise RuntimeError(f"bench worker {name} exited before it was ready")
        if line.startswith(f"worker {name} ready".encode()):
            return process


async def stop_workers(processes: list[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()


async def wait_until(store: EventStore, event_type: str, after: int, count: int) -> None:
    """Return once `count` events of `event_type` were appended after position `after` (read incrementally)."""
    seen = 0
    async with asyncio.timeout(600):
        while True:
            head = await store.head_position()
            async for page in store.read_all_pages(after, types=[event_type]):
                seen += len(page)
            after = max(after, head)
            if seen >= count:
                return
            await store.wait_for_append(head, 0.5)


async def measure_throughput(url: str, workers: int, runs: int, tag: str) -> tuple[float, float]:
    processes = [await spawn_worker(url, f"{tag}-w{index}") for index in range(workers)]
    try:
        async with agentfold.connect(url) as store:
            client = runtime.client(store)
            head = await store.head_position()
            started = time.perf_counter()
            for first in range(0, runs, 50):
                await asyncio.gather(
                    *(
                        client.start(ten_steps, number, workflow_id=f"{tag}-{number}")
                        for number in range(first, min(runs, first + 50))
                    )
                )
            await wait_until(store, "WorkflowCompleted", head, runs)
            elapsed = time.perf_counter() - started
    finally:
        await stop_workers(processes)
    return runs / elapsed, runs * STEPS / elapsed


async def _first_takeover(store: EventStore, after: int, victim: str) -> int:
    """When (µs, store time) the first run held by `victim` was claimed by another worker."""
    async with asyncio.timeout(600):
        while True:
            head = await store.head_position()
            async for page in store.read_all_pages(after, types=["WorkflowClaimed"]):
                for event in page:
                    if event.data.get("previous") == victim:
                        return event.recorded_at_us
            after = max(after, head)
            await store.wait_for_append(head, 0.5)


async def _takeover(url: str) -> Figures:
    victim, survivor = await spawn_worker(url, "victim"), await spawn_worker(url, "survivor")
    try:
        async with agentfold.connect(url) as store:
            client = runtime.client(store)
            head = await store.head_position()
            for number in range(40):
                await client.start(waiting, number, workflow_id=f"takeover-{number}")
            await wait_until(store, "WaitStarted", head, 40)
            killed_at_us = time.time_ns() // 1000
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            first = await _first_takeover(store, head, "victim")
            beats = [event async for event in store.read_stream(worker_stream("victim"))]
            return {
                "takeover_after_sigkill_ms": (first - killed_at_us) / 1000,
                "takeover_after_last_heartbeat_ms": (first - beats[-1].recorded_at_us) / 1000,
                "takeover_lease_ttl_ms": LEASE_TTL * 1000,
            }
    finally:
        await stop_workers([victim, survivor])


async def _first_after(store: EventStore, after: int, event_type: str, count: int = 1) -> int:
    """When (µs, store time) the `count`-th event of `event_type` after position `after` was recorded."""
    seen: list[int] = []
    async with asyncio.timeout(600):
        while True:
            head = await store.head_position()
            async for page in store.read_all_pages(after, types=[event_type]):
                seen.extend(event.recorded_at_us for event in page)
            after = max(after, head)
            if len(seen) >= count:
                return sorted(seen)[count - 1]
            await store.wait_for_append(head, 0.5)


async def measure_relaunch(url: str) -> Figures:
    """SIGKILL a worker holding six runs mid-step, start it again under its id: time to the first resumed step."""
    victim = await spawn_worker(url, "relaunch", **{HOLD_VARIABLE: "1"})
    relaunched_process: asyncio.subprocess.Process | None = None
    try:
        async with agentfold.connect(url) as store:
            client = runtime.client(store)
            head = await store.head_position()
            for number in range(RELAUNCH_RUNS):
                await client.start(relaunched, number, workflow_id=f"relaunch-{number}")
            await wait_until(store, "StepStarted", head, RELAUNCH_RUNS)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            killed = await store.head_position()
            spawned_at_us = time.time_ns() // 1000
            relaunched_process = await spawn_worker(url, "relaunch")
            first_step = await _first_after(store, killed, "StepStarted")
            all_done = await _first_after(store, killed, "WorkflowCompleted", RELAUNCH_RUNS)
            records = [event async for event in store.read_stream(worker_stream("relaunch"))]
            started = next(event for event in reversed(records) if event.data.get("started"))
            return {
                "relaunch_to_first_step_ms": (first_step - spawned_at_us) / 1000,
                "relaunch_incarnation_to_first_step_ms": (first_step - started.recorded_at_us) / 1000,
                f"relaunch_to_{RELAUNCH_RUNS}_runs_done_ms": (all_done - spawned_at_us) / 1000,
            }
    finally:
        await stop_workers([victim] if relaunched_process is None else [victim, relaunched_process])


async def measure_workflows(url: str, runs: int = 500) -> Figures:
    """Runs/s and steps/s with 1 and 3 worker processes, the takeover time after a SIGKILL, and the time a worker
    relaunched under its id after a SIGKILL takes to resume its runs."""
    figures: Figures = {}
    for workers in (1, 3):
        per_s, steps_per_s = await measure_throughput(url, workers, runs, f"bench{workers}")
        figures[f"workflows_{workers}_worker_per_s"] = per_s
        figures[f"workflow_steps_{workers}_worker_per_s"] = steps_per_s
    figures.update(await _takeover(url))
    figures.update(await measure_relaunch(url))
    return figures


if __name__ == "__main__":
    print(asyncio.run(measure_workflows(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 500)))
