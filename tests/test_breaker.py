"""Circuit breakers: closed → open after N failures or timeouts → half-open probe after the cool-down → closed,
shared by every worker on the store through the breaker's stream, and visible in the runs' traces."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import agentfold
from agentfold.errors import CircuitOpen, InvalidInput, StepError
from agentfold.runtime import NO_RETRY, RetryPolicy, Runtime, WorkflowContext
from agentfold.runtime.breaker import (
    BREAKER_CLOSED,
    BREAKER_FAILURE_RECORDED,
    BREAKER_HALF_OPENED,
    BREAKER_OPENED,
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerSettings,
    CircuitBreaker,
    breaker_state,
    breaker_stream,
)
from agentfold.runtime.history import workflow_stream
from agentfold.store import EventStore

TIMEOUT = 30.0


class Dependency:
    """A remote API that is down until told otherwise, and counts the calls that reached it."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.hang = False

    async def call(self, what: str) -> str:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise ConnectionError("payments-api unreachable")
        return f"ok-{what}"


def app(dependency: Dependency, cool_down: float) -> Runtime:
    runtime = Runtime()
    runtime.breaker("payments-api", failure_threshold=3, window=60, cool_down=cool_down)

    @runtime.workflow(name="charge")
    async def charge(ctx: WorkflowContext, what: str) -> str:
        try:
            result: str = await ctx.step("charge", dependency.call, what, retry=NO_RETRY, breaker="payments-api")
        except StepError as error:
            return error.error_type
        return result

    return runtime


async def run_once(runtime: Runtime, store: EventStore, workflow_id: str) -> Any:
    client = runtime.client(store)
    await client.start("charge", workflow_id, workflow_id=workflow_id)
    try:
        return await client.result(workflow_id, timeout=TIMEOUT)
    except TimeoutError:  # say where the run and the breaker stood, so that a rare hang can be told apart
        run = [(event.type, event.data) async for event in store.read_stream(workflow_stream(workflow_id))]
        breaker = [(event.type, event.data) async for event in store.read_stream(breaker_stream("payments-api"))]
        raise AssertionError(f"{workflow_id!r} unfinished; its events: {run}; the breaker's: {breaker}") from None


async def test_opens_after_the_threshold_fails_fast_then_a_probe_closes_it(store: EventStore) -> None:
    dependency = Dependency()
    runtime = app(dependency, cool_down=3600)
    async with runtime.worker(store):
        outcomes = [await run_once(runtime, store, f"run-{n}") for n in range(5)]
    assert outcomes == ["ConnectionError"] * 3 + ["CircuitOpen"] * 2
    assert dependency.calls == 3, "calls while open fail fast without reaching the dependency"
    assert (await breaker_state(store, "payments-api")).state == OPEN

    # The failed-fast attempt is in the run's trace, naming the breaker.
    events = [event async for event in store.read_stream("workflow-run-4")]
    failed = next(event for event in events if event.type == "StepFailed")
    assert failed.data["error"]["type"] == "CircuitOpen"
    assert failed.data["breaker"] == "payments-api"

    # A second process (another runtime on the same store) sees the same open breaker.
    other = Dependency()
    other.down = False
    elsewhere = app(other, cool_down=3600)
    async with elsewhere.worker(store):
        assert await run_once(elsewhere, store, "elsewhere") == "CircuitOpen"
    assert other.calls == 0


async def cooled_down(store: EventStore, name: str) -> None:
    """Return once the open breaker's cool-down, as its stream holds it, is over by the wall clock it is kept in:
    the next call is then its probe (nothing is asserted on time)."""
    state = await breaker_state(store, name)
    assert state.state == OPEN
    await asyncio.sleep(max(0.0, state.open_until_us / 1e6 - time.time()) + 0.05)


async def test_half_open_probe_recloses_or_reopens(store: EventStore) -> None:
    dependency = Dependency()
    runtime = app(dependency, cool_down=0.2)
    async with runtime.worker(store):
        for n in range(3):
            assert await run_once(runtime, store, f"fail-{n}") == "ConnectionError"
        await cooled_down(store, "payments-api")
        assert await run_once(runtime, store, "probe-fails") == "ConnectionError"
        assert (await breaker_state(store, "payments-api")).state == OPEN
        dependency.down = False
        await cooled_down(store, "payments-api")
        assert await run_once(runtime, store, "probe-succeeds") == "ok-probe-succeeds"
        assert await run_once(runtime, store, "closed-again") == "ok-closed-again"
    history = [event async for event in store.read_all(stream_prefix=breaker_stream("payments-api"))]
    assert [event.type for event in history][-1] == BREAKER_CLOSED
    assert [event.data["probe"] for event in history if event.type == BREAKER_HALF_OPENED] == [
        "probe-fails/1/charge",
        "probe-succeeds/1/charge",
    ]
    assert (await breaker_state(store, "payments-api")).state == CLOSED


async def test_every_change_of_state_is_an_event_of_the_breakers_stream(store: EventStore) -> None:
    breaker = CircuitBreaker(store, "search", BreakerSettings(failure_threshold=2, cool_down=0, probe_timeout=60))
    permit = await breaker.acquire("a")
    await breaker.failed(permit, TimeoutError("slow"), "a")
    await breaker.failed(permit, TimeoutError("slow"), "b")
    assert await breaker.state() == OPEN
    probe = await breaker.acquire("c")  # the cool-down (0) is over: this call is the probe
    assert probe.probe == "c"
    assert await breaker.state() == HALF_OPEN
    with pytest.raises(CircuitOpen) as refused:
        await breaker.acquire("d")  # one probe at a time
    assert refused.value.breaker == "search"
    await breaker.succeeded(probe)
    assert await breaker.state() == CLOSED
    await breaker.failed(await breaker.acquire("e"), ValueError("declined"), "e")
    assert [event.type async for event in store.read_stream(breaker_stream("search"))] == [
        BREAKER_FAILURE_RECORDED,
        BREAKER_FAILURE_RECORDED,
        BREAKER_OPENED,
        BREAKER_HALF_OPENED,
        BREAKER_CLOSED,
        BREAKER_FAILURE_RECORDED,
    ]


async def test_a_long_history_is_trimmed_but_folds_the_same(store: EventStore) -> None:
    settings = BreakerSettings(failure_threshold=1000, window=3600)
    breaker = CircuitBreaker(store, "noisy", settings)
    for index in range(300):
        await breaker.failed(await breaker.acquire(f"c{index}"), OSError("flaky"), f"c{index}")
    kept = [event async for event in store.read_stream(breaker_stream("noisy"))]
    assert len(kept) < 300
    assert kept[-1].version == 300
    assert (await breaker_state(store, "noisy")).state == CLOSED


async def test_two_workers_share_one_breaker_and_race_for_the_opening(durable_url: str) -> None:
    async with agentfold.connect(durable_url) as first, agentfold.connect(durable_url) as second:
        settings = BreakerSettings(failure_threshold=4, cool_down=3600)
        breakers = [CircuitBreaker(first, "shared", settings), CircuitBreaker(second, "shared", settings)]
        permits = [await breaker.acquire("x") for breaker in breakers for _ in range(3)]
        await asyncio.gather(
            *(breakers[index // 3].failed(permit, OSError("down"), f"c{index}") for index, permit in enumerate(permits))
        )
        opened = [event async for event in first.read_all(types=[BREAKER_OPENED])]
        assert len(opened) == 1, "exactly one worker opens it"
        for breaker in breakers:
            with pytest.raises(CircuitOpen):
                await breaker.acquire("y")


async def test_a_timed_out_step_counts_as_a_failure() -> None:
    dependency = Dependency()
    dependency.hang = True
    runtime = Runtime()
    runtime.breaker("slow-api", failure_threshold=1, cool_down=3600)

    @runtime.workflow(name="call")
    async def call(ctx: WorkflowContext) -> str:
        retry = RetryPolicy(max_attempts=2, initial_backoff=0)
        try:
            await ctx.step("call", dependency.call, "x", retry=retry, timeout=0.05, breaker="slow-api")
        except StepError as error:
            return error.error_type
        return "ok"

    async with agentfold.connect("memory://") as store, runtime.worker(store):
        client = runtime.client(store)
        await client.start(call, workflow_id="c")
        assert await client.result("c", timeout=TIMEOUT) == "CircuitOpen"
        assert dependency.calls == 1
        errors = [e.data["error"]["type"] async for e in store.read_stream("workflow-c") if e.type == "StepFailed"]
        assert errors == ["StepTimeout", "CircuitOpen"]


def test_bad_settings_and_names_are_refused() -> None:
    with pytest.raises(InvalidInput, match="failure_threshold"):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(InvalidInput, match="cool_down"):
        BreakerSettings(cool_down=-1)
    with pytest.raises(InvalidInput, match="breaker name"):
        Runtime().breaker("")


async def test_the_runtime_step_timeout_bounds_steps_that_name_none() -> None:
    runtime = Runtime(step_timeout=0.05)
    dependency = Dependency()
    dependency.hang = True

    @runtime.workflow(name="hangs")
    async def hangs(ctx: WorkflowContext) -> str:
        try:
            await ctx.step("call", dependency.call, "x", retry=NO_RETRY)
        except StepError as error:
            return error.error_type
        return "ok"

    async with agentfold.connect("memory://") as store, runtime.worker(store):
        client = runtime.client(store)
        await client.start(hangs, workflow_id="h")
        assert await client.result("h", timeout=TIMEOUT) == "StepTimeout"
    with pytest.raises(InvalidInput, match="step_timeout"):
        Runtime(step_timeout=-1)
