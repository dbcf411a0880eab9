"""Run control from the client: cancel, terminate, retry and restart from a step, on SQLite and PostgreSQL.

Each action is an event in the run's stream, appended at the exact version its state was checked at; an action the
run's state forbids raises `RunControlRefused` and writes nothing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import (
    InvalidInput,
    RunControlRefused,
    WorkflowCancelled,
    WorkflowNotFound,
    WorkflowTerminated,
)
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext, workflow_stream
from agentfold.store import EventStore
from tests.backends import DURABLE, Backend, require_service
from tests.group_helpers import until

TIMEOUT = 30.0
CONTROL_BACKENDS = [backend for backend in DURABLE if backend.name in ("sqlite", "postgres")]


@pytest.fixture(params=CONTROL_BACKENDS, ids=lambda backend: backend.name)
def control_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: Backend = request.param
    require_service(backend)
    url = backend.make_url(tmp_path)
    yield url
    backend.cleanup(url)


@pytest.fixture
async def store(control_url: str) -> AsyncIterator[EventStore]:
    async with agentfold.connect(control_url) as opened:
        yield opened


async def types_of(store: EventStore, workflow_id: str) -> list[str]:
    return [event.type async for event in store.read_stream(workflow_stream(workflow_id))]


async def until_state(client: Any, workflow_id: str, state: str) -> None:
    """Return once the run is in `state` (woken by appends)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            head = await client.store.head_position()
            if await client.state(workflow_id) == state:
                return
            await client.store.wait_for_append(head, 1.0)


def approval_app(effects: Counter[str]) -> Runtime:
    runtime = Runtime()

    async def effect(name: str, idempotency_key: str) -> str:
        effects[name] += 1
        return f"done-{name}"

    @runtime.workflow(name="approve")
    async def approve(ctx: WorkflowContext, order: str) -> str:
        await ctx.step("reserve", effect, f"reserve-{order}")
        try:
            approval = await ctx.wait_for("approval")
        except WorkflowCancelled:
            await ctx.step("release", effect, f"release-{order}")
            raise
        await ctx.step("ship", effect, f"ship-{order}")
        return f"shipped by {approval['by']}"

    return runtime


async def test_a_cancelled_run_cleans_up_and_ends_cancelled(store: EventStore) -> None:
    effects: Counter[str] = Counter()
    runtime = approval_app(effects)
    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start("approve", "o1", workflow_id="o1")
        await until_state(client, "o1", "AwaitingInput")
        assert await client.cancel("o1", reason="customer left") is True
        with pytest.raises(WorkflowCancelled, match="customer left"):
            await client.result("o1", timeout=TIMEOUT)
        with pytest.raises(RunControlRefused, match="it is Cancelled"):
            await client.cancel("o1")
    assert await client.state("o1") == "Cancelled"
    assert effects == Counter({"reserve-o1": 1, "release-o1": 1})
    assert (await types_of(store, "o1"))[-4:] == [
        "WorkflowCancelRequested",
        "StepStarted",
        "StepCompleted",
        "WorkflowCancelled",
    ]


async def test_a_cancel_lets_the_step_in_flight_finish_and_stops_at_the_next_await(store: EventStore) -> None:
    runtime = Runtime()
    in_step = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    async def slow(name: str) -> str:
        ran.append(name)
        if name == "first":
            in_step.set()
            await release.wait()
        return name

    @runtime.workflow(name="two_steps")
    async def two_steps(ctx: WorkflowContext) -> list[str]:
        done = [await ctx.step("first", slow, "first")]
        done.append(await ctx.step("second", slow, "second"))
        return done

    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start("two_steps", workflow_id="r")
        await asyncio.wait_for(in_step.wait(), TIMEOUT)
        await client.cancel("r")  # appended while the worker is inside the step
        release.set()
        with pytest.raises(WorkflowCancelled):
            await client.result("r", timeout=TIMEOUT)
    assert ran == ["first"]
    events = [event async for event in store.read_stream(workflow_stream("r"))]
    assert [event.type for event in events][-3:] == ["WorkflowCancelRequested", "StepCompleted", "WorkflowCancelled"]
    history = await client.history("r")
    assert history.commands[1].outcome is not None and history.commands[1].outcome["result"] == "first"
    assert 2 not in history.commands


async def test_cancels_racing_the_workers_appends_never_fork_a_run(store: EventStore) -> None:
    """Cancels land at every point of runs made of quick steps: each run ends once, and after the cancel only the
    step already in flight and the clean-up step may start.

    Even runs race their cancel against the worker (where it lands depends on the machine); odd runs hold step
    `tick-<number>` until the cancel is written, so a cancel lands mid-run however fast or slow the machine is.
    """
    runtime = Runtime()
    effects: Counter[str] = Counter()
    reached = {number: asyncio.Event() for number in range(6)}
    released = {number: asyncio.Event() for number in range(6)}

    async def tick(run_number: int, number: int, idempotency_key: str) -> str:
        effects[idempotency_key] += 1
        if run_number % 2 == 1 and number == run_number:
            reached[run_number].set()
            await released[run_number].wait()
        await asyncio.sleep(0)
        return str(number)

    @runtime.workflow(name="ticker")
    async def ticker(ctx: WorkflowContext, run_number: int) -> int:
        try:
            for number in range(8):
                await ctx.step(f"tick-{number}", tick, run_number, number)
        except WorkflowCancelled:
            await ctx.step("cleanup", tick, run_number, -1)
            raise
        return 8

    client = runtime.client(store)
    runs = [f"race-{number}" for number in range(6)]
    async with runtime.worker(store):
        for number, workflow_id in enumerate(runs):
            await client.start("ticker", number, workflow_id=workflow_id)
            if number % 2 == 1:
                await asyncio.wait_for(reached[number].wait(), TIMEOUT)
                assert await client.cancel(workflow_id) is True
                released[number].set()
                continue
            await asyncio.sleep(0.004 * number)
            try:
                await client.cancel(workflow_id)
            except RunControlRefused:
                pass  # the run already completed: nothing was written
        outcomes = []
        for workflow_id in runs:
            try:
                outcomes.append(await client.result(workflow_id, timeout=TIMEOUT))
            except WorkflowCancelled:
                outcomes.append("cancelled")
    assert outcomes[1::2] == ["cancelled"] * 3
    assert set(effects.values()) == {1}
    for workflow_id, outcome in zip(runs, outcomes, strict=True):
        events = [event async for event in store.read_stream(workflow_stream(workflow_id))]
        kinds = [event.type for event in events]
        assert [event.version for event in events] == list(range(1, len(events) + 1))
        assert sum(kind in ("WorkflowCompleted", "WorkflowCancelled") for kind in kinds) == 1
        if outcome == "cancelled":
            after = events[kinds.index("WorkflowCancelRequested") + 1 :]
            started = [event.data["name"] for event in after if event.type == "StepStarted"]
            assert started in (["cleanup"], [])  # the step in flight had already started before the cancel
            assert kinds[-1] == "WorkflowCancelled"


async def test_terminate_stops_a_run_at_once_without_clean_up(store: EventStore) -> None:
    runtime = Runtime()
    entered = asyncio.Event()
    stopped: list[str] = []

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    @runtime.workflow(name="stuck")
    async def stuck(ctx: WorkflowContext) -> None:
        try:
            await ctx.step("forever", forever)
        finally:
            stopped.append("workflow code")

    client = runtime.client(store)
    async with runtime.worker(store) as worker:
        await client.start("stuck", workflow_id="s")
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        await client.terminate("s", reason="runaway")
        with pytest.raises(WorkflowTerminated, match="runaway"):
            await client.result("s", timeout=TIMEOUT)
        await until(lambda: not worker.running, TIMEOUT)
    assert stopped[0] == "cancelled"
    assert (await types_of(store, "s"))[-1] == "WorkflowTerminated"
    assert await client.state("s") == "Terminated"


async def test_terminate_needs_no_worker_and_a_suspended_run_can_be_cancelled(store: EventStore) -> None:
    old, new = Runtime(), Runtime()

    async def value(name: str) -> str:
        return name

    @old.workflow(name="changing")
    async def before(ctx: WorkflowContext) -> str:
        await ctx.step("a", value, "a")
        return str(await ctx.wait_for("go"))

    @new.workflow(name="changing")
    async def after(ctx: WorkflowContext) -> str:
        await ctx.step("b", value, "b")
        return "new"

    async with old.worker(store):
        for workflow_id in ("x", "y", "z"):
            await old.client(store).start("changing", workflow_id=workflow_id)
            await until_state(old.client(store), workflow_id, "AwaitingInput")
    client = new.client(store)
    async with new.worker(store) as worker:
        await until(lambda: len(worker.suspended) == 3, TIMEOUT)
        await client.cancel("x")
        with pytest.raises(WorkflowCancelled):
            await client.result("x", timeout=TIMEOUT)
        # A suspended run restarted from before the change runs the new code from there.
        assert await client.restart("z", from_step="a") == 2
        assert await client.result("z", timeout=TIMEOUT) == "new"
    await client.terminate("y")
    assert await client.state("y") == "Terminated"
    assert (await types_of(store, "x"))[-3:] == ["WorkflowSuspended", "WorkflowCancelRequested", "WorkflowCancelled"]


async def test_refused_actions_write_nothing(store: EventStore) -> None:
    effects: Counter[str] = Counter()
    runtime = approval_app(effects)
    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start("approve", "done", workflow_id="done")
        await client.signal("done", "approval", {"by": "ann"})
        assert await client.result("done", timeout=TIMEOUT) == "shipped by ann"
        await client.start("approve", "open", workflow_id="open")
        await until_state(client, "open", "AwaitingInput")
    done_version = await store.stream_version(workflow_stream("done"))
    open_version = await store.stream_version(workflow_stream("open"))
    head = await store.head_position()
    for action in (client.cancel("done"), client.terminate("done"), client.retry("done")):
        with pytest.raises(RunControlRefused, match="'done': it is Completed"):
            await action
    for action in (client.retry("open"), client.restart("open", from_step="reserve")):
        with pytest.raises(RunControlRefused, match="'open': it is AwaitingInput"):
            await action
    with pytest.raises(InvalidInput, match="no recorded step 'nope' \\(recorded steps: 'reserve', 'ship'\\)"):
        await client.restart("done", from_step="nope")
    with pytest.raises(WorkflowNotFound):
        await client.cancel("never")
    assert await store.stream_version(workflow_stream("done")) == done_version
    assert await store.stream_version(workflow_stream("open")) == open_version
    assert await store.head_position() == head
    assert await client.cancel("open") is True
    assert await client.cancel("open") is False  # asked already: nothing more is written
    assert await store.stream_version(workflow_stream("open")) == open_version + 1


async def test_retry_runs_a_failed_run_again_from_its_failed_step(store: EventStore) -> None:
    runtime = Runtime()
    effects: Counter[str] = Counter()
    broken = {"pay": True}

    async def act(name: str, idempotency_key: str) -> str:
        effects[name] += 1
        if broken.get(name):
            raise ConnectionError(f"{name} is down")
        return name

    @runtime.workflow(name="order")
    async def order(ctx: WorkflowContext) -> list[str]:
        return [await ctx.step(name, act, name, retry=NO_RETRY) for name in ("reserve", "pay", "ship")]

    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start("order", workflow_id="o")
        with pytest.raises(agentfold.errors.WorkflowFailed, match="pay is down"):
            await client.result("o", timeout=TIMEOUT)
        broken.clear()
        assert await client.retry("o") == 2
        assert await client.result("o", timeout=TIMEOUT) == ["reserve", "pay", "ship"]
    assert effects == Counter({"reserve": 1, "pay": 2, "ship": 1})
    assert (await client.history("o")).attempt == 2


async def test_restart_from_a_step_keeps_the_results_before_it(store: EventStore) -> None:
    effects: Counter[str] = Counter()
    runtime = approval_app(effects)
    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start("approve", "r", workflow_id="r")
        await client.signal("r", "approval", {"by": "ann"})
        assert await client.result("r", timeout=TIMEOUT) == "shipped by ann"
        assert await client.restart("r", from_step="ship") == 2
        assert await client.result("r", timeout=TIMEOUT) == "shipped by ann"
        # From before the wait: the signal it consumed is delivered again.
        assert await client.restart("r", from_step="reserve") == 3
        assert await client.result("r", timeout=TIMEOUT) == "shipped by ann"
    assert effects == Counter({"reserve-r": 2, "ship-r": 3})
    kinds = await types_of(store, "r")
    assert kinds.count("WorkflowRestarted") == 2
    assert kinds.count("WorkflowCompleted") == 3
