"""Durable workflows in one process: recorded steps, resume, reconcile, determinism, retries, waits, values."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest

import agentfold
from agentfold import NewEvent
from agentfold.errors import (
    NonDeterminism,
    NotSerializable,
    StepError,
    UnknownWorkflow,
    WaitTimedOut,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WrongExpectedVersion,
)
from agentfold.runtime import (
    NO_RETRY,
    NOT_APPLIED,
    RetryPolicy,
    Runtime,
    WorkflowClient,
    WorkflowContext,
    WorkflowExecution,
    idempotency_key,
    workflow_stream,
)
from agentfold.store import EventStore

QUICK = RetryPolicy(max_attempts=3, initial_backoff=0, max_backoff=0)
TIMEOUT = 20.0


@pytest.fixture
async def memory() -> AsyncIterator[EventStore]:
    async with agentfold.connect("memory://") as store:
        yield store


async def events_of(store: EventStore, workflow_id: str) -> list[agentfold.RecordedEvent]:
    return [event async for event in store.read_stream(workflow_stream(workflow_id))]


async def types_of(store: EventStore, workflow_id: str) -> list[str]:
    return [event.type for event in await events_of(store, workflow_id)]


async def until_state(client: WorkflowClient, workflow_id: str, state: str) -> None:
    """Return once the run's folded lifecycle state is `state` (woken by appends, not by a timer)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            head = await client.store.head_position()
            if await client.state(workflow_id) == state:
                return
            await client.store.wait_for_append(head, 1.0)


class Provider:
    """An external API that counts effects per idempotency key."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def charge(self, invoice: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        self.calls[idempotency_key] += 1
        return {"id": f"pay-{invoice['number']}"}

    async def status(self, idempotency_key: str, invoice: dict[str, Any]) -> Any:
        return {"id": f"pay-{invoice['number']}"} if self.calls[idempotency_key] else NOT_APPLIED

    async def confirm(self, payment_id: str, idempotency_key: str) -> str:
        self.calls[idempotency_key] += 1
        return f"confirmed-{payment_id}"


def payment_app(provider: Provider) -> tuple[Runtime, Any]:
    runtime = Runtime(default_retry=QUICK)

    @runtime.workflow
    async def reconcile_payment(ctx: WorkflowContext, invoice: dict[str, Any]) -> dict[str, Any]:
        payment = await ctx.step("initiate_payment", provider.charge, invoice, reconcile=provider.status)
        approval = await ctx.wait_for("approval", timeout=timedelta(hours=24))
        await ctx.step("confirm_payment", provider.confirm, payment["id"])
        return {"paid": payment["id"], "by": approval["by"]}

    return runtime, reconcile_payment


async def awaiting_approval(
    store: EventStore, number: int, workflow_id: str
) -> tuple[Provider, Runtime, WorkflowClient]:
    """A `payment_app` run charged and waiting for its approval, left unfinished by a worker that stopped."""
    provider = Provider()
    runtime, reconcile_payment = payment_app(provider)
    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start(reconcile_payment, {"number": number}, workflow_id=workflow_id)
        await until_state(client, workflow_id, "AwaitingInput")
    return provider, runtime, client


async def test_the_documented_example_on_every_backend(store: EventStore) -> None:
    provider = Provider()
    runtime, reconcile_payment = payment_app(provider)
    async with runtime.worker(store):
        client = runtime.client(store)
        handle = await client.start(reconcile_payment, {"number": 7}, workflow_id="invoice-7")
        await client.signal("invoice-7", "approval", {"by": "alice"})
        assert await client.result("invoice-7", timeout=TIMEOUT) == {"paid": "pay-7", "by": "alice"}
        assert await handle.result() == {"paid": "pay-7", "by": "alice"}
    assert await client.state("invoice-7") == "Completed"
    assert provider.calls == {"invoice-7/1/initiate_payment": 1, "invoice-7/3/confirm_payment": 1}
    assert await types_of(store, "invoice-7") == [
        "WorkflowStarted",
        "StepStarted",
        "StepCompleted",
        "WaitStarted",
        "SignalReceived",
        "StepStarted",
        "StepCompleted",
        "WorkflowCompleted",
    ]
    started = (await events_of(store, "invoice-7"))[1].data
    assert started == {
        "seq": 1,
        "name": "initiate_payment",
        "attempt": 1,
        "idempotency_key": started["idempotency_key"],
    }
    assert started["idempotency_key"] == idempotency_key("invoice-7", 1, "initiate_payment")


async def test_a_waiting_run_survives_its_worker_and_completed_steps_do_not_run_again(memory: EventStore) -> None:
    provider, runtime, client = await awaiting_approval(memory, 1, "a")
    await client.signal("a", "approval", {"by": "bob"})
    async with runtime.worker(memory):  # a new worker finds the unfinished run and replays it
        assert await client.result("a", timeout=TIMEOUT) == {"paid": "pay-1", "by": "bob"}
    assert provider.calls == {"a/1/initiate_payment": 1, "a/3/confirm_payment": 1}


async def start_in_doubt(store: EventStore, client: WorkflowClient, workflow: Any, workflow_id: str) -> None:
    """A run whose process died after recording a step's intent and before its outcome."""
    await client.start(workflow, {"number": 5}, workflow_id=workflow_id)
    key = idempotency_key(workflow_id, 1, "initiate_payment")
    started = NewEvent("StepStarted", {"seq": 1, "name": "initiate_payment", "attempt": 1, "idempotency_key": key})
    await store.append(workflow_stream(workflow_id), [started], expected_version=1)
    await client.signal(workflow_id, "approval", {"by": "carol"})


async def test_in_doubt_step_applied_at_the_provider_is_reconciled_not_repeated(memory: EventStore) -> None:
    provider = Provider()
    runtime, reconcile_payment = payment_app(provider)
    client = runtime.client(memory)
    await start_in_doubt(memory, client, reconcile_payment, "r")
    provider.calls["r/1/initiate_payment"] = 1  # the effect happened; only its record was lost
    async with runtime.worker(memory):
        assert await client.result("r", timeout=TIMEOUT) == {"paid": "pay-5", "by": "carol"}
    assert provider.calls["r/1/initiate_payment"] == 1
    completed = next(event.data for event in await events_of(memory, "r") if event.type == "StepCompleted")
    assert completed == {
        "seq": 1,
        "name": "initiate_payment",
        "attempt": 1,
        "result": {"id": "pay-5"},
        "reconciled": True,
    }


async def test_in_doubt_step_not_applied_runs_again_with_the_same_key(memory: EventStore) -> None:
    provider = Provider()
    runtime, reconcile_payment = payment_app(provider)
    client = runtime.client(memory)
    await start_in_doubt(memory, client, reconcile_payment, "n")
    async with runtime.worker(memory):
        await client.result("n", timeout=TIMEOUT)
    assert provider.calls["n/1/initiate_payment"] == 1
    step_events = [(event.type, event.data.get("attempt")) for event in await events_of(memory, "n")][1:5]
    assert step_events == [("StepStarted", 1), ("StepReconciled", 1), ("StepStarted", 2), ("StepCompleted", 2)]


async def test_in_doubt_step_without_reconcile_reruns_with_the_same_key(memory: EventStore) -> None:
    keys: list[str] = []
    runtime = Runtime(default_retry=QUICK)

    async def send_email(to: str, idempotency_key: str) -> str:
        keys.append(idempotency_key)
        return f"sent to {to}"

    @runtime.workflow
    async def notify(ctx: WorkflowContext, to: str) -> str:
        return str(await ctx.step("send_email", send_email, to))

    client = runtime.client(memory)
    await client.start(notify, "ops@example.com", workflow_id="e")
    key = idempotency_key("e", 1, "send_email")
    started = NewEvent("StepStarted", {"seq": 1, "name": "send_email", "attempt": 1, "idempotency_key": key})
    await memory.append(workflow_stream("e"), [started], expected_version=1)
    async with runtime.worker(memory):
        assert await client.result("e", timeout=TIMEOUT) == "sent to ops@example.com"
    assert keys == [key]


async def test_gather_numbers_steps_in_call_order_not_completion_order(memory: EventStore) -> None:
    runtime = Runtime()
    calls: list[str] = []
    second_done = asyncio.Event()

    async def slow(tag: str) -> str:
        await second_done.wait()  # finishes only after the second step did
        calls.append(tag)
        return tag

    async def fast(tag: str) -> str:
        calls.append(tag)
        second_done.set()
        return tag

    @runtime.workflow
    async def fan_out(ctx: WorkflowContext) -> list[str]:
        return list(await asyncio.gather(ctx.step("slow", slow, "a"), ctx.step("fast", fast, "b")))

    client = runtime.client(memory)
    async with runtime.worker(memory):
        await client.start(fan_out, workflow_id="g")
        assert await client.result("g", timeout=TIMEOUT) == ["a", "b"]
    assert calls == ["b", "a"]
    completed = [event.data for event in await events_of(memory, "g") if event.type == "StepCompleted"]
    assert [(data["seq"], data["name"]) for data in completed] == [(2, "fast"), (1, "slow")]
    # Replaying the full history returns the recorded results in argument order and calls nothing.
    calls.clear()
    assert await replay_result(runtime, memory, "g") == ["a", "b"]
    assert calls == []


async def replay_result(runtime: Runtime, store: EventStore, workflow_id: str) -> Any:
    """Run the workflow again over a copy of its history without the final event."""
    async with agentfold.connect("memory://") as copy:
        recorded = await events_of(store, workflow_id)
        for event in recorded[:-1]:
            await copy.append(event.stream_id, [NewEvent(event.type, event.data, event.metadata, event.id)])
        execution = await WorkflowExecution.load(runtime, copy, workflow_id)
        await execution.run()
        assert [event.type for event in await events_of(copy, workflow_id)] == [event.type for event in recorded]
        return await runtime.client(copy).result(workflow_id)


async def test_changed_code_fails_with_nondeterminism_and_suspends_instead_of_corrupting(memory: EventStore) -> None:
    provider, old, client = await awaiting_approval(memory, 3, "d")
    before = await types_of(memory, "d")

    changed = Runtime()

    @changed.workflow(name="payment_app.<locals>.reconcile_payment")
    async def reconcile_payment_v2(ctx: WorkflowContext, invoice: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("check_fraud", provider.confirm, "x")
        return {}

    async with changed.worker(memory) as worker:
        with pytest.raises(NonDeterminism) as raised:
            await changed.client(memory).result("d", timeout=TIMEOUT)
        assert worker.suspended == ["d"]
    error = raised.value
    assert (error.seq, error.recorded, error.requested) == (1, "step 'initiate_payment'", "step 'check_fraud'")
    assert await types_of(memory, "d") == [*before, "WorkflowSuspended"]
    assert provider.calls == {"d/1/initiate_payment": 1}

    # Deploying code that matches the history again resumes the run.
    await client.signal("d", "approval", {"by": "dan"})
    async with old.worker(memory):
        assert await client.result("d", timeout=TIMEOUT) == {"paid": "pay-3", "by": "dan"}


async def test_a_run_waiting_for_approval_survives_a_deploy_with_patched(memory: EventStore) -> None:
    provider, _, client = await awaiting_approval(memory, 4, "p")

    deployed = Runtime(default_retry=QUICK)
    paths: list[tuple[str, bool]] = []

    @deployed.workflow(name="payment_app.<locals>.reconcile_payment")
    async def reconcile_payment_v2(ctx: WorkflowContext, invoice: dict[str, Any]) -> dict[str, Any]:
        payment = await ctx.step("initiate_payment", provider.charge, invoice, reconcile=provider.status)
        fraud_check = ctx.patched("fraud-check")  # added before the wait the old run is in
        paths.append(("fraud-check", fraud_check))
        if fraud_check:
            await ctx.step("check_fraud", provider.confirm, "fraud")
        approval = await ctx.wait_for("approval", timeout=timedelta(hours=24))
        receipt = ctx.patched("receipt")  # added after it
        paths.append(("receipt", receipt))
        if receipt:
            await ctx.step("send_receipt", provider.confirm, "receipt")
        await ctx.step("confirm_payment", provider.confirm, payment["id"])
        return {"paid": payment["id"], "by": approval["by"], "fraud_check": fraud_check, "receipt": receipt}

    await client.signal("p", "approval", {"by": "erin"})
    new_client = deployed.client(memory)
    async with deployed.worker(memory):
        assert await new_client.result("p", timeout=TIMEOUT) == {
            "paid": "pay-4",
            "by": "erin",
            "fraud_check": False,
            "receipt": True,
        }
        await new_client.start(reconcile_payment_v2, {"number": 8}, workflow_id="fresh")
        await new_client.signal("fresh", "approval", {"by": "erin"})
        assert (await new_client.result("fresh", timeout=TIMEOUT))["fraud_check"] is True
    assert paths[:2] == [("fraud-check", False), ("receipt", True)]
    # The decisions are part of the history: a replay of the finished run takes the same paths.
    paths.clear()
    assert (await replay_result(deployed, memory, "p"))["receipt"] is True
    assert paths == [("fraud-check", False), ("receipt", True)]


async def test_retries_backoff_and_non_retryable_errors(memory: EventStore) -> None:
    runtime = Runtime()
    attempts: Counter[str] = Counter()

    class Declined(Exception):
        pass

    async def flaky(name: str) -> str:
        attempts[name] += 1
        if attempts[name] < 3:
            raise ConnectionError(f"{name} unreachable")
        return f"{name} ok"

    async def declined() -> None:
        attempts["declined"] += 1
        raise Declined("card declined")

    policy = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.002, non_retryable=(Declined,))

    @runtime.workflow
    async def charge(ctx: WorkflowContext) -> dict[str, Any]:
        first = await ctx.step("flaky", flaky, "api", retry=policy)
        try:
            await ctx.step("declined", declined, retry=policy)
        except StepError as error:
            return {"first": first, "declined": error.error_type, "message": error.error_message}
        return {}

    client = runtime.client(memory)
    async with runtime.worker(memory):
        await client.start(charge, workflow_id="c")
        result = await client.result("c", timeout=TIMEOUT)
    assert result == {"first": "api ok", "declined": f"{__name__}.{Declined.__qualname__}", "message": "card declined"}
    assert attempts == {"api": 3, "declined": 1}
    failed = [event.data for event in await events_of(memory, "c") if event.type == "StepFailed"]
    assert [(data["name"], data["attempt"], data["final"]) for data in failed] == [
        ("flaky", 1, False),
        ("flaky", 2, False),
        ("declined", 1, True),
    ]
    assert failed[0]["error"] == {"type": "ConnectionError", "message": "api unreachable"}
    assert all("retry_at_us" in data for data in failed[:2])


async def test_step_timeout_cancels_and_records_each_attempt(memory: EventStore) -> None:
    runtime = Runtime()
    cancelled: list[int] = []

    async def hangs(idempotency_key: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    @runtime.workflow
    async def stuck(ctx: WorkflowContext) -> None:
        await ctx.step("hangs", hangs, timeout=0.01, retry=RetryPolicy(max_attempts=2, initial_backoff=0))

    client = runtime.client(memory)
    async with runtime.worker(memory):
        await client.start(stuck, workflow_id="t")
        with pytest.raises(WorkflowFailed) as raised:
            await client.result("t", timeout=TIMEOUT)
    assert raised.value.error_type == "StepError"
    assert "StepTimeout" in raised.value.error_message
    assert cancelled == [1, 1]
    failed = [event.data for event in await events_of(memory, "t") if event.type == "StepFailed"]
    assert [(data["attempt"], data["error"]["type"], data["final"]) for data in failed] == [
        (1, "StepTimeout", False),
        (2, "StepTimeout", True),
    ]


async def test_wait_for_timeout_is_a_recorded_event_and_signals_are_buffered(memory: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow
    async def approvals(ctx: WorkflowContext) -> list[Any]:
        got = [await ctx.wait_for("vote"), await ctx.wait_for("vote")]
        try:
            await ctx.wait_for("veto", timeout=0.01)
        except WaitTimedOut as error:
            got.append(f"no {error.name}")
        return got

    client = runtime.client(memory)
    handle = await client.start(approvals, workflow_id="w")
    # Sent before any worker runs the workflow: kept in the run's inbox, delivered in order, each once.
    await handle.signal("vote", 1, signal_id="v1")
    await handle.signal("vote", 1, signal_id="v1")  # the same signal id again: delivered once
    await handle.signal("vote", 2)
    async with runtime.worker(memory):
        assert await handle.result(timeout=TIMEOUT) == [1, 2, "no veto"]
    assert (await types_of(memory, "w"))[-3:] == ["WaitStarted", "WaitTimedOut", "WorkflowCompleted"]
    with pytest.raises(WorkflowNotFound):
        await client.signal("nobody", "vote", 1)


async def test_waits_gathered_together_each_get_their_signal(memory: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow
    async def two_approvals(ctx: WorkflowContext) -> list[Any]:
        return list(await asyncio.gather(ctx.wait_for("legal"), ctx.wait_for("finance")))

    client = runtime.client(memory)
    async with runtime.worker(memory):
        await client.start(two_approvals, workflow_id="two")
        await until_state(client, "two", "AwaitingInput")
        await client.signal("two", "finance", "ok-f")
        await client.signal("two", "legal", "ok-l")
        assert await client.result("two", timeout=TIMEOUT) == ["ok-l", "ok-f"]


async def test_a_signal_from_another_client_wakes_a_waiting_run(memory: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow
    async def wait_once(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("go", timeout=timedelta(minutes=5))

    async with runtime.worker(memory):
        await runtime.client(memory).start(wait_once, workflow_id="s")
        await until_state(runtime.client(memory), "s", "AwaitingInput")
        await Runtime().client(memory).signal("s", "go", {"now": True})  # a client that knows no workflows
        assert await runtime.client(memory).result("s", timeout=TIMEOUT) == {"now": True}


async def test_durable_sleep_now_and_random_are_recorded(memory: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow
    async def timed(ctx: WorkflowContext) -> dict[str, Any]:
        started = ctx.now()
        await ctx.sleep(timedelta(milliseconds=1))
        return {"started": started.isoformat(), "dice": ctx.random(), "later": ctx.now() >= started}

    client = runtime.client(memory)
    async with runtime.worker(memory):
        await client.start(timed, workflow_id="n")
        result = await client.result("n", timeout=TIMEOUT)
    assert isinstance(datetime.fromisoformat(result["started"]), datetime)
    assert 0 <= result["dice"] < 1 and result["later"] is True
    assert await types_of(memory, "n") == [
        "WorkflowStarted",
        "TimeRecorded",
        "TimerStarted",
        "TimerFired",
        "RandomRecorded",
        "TimeRecorded",
        "WorkflowCompleted",
    ]
    assert await replay_result(runtime, memory, "n") == result


@dataclass
class Invoice:
    number: int
    lines: list[str]


class Receipt(msgspec.Struct):
    invoice: int
    total: float


async def test_typed_inputs_and_results_and_refused_values(memory: EventStore) -> None:
    runtime = Runtime()
    seen: list[Any] = []

    async def bill(invoice: Invoice) -> Receipt:
        return Receipt(invoice.number, 12.5)

    def returns_a_set() -> set[int]:
        return {1}

    @runtime.workflow
    async def billing(ctx: WorkflowContext, invoice: Invoice) -> Receipt:
        seen.append(invoice)
        receipt = await ctx.step("bill", bill, invoice)
        seen.append(receipt)
        try:
            await ctx.step("bad", returns_a_set)
        except StepError as error:
            seen.append(error.error_type)
        return receipt  # type: ignore[no-any-return]

    client = runtime.client(memory)
    with pytest.raises(NotSerializable) as refused:
        await client.start(billing, {"when": datetime(2024, 1, 1)}, workflow_id="bad")
    assert refused.value.path == "input.args[0].when"
    assert await memory.head_position() == 0
    async with runtime.worker(memory):
        await client.start(billing, Invoice(9, ["tea"]), workflow_id="typed")
        assert await client.result("typed", timeout=TIMEOUT) == Receipt(9, 12.5)
        with pytest.raises(NotSerializable):
            await client.signal("typed", "x", object())
    assert seen == [Invoice(9, ["tea"]), Receipt(9, 12.5), "NotSerializable"]
    recorded = await events_of(memory, "typed")
    assert recorded[0].data["input"] == {"args": [{"number": 9, "lines": ["tea"]}]}


async def test_start_is_idempotent_on_workflow_id_and_failures_are_stored(memory: EventStore) -> None:
    runtime = Runtime()

    @runtime.workflow
    async def explode(ctx: WorkflowContext, reason: str) -> None:
        raise ValueError(reason)

    @runtime.workflow
    async def other(ctx: WorkflowContext) -> None:
        return None

    client = runtime.client(memory)
    await client.start(explode, "boom", workflow_id="x")
    await client.start(explode, "something else", workflow_id="x")
    assert await types_of(memory, "x") == ["WorkflowStarted"]
    with pytest.raises(WorkflowIdConflict):
        await client.start(other, workflow_id="x")
    with pytest.raises(UnknownWorkflow):  # a function must be registered; a name may be registered elsewhere
        await client.start(test_start_is_idempotent_on_workflow_id_and_failures_are_stored, workflow_id="y")
    assert await types_of(memory, "y") == []
    await client.start("registered-elsewhere", workflow_id="z")
    assert (await client.history("z")).workflow == "registered-elsewhere"
    with pytest.raises(WorkflowNotFound):
        await client.result("never-started")
    async with runtime.worker(memory):
        with pytest.raises(WorkflowFailed) as raised:
            await client.result("x", timeout=TIMEOUT)
    assert (raised.value.error_type, raised.value.error_message) == ("ValueError", "boom")
    assert await client.state("x") == "Failed"


async def test_two_executions_of_one_run_cannot_fork_its_history(memory: EventStore) -> None:
    runtime = Runtime()
    calls: list[str] = []

    async def effect(idempotency_key: str) -> str:
        calls.append(idempotency_key)
        return "done"

    @runtime.workflow
    async def single(ctx: WorkflowContext) -> Any:
        return await ctx.step("effect", effect, retry=NO_RETRY)

    await runtime.client(memory).start(single, workflow_id="f")
    first = await WorkflowExecution.load(runtime, memory, "f")
    second = await WorkflowExecution.load(runtime, memory, "f")
    await first.run()
    with pytest.raises(WrongExpectedVersion):
        await second.run()
    assert calls == ["f/1/effect"]
    assert await types_of(memory, "f") == ["WorkflowStarted", "StepStarted", "StepCompleted", "WorkflowCompleted"]


async def test_a_repeatable_step_records_its_start_and_outcome_in_one_append(store: EventStore) -> None:
    """`repeatable=True`: nothing is written before the call; the start and the outcome land in one append (the
    claim, the run's fence against a racing worker, is written before the first call). A failed attempt is recorded
    the same way, and the retry runs under the same key."""
    runtime = Runtime(default_retry=QUICK)
    calls: list[str] = []

    async def look_up(item: int, idempotency_key: str = "") -> dict[str, int]:
        calls.append(idempotency_key)
        if len(calls) == 2:
            raise ConnectionError("the catalogue blinked")
        return {"item": item, "stock": item * 3}

    @runtime.workflow
    async def stock(ctx: WorkflowContext, count: int) -> list[dict[str, int]]:
        return [await ctx.step(f"look_up-{item}", look_up, item, repeatable=True) for item in range(count)]

    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start(stock, 2, workflow_id="stock-1")
        assert await client.result("stock-1", timeout=TIMEOUT) == [{"item": 0, "stock": 0}, {"item": 1, "stock": 3}]
    events = await events_of(store, "stock-1")
    assert [event.type for event in events] == [
        "WorkflowStarted",
        "WorkflowClaimed",
        "StepStarted",
        "StepCompleted",
        "StepStarted",
        "StepFailed",
        "StepStarted",
        "StepCompleted",
        "WorkflowCompleted",
    ]
    assert calls == [idempotency_key("stock-1", 1, "look_up-0")] + [idempotency_key("stock-1", 2, "look_up-1")] * 2
    # Each start was appended with its outcome: one append, so one commit position (SQL) or adjacent ones.
    positions = [event.position for event in events]
    for start in (2, 4, 6):
        assert positions[start + 1] == positions[start] + 1
        assert events[start].recorded_at_us == events[start + 1].recorded_at_us


async def test_a_repeatable_step_refuses_reconcile_and_non_bool(memory: EventStore) -> None:
    runtime = Runtime()

    async def read() -> int:
        return 1

    async def reconcile(key: str) -> Any:
        return NOT_APPLIED

    @runtime.workflow
    async def both(ctx: WorkflowContext) -> int:
        value: int = await ctx.step("read", read, reconcile=reconcile, repeatable=True)
        return value

    @runtime.workflow
    async def odd(ctx: WorkflowContext) -> int:
        value: int = await ctx.step("read", read, repeatable="yes")  # type: ignore[call-overload]
        return value

    client = runtime.client(memory)
    async with runtime.worker(memory):
        for workflow, run in ((both, "both-1"), (odd, "odd-1")):
            await client.start(workflow, workflow_id=run)
            with pytest.raises(WorkflowFailed) as failed:
                await client.result(run, timeout=TIMEOUT)
            assert failed.value.error_type == "InvalidInput"
            assert "repeatable" in failed.value.error_message
    assert "StepStarted" not in await types_of(memory, "both-1")


async def test_batched_repeatable_steps_are_written_with_the_runs_next_append(store: EventStore) -> None:
    """`batched=True`: pure steps in a row take no append of their own; their records go with the next one (here a
    recorded step, then the run's end), in order, and replay reads them like any other."""
    runtime = Runtime()
    calls: Counter[str] = Counter()

    async def look_up(item: int) -> int:
        calls[f"look_up-{item}"] += 1
        return item * 3

    async def charge(total: int, idempotency_key: str = "") -> str:
        calls["charge"] += 1
        return f"charged {total}"

    @runtime.workflow
    async def order(ctx: WorkflowContext) -> list[Any]:
        stock = [await ctx.step(f"look_up-{item}", look_up, item, repeatable=True, batched=True) for item in (1, 2)]
        charged = await ctx.step("charge", charge, sum(stock))
        last = await ctx.step("look_up-3", look_up, 3, repeatable=True, batched=True)
        return [*stock, charged, last]

    client = runtime.client(store)
    async with runtime.worker(store):
        await client.start(order, workflow_id="order-1")
        assert await client.result("order-1", timeout=TIMEOUT) == [3, 6, "charged 9", 9]
    events = await events_of(store, "order-1")
    names = [(event.type, event.data.get("name")) for event in events]
    assert names == [
        ("WorkflowStarted", None),
        ("WorkflowClaimed", None),
        ("StepStarted", "look_up-1"),
        ("StepCompleted", "look_up-1"),
        ("StepStarted", "look_up-2"),
        ("StepCompleted", "look_up-2"),
        ("StepStarted", "charge"),  # the effect's intent carries the two look-ups with it
        ("StepCompleted", "charge"),
        ("StepStarted", "look_up-3"),
        ("StepCompleted", "look_up-3"),
        ("WorkflowCompleted", None),
    ]
    appended_together = [events[2:7], events[8:11]]
    for batch in appended_together:
        assert len({event.recorded_at_us for event in batch}) == 1
    assert events[7].recorded_at_us != events[6].recorded_at_us or events[7].position != events[6].position
    assert calls == {"look_up-1": 1, "look_up-2": 1, "look_up-3": 1, "charge": 1}


async def test_batched_needs_repeatable(memory: EventStore) -> None:
    runtime = Runtime()

    async def read() -> int:
        return 1

    @runtime.workflow
    async def alone(ctx: WorkflowContext) -> int:
        value: int = await ctx.step("read", read, batched=True)  # type: ignore[call-overload]
        return value

    client = runtime.client(memory)
    async with runtime.worker(memory):
        await client.start(alone, workflow_id="alone-1")
        with pytest.raises(WorkflowFailed) as failed:
            await client.result("alone-1", timeout=TIMEOUT)
    assert (
        failed.value.error_type == "InvalidInput" and "batched=True needs repeatable=True" in failed.value.error_message
    )
