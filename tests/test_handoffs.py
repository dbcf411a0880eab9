"""Hand-offs between agents: child runs, messages to another run's mailbox, and triggers, on every backend."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import agentfold
from agentfold import NewEvent
from agentfold.errors import InvalidInput
from agentfold.runtime import Runtime, WorkflowContext, workflow_stream
from agentfold.runtime.triggers import TRIGGER_GROUP
from agentfold.store import EventStore

TIMEOUT = 30.0


async def test_a_child_run_starts_once_and_its_result_comes_back(store: EventStore) -> None:
    runtime = Runtime()
    calls: Counter[str] = Counter()

    async def pack(item: str, idempotency_key: str) -> str:
        calls[idempotency_key] += 1
        return f"packed-{item}"

    @runtime.workflow(name="pack_order")
    async def pack_order(ctx: WorkflowContext, items: list[str]) -> dict[str, Any]:
        packed = [await ctx.step(f"pack-{item}", pack, item) for item in items]
        return {"packed": packed}

    @runtime.workflow(name="fulfil")
    async def fulfil(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
        child_id = await ctx.start_child(pack_order, order["items"])
        packed = await ctx.child_result(child_id, timeout=TIMEOUT)
        again = await ctx.child(pack_order, ["extra"])
        return {"child": child_id, **packed, "again": again}

    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start(fulfil, {"items": ["a", "b"]}, workflow_id="order-1")
        result = await client.result("order-1", timeout=TIMEOUT)
    assert result["child"] == "order-1/1/child:pack_order"
    assert result["packed"] == ["packed-a", "packed-b"]
    assert result["again"] == {"packed": ["packed-extra"]}
    assert await client.result(result["child"]) == {"packed": ["packed-a", "packed-b"]}
    assert set(calls.values()) == {1}
    assert await client.state("order-1/3/child:pack_order") == "Completed"


async def test_a_failed_child_fails_the_parents_step(store: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow(name="broken")
    async def broken(ctx: WorkflowContext) -> None:
        raise ValueError("no stock")

    @runtime.workflow(name="parent")
    async def parent(ctx: WorkflowContext) -> str:
        try:
            await ctx.child(broken)
        except agentfold.errors.StepError as error:
            return f"{error.error_type}: {error.error_message}"
        return "unreachable"

    async with runtime.worker(store):
        client = runtime.client(store)
        await client.start(parent, workflow_id="p")
        outcome = await client.result("p", timeout=TIMEOUT)
    assert outcome.startswith("WorkflowFailed: workflow 'p/1/child:broken' failed: ValueError: no stock")


async def test_a_message_reaches_the_other_agents_mailbox_once(store: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow(name="reviewer")
    async def reviewer(ctx: WorkflowContext) -> dict[str, Any]:
        draft = await ctx.wait_for("draft", timeout=TIMEOUT)
        return {"reviewed": draft["text"]}

    @runtime.workflow(name="writer")
    async def writer(ctx: WorkflowContext, reviewer_id: str) -> str:
        await ctx.send(reviewer_id, "draft", {"text": "hello"})
        return "sent"

    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start(reviewer, workflow_id="reviewer-1")
        await client.start(writer, "reviewer-1", workflow_id="writer-1")
        assert await client.result("writer-1", timeout=TIMEOUT) == "sent"
        assert await client.result("reviewer-1", timeout=TIMEOUT) == {"reviewed": "hello"}
    inbox = [event async for event in store.read_stream("signals-reviewer-1")]
    assert [(event.type, event.data["name"]) for event in inbox] == [("SignalSent", "draft")]


async def test_sending_to_a_run_that_does_not_exist_fails_the_step(store: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow(name="lonely")
    async def lonely(ctx: WorkflowContext) -> str:
        try:
            await ctx.send("nobody", "hello")
        except agentfold.errors.StepError as error:
            return error.error_type
        return "delivered"

    async with runtime.worker(store):
        client = runtime.client(store)
        await client.start(lonely, workflow_id="lonely-1")
        assert await client.result("lonely-1", timeout=TIMEOUT) == "WorkflowNotFound"


def order_app(handled: Counter[str]) -> Runtime:
    runtime = Runtime()

    async def ship(order_id: str, idempotency_key: str) -> str:
        handled[order_id] += 1
        return f"shipped-{order_id}"

    @runtime.workflow(name="fulfil_order")
    async def fulfil_order(ctx: WorkflowContext, paid: dict[str, Any]) -> str:
        result: str = await ctx.step("ship", ship, paid["stream_id"])
        return result

    runtime.trigger("OrderPaid", fulfil_order, stream_prefix="order-")
    return runtime


async def test_a_trigger_starts_one_run_per_event_with_several_workers(durable_url: str) -> None:
    handled: Counter[str] = Counter()
    runtime = order_app(handled)
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other:
        for number in range(12):
            await store.append(f"order-{number}", [NewEvent("OrderPlaced", {}), NewEvent("OrderPaid", {"n": number})])
        await store.append("invoice-1", [NewEvent("OrderPaid", {})])  # another prefix: no run
        async with runtime.worker(store, lease_ttl=2.0), runtime.worker(other, lease_ttl=2.0):
            late = await store.append("order-late", [NewEvent("OrderPaid", {})])
            client = runtime.client(store)
            async with asyncio.timeout(TIMEOUT):
                while sum(handled.values()) < 13:
                    await store.wait_for_append(await store.head_position(), 0.5)
            paid = [event async for event in store.read_all(types=["OrderPaid"], stream_prefix="order-")]
            for event in paid:
                assert await client.result(f"fulfil_order-on-OrderPaid-{event.id}", timeout=TIMEOUT) == (
                    f"shipped-{event.stream_id}"
                )
        # Workers starting again (the group may deliver events again) start nothing new.
        async with runtime.worker(store, lease_ttl=2.0):
            await store.append("order-quiet", [NewEvent("OrderShipped", {})])
        starts = [event async for event in store.read_all(types=["WorkflowStarted"])]
        assert len(starts) == 13
        assert {event.stream_id for event in starts} == {
            workflow_stream(f"fulfil_order-on-OrderPaid-{event.id}") for event in paid
        }
        assert late.version == 1
        assert handled == Counter({f"order-{n}": 1 for n in range(12)} | {"order-late": 1})
        assert await store.stream_version(f"$group-{TRIGGER_GROUP}-members") > 0


def test_triggers_are_checked_when_registered() -> None:
    runtime = Runtime()

    @runtime.workflow
    async def handle(ctx: WorkflowContext, event: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidInput, match="'\\$'"):
        runtime.trigger("OrderPaid", handle, stream_prefix="$worker-")
    runtime.trigger("OrderPaid", handle)
    with pytest.raises(InvalidInput, match="already registered"):
        runtime.trigger("OrderPaid", handle)
    with pytest.raises(agentfold.errors.UnknownWorkflow):
        runtime.trigger("OrderPaid", "nobody")
