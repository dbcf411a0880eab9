"""Shared streams on every backend: many agents append at once and agree on the merged state."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agentfold import NewEvent
from agentfold.errors import InvalidInput, InvalidSharedOperation, SharedTypeMismatch
from agentfold.shared import SharedKind, SharedStream, fold_events, system_wall_clock_ms
from agentfold.store import EventStore

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "budget.py"
MINUTE_MS = 60_000


def load_budget_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("budget_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def skewed_clock(offset_ms: int) -> Any:
    return lambda: system_wall_clock_ms() + offset_ms


async def test_concurrent_agents_with_skewed_clocks_converge(store: EventStore) -> None:
    agents, writes_each = 8, 12
    stream = f"shared-{uuid.uuid4().hex[:8]}"

    async def work(index: int) -> SharedStream:
        agent_id = f"agent-{index}"
        shared = SharedStream(store, stream, agent_id, wall_clock=skewed_clock((index - agents // 2) * MINUTE_MS))
        for step in range(writes_each):
            kind = step % 4
            if kind == 0:
                await shared.increment("work", index + 1)
            elif kind == 1:
                await shared.add("seen", f"{agent_id}/{step}")
            elif kind == 2:
                await shared.put("findings", agent_id, step)
            else:
                await shared.discard("seen", f"{agent_id}/{step - 2}")
                await shared.write("latest", {"by": agent_id, "step": step})
        return shared

    replicas = await asyncio.gather(*(work(index) for index in range(agents)))
    states = [await replica.state() for replica in replicas]
    fresh = await SharedStream(store, stream, "reader").state()
    for state in states:
        assert state == fresh
    assert await store.stream_version(stream) == agents * writes_each + agents * (writes_each // 4)
    assert fresh.counter("work").value == sum((index + 1) * (writes_each // 4) for index in range(agents))
    assert fresh.set("seen").value == []  # every agent removed each element it had added
    assert fresh.map("findings").value == {f"agent-{index}": writes_each - 2 for index in range(agents)}
    siblings = fresh.multivalue("latest").siblings()
    assert siblings and all(sibling.value["step"] == writes_each - 1 for sibling in siblings)
    assert fresh.rejected == {}

    events = [event async for event in store.read_stream(stream)]
    rng = random.Random(11)
    for _order in range(5):
        delivered = events + rng.sample(events, len(events) // 2)
        rng.shuffle(delivered)
        assert fold_events(delivered) == fresh


async def test_a_causally_later_write_wins_even_from_a_clock_an_hour_behind(store: EventStore) -> None:
    ahead = SharedStream(store, "owners", "ahead", wall_clock=skewed_clock(60 * MINUTE_MS))
    behind = SharedStream(store, "owners", "behind", wall_clock=skewed_clock(-60 * MINUTE_MS))
    first = await ahead.assign("owner", "ahead")
    second = await behind.assign("owner", "behind")
    assert second.timestamp > first.timestamp
    assert (await SharedStream(store, "owners", "reader").state()).register("owner").value == "behind"
    assert (await ahead.state()).register("owner").value == "behind"
    third = await ahead.assign("owner", "ahead again")
    assert third.timestamp > second.timestamp
    assert (await behind.state()).register("owner").value == "ahead again"


async def test_set_remove_and_multi_value_writes_replace_what_the_writer_saw(store: EventStore) -> None:
    a = SharedStream(store, "board", "a")
    b = SharedStream(store, "board", "b")
    await a.add("claimed", "task-1")
    await b.discard("claimed", "task-1")
    await a.add("claimed", "task-1")
    await a.add("claimed", "task-2")
    assert (await b.state()).set("claimed").value == ["task-1", "task-2"]
    await a.write("plan", "A")
    await b.write("plan", "B")
    assert (await a.state()).multivalue("plan").value == ["B"]


async def test_retrying_a_write_with_its_op_id_counts_once(store: EventStore) -> None:
    shared = SharedStream(store, "retry", "a")
    receipt = await shared.increment("spent", 7)
    again = await shared.increment("spent", 7, op_id=receipt.op_id)
    assert (again.version, again.position) == (receipt.version, receipt.position)
    assert await store.stream_version("retry") == 1
    assert (await shared.state()).counter("spent").value == 7


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: s.increment("spent", 0), InvalidSharedOperation, "> 0"),
        (lambda s: s.increment("spent", -2), InvalidSharedOperation, "> 0"),
        (lambda s: s.increment("spent", 1.5), InvalidSharedOperation, "must be an int"),
        (lambda s: s.decrement("spent", True), InvalidSharedOperation, "must be an int"),
        (lambda s: s.assign("limit", math.nan), InvalidSharedOperation, "NaN"),
        (lambda s: s.assign("limit", {1, 2}), InvalidSharedOperation, "not JSON"),
        (lambda s: s.increment("", 1), InvalidSharedOperation, "shared key"),
        (lambda s: s.put("notes", "", 1), InvalidSharedOperation, "map field"),
        (lambda s: s.increment("spent", 1, op_id="not-a-uuid"), InvalidSharedOperation, "not a UUID"),
        (lambda s: s.assign("spent", 5), SharedTypeMismatch, "declared counter"),
        (lambda s: s.add("limit", 5), SharedTypeMismatch, "declared register"),
    ],
)
async def test_bad_writes_raise_a_typed_error_and_write_nothing(
    store: EventStore, call: Any, error: type[Exception], message: str
) -> None:
    shared = SharedStream(store, "guarded", "a", {"spent": SharedKind.COUNTER, "limit": SharedKind.REGISTER})
    with pytest.raises(error, match=message):
        await call(shared)
    assert issubclass(error, InvalidInput)
    assert await store.stream_version("guarded") == 0


async def test_a_key_keeps_the_type_its_history_gives_it(store: EventStore) -> None:
    shared = SharedStream(store, "untyped", "a")
    await shared.increment("k")
    other = SharedStream(store, "untyped", "b")
    with pytest.raises(SharedTypeMismatch, match="holds a counter"):
        await other.assign("k", 1)
    assert await store.stream_version("untyped") == 1


async def test_other_events_are_ignored_and_malformed_ones_reported(store: EventStore) -> None:
    shared = SharedStream(store, "mixed", "a")
    await shared.increment("n", 2)
    bad_id = uuid.uuid4()
    await store.append(
        "mixed",
        [
            NewEvent("note.written", {"text": "not shared state"}),
            NewEvent("shared.counter.add", {"key": "n", "hlc": [1, 0, "x"], "amount": "lots"}, id=bad_id),
        ],
    )
    await shared.increment("n", 3)
    state = await shared.state()
    assert state.counter("n").value == 5
    assert list(state.rejected) == [str(bad_id)]


async def test_budget_example_reports_the_same_over_spend_for_every_delivery(store: EventStore) -> None:
    budget = load_budget_example()
    report = await budget.run_budget(store, seed=5)
    reader_state = await SharedStream(store, budget.STREAM, "auditor", budget.SCHEMA).state()
    assert budget.budget_report(reader_state) == report
    assert all(other == report for other in await budget.reports_in_other_orders(store, orders=10, seed=3))
    assert report.limit == budget.LIMIT_CENTS
    assert reader_state.counter("spent").value == report.spent - report.refunded
    assert all(spend.running_total > report.limit for spend in report.over_budget)
    assert [spend.timestamp for spend in report.over_budget] == sorted(spend.timestamp for spend in report.over_budget)


async def test_agents_that_all_saw_the_same_balance_overspend_and_all_readers_agree_which(store: EventStore) -> None:
    budget = load_budget_example()
    schema = budget.SCHEMA
    await SharedStream(store, "tight", "coordinator", schema).assign("limit", 100)
    agents = [
        SharedStream(store, "tight", f"agent-{index}", schema, wall_clock=skewed_clock((2 - index) * MINUTE_MS))
        for index in range(5)
    ]
    balances = [(await agent.state()).register("limit").value for agent in agents]
    assert balances == [100] * 5  # every agent believes 100 is left, so each spends 30
    await asyncio.gather(*(agent.increment("spent", 30) for agent in agents))
    reports = [budget.budget_report(await agent.state()) for agent in agents]
    assert all(report == reports[0] for report in reports)
    report = reports[0]
    assert (report.spent, report.balance) == (150, -50)
    assert [spend.running_total for spend in report.over_budget] == [120, 150]
    events = [event async for event in store.read_stream("tight")]
    assert budget.budget_report(fold_events(events[::-1] + events, schema)) == report


def test_budget_example_runs_as_a_script(store_url: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", store_url, "--seed", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("limit 2000, spent ")
    assert "the same report from 20 shuffled, duplicated deliveries: yes" in completed.stdout
