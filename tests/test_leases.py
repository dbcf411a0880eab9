"""Leases in one process: several `Worker` objects on one store behave like workers in several processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

import agentfold
from agentfold.errors import InvalidInput, WrongExpectedVersion
from agentfold.events import NewEvent
from agentfold.runtime import Runtime, WorkflowClient, WorkflowContext, run_leases, stalled_runs, workflow_stream
from agentfold.runtime.leases import EXPIRED, STOPPED, now_us
from agentfold.store import EventStore
from tests.waiting_app import until as wait_until
from tests.waiting_app import waiting_app

TIMEOUT = 30.0
TTL = 1.0
HEARTBEAT = 0.25


async def until(store: EventStore, check: Any) -> None:
    await wait_until(store, check, TIMEOUT)


async def all_waiting(client: WorkflowClient, ids: list[str]) -> bool:
    return all([await client.state(workflow_id) == "AwaitingInput" for workflow_id in ids])


async def test_a_paused_worker_is_fenced_out_and_its_run_taken_over(durable_url: str) -> None:
    calls: Counter[str] = Counter()
    runtime = waiting_app(calls)
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other_store:
        client = runtime.client(store)
        paused = runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="paused")
        await paused.start()
        await client.start("waiting", 1, workflow_id="w1")
        await until(store, lambda: all_waiting(client, ["w1"]))
        # private: a paused worker is staged by stopping its heartbeat task and writing from its held run
        held = paused._executions["w1"]
        # The worker stops heartbeating (a long pause, a partition) but its execution goes on.
        assert paused._heartbeat._task is not None
        paused._heartbeat._task.cancel()
        async with runtime.worker(other_store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="taker") as taker:

            async def claimed() -> bool:
                return (await client.history("w1")).owner == "taker"

            await until(store, claimed)
            with pytest.raises(WrongExpectedVersion):
                await held._record([NewEvent("StepStarted", {"seq": 9, "name": "late", "attempt": 1})])
            await client.signal("w1", "go", {"by": "ops"})
            assert await client.result("w1", timeout=TIMEOUT) == {"first": "first-1", "second": "second-1", "by": "ops"}
            assert taker.taken_over == 1

        async def fenced_out() -> bool:
            return paused.lost == 1  # its follower saw the claim and stopped the run

        await until(store, fenced_out)
        await paused.stop()
        claims = [event async for event in store.read_all(types=["WorkflowClaimed"])]
        assert [(event.data["worker"], event.data["previous"], event.data["previous_state"]) for event in claims] == [
            ("taker", "paused", EXPIRED)
        ]
        assert set(calls.values()) == {1}


async def test_stalled_runs_lists_runs_no_live_worker_holds(store: EventStore) -> None:
    calls: Counter[str] = Counter()
    runtime = waiting_app(calls)
    client = runtime.client(store)
    ids = [f"s{n}" for n in range(3)]
    async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="holder"):
        for number, workflow_id in enumerate(ids):
            await client.start("waiting", number, workflow_id=workflow_id)
        await until(store, lambda: all_waiting(client, ids))
        leases = await run_leases(store)
        assert [(lease.workflow_id, lease.owner, lease.stalled) for lease in leases] == [
            (workflow_id, "holder", False) for workflow_id in ids
        ]
        assert await stalled_runs(store) == []
        later = await stalled_runs(store, at_us=now_us() + int(10 * TTL * 1e6))
        assert [(lease.workflow_id, lease.owner_state) for lease in later] == [(w, EXPIRED) for w in ids]
    stalled = await stalled_runs(store)
    assert [(lease.workflow_id, lease.owner_state, lease.state) for lease in stalled] == [
        (w, STOPPED, "AwaitingInput") for w in ids
    ]
    assert stalled[0].to_json()["stalled"] is True
    for workflow_id in ids:
        await client.signal(workflow_id, "go", {"by": "ops"})
    async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="next"):
        for workflow_id in ids:
            await client.result(workflow_id, timeout=TIMEOUT)
    assert await stalled_runs(store) == []
    assert await run_leases(store) == []


async def test_a_full_worker_leaves_new_runs_to_the_others(durable_url: str) -> None:
    calls: Counter[str] = Counter()
    runtime = waiting_app(calls)
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other_store:
        client = runtime.client(store)
        ids = [f"c{n}" for n in range(6)]
        async with (
            runtime.worker(store, concurrency=2, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="small"),
            runtime.worker(other_store, concurrency=10, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="big"),
        ):
            for number, workflow_id in enumerate(ids):
                await client.start("waiting", number, workflow_id=workflow_id)
            await until(store, lambda: all_waiting(client, ids))
            owners = Counter(lease.owner for lease in await run_leases(store))
            assert owners["small"] <= 2
            assert owners["small"] + owners["big"] == 6
            for workflow_id in ids:
                await client.signal(workflow_id, "go", {"by": "ops"})
            for workflow_id in ids:
                await client.result(workflow_id, timeout=TIMEOUT)
        assert len(calls) == 12
        assert set(calls.values()) == {1}


async def test_stopping_lets_a_running_step_finish_and_starts_nothing_new() -> None:
    runtime = Runtime()
    started = asyncio.Event()
    calls: Counter[str] = Counter()

    async def slow(name: str, idempotency_key: str) -> str:
        calls[idempotency_key] += 1
        started.set()
        await asyncio.sleep(0.3)
        return name

    @runtime.workflow(name="two_slow_steps")
    async def two_slow_steps(ctx: WorkflowContext) -> list[str]:
        return [await ctx.step("one", slow, "one"), await ctx.step("two", slow, "two")]

    async with agentfold.connect("memory://") as store:
        client = runtime.client(store)
        worker = runtime.worker(store, stop_timeout=TIMEOUT)
        await worker.start()
        await client.start(two_slow_steps, workflow_id="slow")
        await started.wait()
        await worker.stop()
        types = [event.type async for event in store.read_stream(workflow_stream("slow"))]
        assert types == ["WorkflowStarted", "StepStarted", "StepCompleted"], "finished step one, began nothing"
        async with runtime.worker(store):
            assert await client.result("slow", timeout=TIMEOUT) == ["one", "two"]
        assert set(calls.values()) == {1}


def test_bad_lease_settings_are_refused() -> None:
    runtime = Runtime()
    store: Any = object()
    with pytest.raises(InvalidInput, match="lease_ttl"):
        runtime.worker(store, lease_ttl=0)
    with pytest.raises(InvalidInput, match="heartbeat"):
        runtime.worker(store, lease_ttl=1, heartbeat=1)
    with pytest.raises(InvalidInput, match="worker id"):
        runtime.worker(store, worker_id="")
    with pytest.raises(InvalidInput, match="concurrency"):
        runtime.worker(store, concurrency=0)


async def test_the_workflows_command_lists_stalled_runs(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'stalled.db'}"
    runtime = waiting_app(Counter())
    async with agentfold.connect(url) as store:
        client = runtime.client(store)
        async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="gone"):
            await client.start("waiting", 1, workflow_id="left-behind")
            await client.start("waiting", 3, workflow_id="finished")
            await client.signal("finished", "go", {"by": "ops"})
            await client.result("finished", timeout=TIMEOUT)
            await until(store, lambda: all_waiting(client, ["left-behind"]))
        await client.start("waiting", 2, workflow_id="never-run")
    command = [sys.executable, "-m", "agentfold.cli", "workflows", "--store", url, "--stalled", "--json"]
    listed = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    # Newest start first.
    assert [run["workflow_id"] for run in json.loads(listed.stdout)["runs"]] == ["never-run", "left-behind"]
    everything = subprocess.run([*command[:-2], "--json"], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert len(json.loads(everything.stdout)["runs"]) == 3


async def test_a_worker_that_stops_saves_the_registry_up_to_where_it_followed(store: EventStore) -> None:
    from agentfold.runtime import worker as worker_module

    calls: Counter[str] = Counter()
    runtime = waiting_app(calls)
    client = runtime.client(store)
    async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="first"):
        await client.start("waiting", 1, workflow_id="held")
        await until(store, lambda: all_waiting(client, ["held"]))
        # fewer watched events than a periodic save waits for: only the stop saves
        assert await store.load_log_snapshot(worker_module.REGISTRY_SNAPSHOT) is None
    saved = await store.load_log_snapshot(worker_module.REGISTRY_SNAPSHOT)
    assert saved is not None
    started = [event async for event in store.read_stream(workflow_stream("held"), limit=1)]
    assert saved.position >= started[0].position
    assert json.loads(saved.state)["runs"]["held"] == ["waiting", "first"]
    await client.signal("held", "go", {"by": "ops"})
    async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="second"):
        assert await client.result("held", timeout=TIMEOUT) == {"first": "first-1", "second": "second-1", "by": "ops"}
    assert set(calls.values()) == {1}


async def test_a_starting_worker_reads_on_from_the_registry_snapshot(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentfold.runtime import worker as worker_module

    monkeypatch.setattr(worker_module, "REGISTRY_EVERY_EVENTS", 1)
    calls: Counter[str] = Counter()
    runtime = waiting_app(calls)
    client = runtime.client(store)
    async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="first"):
        await client.start("waiting", 1, workflow_id="before")
        await until(store, lambda: all_waiting(client, ["before"]))
        await client.start("waiting", 2, workflow_id="also-before")
        await until(store, lambda: all_waiting(client, ["also-before"]))
    saved = await store.load_log_snapshot(worker_module.REGISTRY_SNAPSHOT)
    assert saved is not None
    registry = json.loads(saved.state)
    assert registry["runs"]["before"] == ["waiting", "first"]
    assert registry["workers"]["first"][1] is True or saved.position < await store.head_position()
    await client.start("waiting", 3, workflow_id="after")
    for workflow_id in ("before", "also-before", "after"):
        await client.signal(workflow_id, "go", {"by": "ops"})
    async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="second"):
        for workflow_id in ("before", "also-before", "after"):
            await client.result(workflow_id, timeout=TIMEOUT)
    for workflow_id in ("before", "also-before", "after"):
        assert (await client.history(workflow_id)).owner == "second"
    assert set(calls.values()) == {1}
