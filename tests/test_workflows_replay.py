"""Property tests: replaying a recorded history calls nothing; resuming from any crash point runs effects once.

A workflow interprets a generated program (steps, `gather`ed steps, waits, timers, recorded clock and random
values, patches, failing steps). The program is the workflow's input, so the code is deterministic by
construction; everything else it sees comes from its context.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_case
from hypothesis import strategies as st

import agentfold
from agentfold import NewEvent
from agentfold.errors import StepError
from agentfold.events import AppendResult, RecordedEvent
from agentfold.runtime import (
    DEFAULT_LIFECYCLE,
    NO_RETRY,
    NOT_APPLIED,
    RecordHook,
    Runtime,
    WorkflowContext,
    WorkflowExecution,
    signal_stream,
    workflow_stream,
)
from agentfold.runtime.history import load_history
from agentfold.store import EventStore
from tests.backends import run


class Provider:
    """The outside world for one example: effects applied per idempotency key, and how often each ran."""

    def __init__(self) -> None:
        self.applied: dict[str, Any] = {}
        self.calls: Counter[str] = Counter()


WORLD: dict[str, Provider] = {"provider": Provider()}


async def effect(value: Any, idempotency_key: str) -> Any:
    provider = WORLD["provider"]
    provider.calls[idempotency_key] += 1
    provider.applied[idempotency_key] = value
    return value


async def status(idempotency_key: str, value: Any) -> Any:
    provider = WORLD["provider"]
    return provider.applied[idempotency_key] if idempotency_key in provider.applied else NOT_APPLIED


async def refuse(idempotency_key: str) -> None:
    WORLD["provider"].calls[idempotency_key] += 1
    raise PermissionError("refused")


class Batches(RecordHook):
    """Remembers where each append ended: a crash can only happen between appends."""

    def __init__(self) -> None:
        self.ends: list[int] = []

    def after_append(self, workflow_id: str, events: Sequence[NewEvent], result: AppendResult) -> None:
        self.ends.append(result.version)


runtime = Runtime(default_retry=NO_RETRY)


@runtime.workflow
async def interpret(ctx: WorkflowContext, program: list[Any]) -> list[Any]:
    output: list[Any] = []
    for command in program:
        kind = command[0]
        if kind == "step":
            output.append(await ctx.step(command[1], effect, command[2], reconcile=status))
        elif kind == "gather":
            steps = [ctx.step(name, effect, value, reconcile=status) for name, value in command[1]]
            output.append(list(await asyncio.gather(*steps)))
        elif kind == "now":
            output.append(ctx.now().isoformat())
        elif kind == "random":
            output.append(ctx.random())
        elif kind == "sleep":
            await ctx.sleep(0)
            output.append("slept")
        elif kind == "wait":
            output.append(await ctx.wait_for(command[1]))
        elif kind == "gather_waits":
            output.append(list(await asyncio.gather(*(ctx.wait_for(name) for name in command[1]))))
        elif kind == "patched":
            output.append(ctx.patched(command[1]))
        else:
            try:
                await ctx.step(command[1], refuse)
            except StepError as error:
                output.append(error.error_type)
    return output


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)
names = st.sampled_from(["fetch", "charge", "email", "plan"])
commands = st.one_of(
    st.tuples(st.just("step"), names, json_values).map(list),
    st.tuples(st.just("gather"), st.lists(st.tuples(names, json_values).map(list), min_size=1, max_size=3)).map(list),
    st.just(["now"]),
    st.just(["random"]),
    st.just(["sleep"]),
    st.tuples(st.just("wait"), st.sampled_from(["approval", "input"])).map(list),
    st.tuples(st.just("gather_waits"), st.lists(st.sampled_from(["approval", "input"]), min_size=1, max_size=3)).map(
        list
    ),
    st.tuples(st.just("patched"), st.sampled_from(["p1", "p2"])).map(list),
    st.tuples(st.just("fail"), names).map(list),
)
programs = st.lists(commands, max_size=8)


async def record(program: list[Any]) -> tuple[EventStore, list[Any], list[int]]:
    """Run `program` live on a fresh memory store; return the store, the result and the append boundaries."""
    WORLD["provider"] = Provider()
    store = await agentfold.connect("memory://")
    client = runtime.client(store)
    await client.start(interpret, program, workflow_id="run")
    for index, command in enumerate(program):
        waits = [command[1]] if command[0] == "wait" else command[1] if command[0] == "gather_waits" else []
        for position, name in enumerate(waits):
            await client.signal("run", name, f"{name}-{index}-{position}")
    batches = Batches()
    runtime.hooks.append(batches)
    try:
        await (await WorkflowExecution.load(runtime, store, "run")).run()
    finally:
        runtime.hooks.remove(batches)
    return store, await client.result("run"), [1, *batches.ends]


async def copy_prefix(source: EventStore, length: int) -> EventStore:
    """A fresh store holding the run's first `length` events and its whole inbox, ids and all."""
    target = await agentfold.connect("memory://")
    for stream, limit in ((workflow_stream("run"), length), (signal_stream("run"), None)):
        async for event in source.read_stream(stream, limit=limit):
            await target.append(stream, [NewEvent(event.type, event.data, event.metadata, event.id)])
    return target


async def recorded(store: EventStore) -> list[RecordedEvent]:
    return [event async for event in store.read_stream(workflow_stream("run"))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_replaying_a_recorded_history_calls_nothing_and_yields_the_same_state(program: list[Any]) -> None:
    async def check() -> None:
        store, result, _ = await record(program)
        history = await recorded(store)
        replica = await copy_prefix(store, len(history) - 1)  # everything but WorkflowCompleted
        WORLD["provider"] = Provider()
        await (await WorkflowExecution.load(runtime, replica, "run")).run()
        assert WORLD["provider"].calls == {}, "a replay ran a step"
        assert await runtime.client(replica).result("run") == result
        replayed = await recorded(replica)
        assert [(event.type, event.data) for event in replayed] == [(event.type, event.data) for event in history]
        state = DEFAULT_LIFECYCLE.fold(replayed, "run")
        assert state == DEFAULT_LIFECYCLE.fold(history, "run") == (await load_history(replica, "run")).state
        assert state == "Completed"

    run(check())


def deterministic_part(program: list[Any], output: list[Any]) -> list[Any]:
    """The output without fresh clock readings and random numbers (a crash before they were recorded redraws)."""
    return [value for command, value in zip(program, output, strict=True) if command[0] not in ("now", "random")]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs, st.data())
def test_resuming_after_a_crash_at_any_append_runs_every_effect_exactly_once(program: list[Any], data: Any) -> None:
    async def check() -> None:
        store, result, boundaries = await record(program)
        cut = data.draw(st.sampled_from(boundaries[:-1]), label="events kept")
        effect_landed = data.draw(st.booleans(), label="in-doubt effects reached the provider")
        original = WORLD["provider"]
        replica = await copy_prefix(store, cut)
        # The provider as it was at the crash: effects whose outcome is recorded, and (maybe) the in-doubt ones.
        world = Provider()
        before = await load_history(replica, "run")
        for command in before.commands.values():
            key = f"run/{command.seq}/{command.name}"
            if command.kind == "step" and key in original.applied:
                if command.outcome is not None or (command.in_doubt and effect_landed):
                    world.applied[key] = original.applied[key]
        already = set(world.applied)
        note_case(f"in-doubt steps at the crash: {sum(command.in_doubt for command in before.commands.values())}")
        WORLD["provider"] = world
        await (await WorkflowExecution.load(runtime, replica, "run")).run()
        resumed = await runtime.client(replica).result("run")
        assert deterministic_part(program, resumed) == deterministic_part(program, result)
        for key in original.applied:
            assert world.calls[key] + (key in already) == 1, f"effect {key} ran {world.calls[key]} more times"
        commands = [
            (event.data["seq"], event.data.get("name"))
            for event in await recorded(replica)
            if event.type in ("StepCompleted", "SignalReceived", "TimerFired")
        ]
        expected = [
            (event.data["seq"], event.data.get("name"))
            for event in await recorded(store)
            if event.type in ("StepCompleted", "SignalReceived", "TimerFired")
        ]
        assert sorted(commands) == sorted(expected)

    run(check())
