"""A PostgreSQL pool held at its limit: a process with many concurrent starts and result waits and a worker makes
progress or fails with a typed error, and every task it cancels ends (nothing survives to hold its shutdown).

Every wait here is a hang guard, not a speed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold import NewEvent
from agentfold.errors import AgentfoldError
from agentfold.runtime import NO_RETRY, Runtime, WorkflowClient, WorkflowContext
from agentfold.wakeup import wait_unless
from tests.backends import BACKENDS, Backend, require_service

POSTGRES: Backend = next(backend for backend in BACKENDS if backend.name == "postgres")
HANG_GUARD = 300.0
STARTERS = 50
RUNS_PER_STARTER = 4

runtime = Runtime(default_retry=NO_RETRY)


def add_one(number: int) -> int:
    return number + 1


@runtime.workflow(name="pool_two_steps")
async def two_steps(ctx: WorkflowContext, number: int) -> int:
    first = await ctx.step("first", add_one, number)
    return await ctx.step("second", add_one, first)


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    require_service(POSTGRES)
    url = POSTGRES.make_url(tmp_path)
    yield url
    POSTGRES.cleanup(url)


def other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_a_pool_at_its_limit_finishes_every_run_or_raises_a_typed_error(pg_url: str) -> None:
    before = other_tasks()
    outcomes: list[Any] = []
    async with asyncio.timeout(HANG_GUARD):
        async with await agentfold.connect(f"{pg_url}&pool_min=1&pool_max=2&pool_timeout=30") as store:
            client = WorkflowClient(runtime, store)

            async def start_and_wait(starter: int) -> list[Any]:
                """Start runs one after the other, then await each: its result, or the typed error raised."""
                handles = []
                try:
                    for number in range(starter * 100, starter * 100 + RUNS_PER_STARTER):
                        handles.append(await client.start(two_steps, number))
                except AgentfoldError as error:
                    return [error]
                results: list[Any] = []
                for handle in handles:
                    try:
                        results.append(await handle.result())
                    except AgentfoldError as error:
                        results.append(error)
                return results

            async with runtime.worker(store, concurrency=100):
                for results in await asyncio.gather(*(start_and_wait(starter) for starter in range(STARTERS))):
                    outcomes.extend(results)
    failures = [outcome for outcome in outcomes if not isinstance(outcome, int)]
    assert all(isinstance(failure, AgentfoldError) for failure in failures), failures
    if not failures:  # on this machine's pool timeout every run finishes; each one exactly with its result
        expected = [starter * 100 + n + 2 for starter in range(STARTERS) for n in range(RUNS_PER_STARTER)]
        assert sorted(outcomes) == expected
    # Everything the store and the worker started has ended: nothing would hold the event loop's shutdown.
    left = other_tasks() - before
    assert not [task for task in left if not task.done()], left


async def test_cancelled_result_waiters_all_end_while_appends_wake_them(pg_url: str) -> None:
    """Every append wakes every waiter at once, and a small pool hands connections over constantly: cancellations
    that land in those moments are raised, never lost (each round cancels the waiters mid-wake)."""
    async with await agentfold.connect(f"{pg_url}&pool_min=1&pool_max=3") as store:
        client = WorkflowClient(runtime, store)
        handles = [await client.start(two_steps, number) for number in range(200)]  # no worker: they never end
        stop = asyncio.Event()

        async def append_noise() -> None:
            while not stop.is_set():
                await store.append("noise", [NewEvent("Noise", {})])

        noise = [asyncio.create_task(append_noise()) for _ in range(4)]
        try:
            for _ in range(5):
                waiters = [asyncio.create_task(handle.result()) for handle in handles]
                await asyncio.sleep(0.5)  # let them reach every kind of wait: pool, read, push
                for waiter in waiters:
                    waiter.cancel()
                _, survivors = await asyncio.wait(waiters, timeout=HANG_GUARD)
                assert not survivors, f"{len(survivors)} of {len(waiters)} waiters ran on after their cancellation"
                assert all(waiter.cancelled() for waiter in waiters)
        finally:
            stop.set()
            await asyncio.gather(*noise)


async def test_a_wait_whose_awaitable_swallows_the_cancellation_still_raises_it() -> None:
    """`wait_unless` is where every idle loop waits: a driver that loses a cancellation below it cannot make the
    loop run on."""
    entered = asyncio.Event()

    async def swallowing() -> None:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    for until in (None, asyncio.Event()):
        entered.clear()
        waiting = asyncio.create_task(wait_unless(swallowing(), until))
        await entered.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


ABANDONED = """
import asyncio, sys
import agentfold
from agentfold import NewEvent
from tests.test_postgres_pool import runtime, two_steps

async def main(url):
    store = await agentfold.connect(url)  # left open: asyncio.run's shutdown finds every task still going
    client = runtime.client(store)
    handles = [await client.start(two_steps, number) for number in range(200)]  # no worker: they never end
    waiters = [asyncio.create_task(handle.result()) for handle in handles]

    async def noise():
        while True:
            await store.append("noise", [NewEvent("Noise", {})])

    appenders = [asyncio.create_task(noise()) for _ in range(4)]
    await asyncio.sleep(1.0)
    print("waiting", sum(not waiter.done() for waiter in waiters), flush=True)
    raise RuntimeError("the error that ends this process")

asyncio.run(main(sys.argv[1]))
"""


def test_a_process_that_fails_with_waiters_in_flight_exits_with_its_error(pg_url: str) -> None:
    """The stall's shape: an error ends `main` while hundreds of tasks await results over a busy pool; asyncio
    cancels them at shutdown, and every one ends, so the process exits and shows the error."""
    for _ in range(3):
        finished = subprocess.run(
            [sys.executable, "-c", ABANDONED, f"{pg_url}&pool_min=1&pool_max=2"],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            cwd=Path(__file__).parent.parent,
        )
        assert "waiting 200" in finished.stdout, finished.stderr
        assert finished.returncode == 1
        assert "RuntimeError: the error that ends this process" in finished.stderr
