"""Worker processes SIGKILLed at every interesting point of a workflow, then restarted.

Each test starts three payment runs on a SQLite store, lets a worker process run them until it reaches the chosen
append (it prints ``PAUSED`` and freezes there), kills it with SIGKILL, starts a fresh worker, and checks against
the fake provider: every run completes, and no effect ran twice, except the documented at-least-once case (a step
without `reconcile`, killed after its effect and before `StepCompleted`, runs again with the same idempotency key).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

import agentfold
from agentfold.runtime import idempotency_key, workflow_stream
from tests.worker_process import expect_line, kill, spawn_app
from tests.workflow_apps import payments

INVOICES = ("inv-1", "inv-2", "inv-3")
LINE_TIMEOUT = 30.0


async def spawn_worker(url: str, provider: Path, kill_at: str | None) -> asyncio.subprocess.Process:
    return await spawn_app("tests.workflow_apps.payments", url, str(provider), *([kill_at] if kill_at else []))


async def expect_line_in(process: asyncio.subprocess.Process, prefix: str) -> str:
    return await expect_line(process, prefix, LINE_TIMEOUT)


KILL_POINTS = [
    # (where the worker dies, whether approvals are sent before it runs, extra executions of a confirm effect)
    pytest.param("before:StepStarted:initiate_payment", True, id="before-intent"),
    pytest.param("after:StepStarted:initiate_payment", True, id="after-intent-before-effect"),
    pytest.param("before:StepCompleted:initiate_payment", True, id="after-effect-before-outcome-reconciled"),
    pytest.param("after:WaitStarted:approval", False, id="during-wait-for"),
    pytest.param("after:StepStarted:confirm_payment", True, id="after-intent-before-effect-no-reconcile"),
    pytest.param("before:StepCompleted:confirm_payment", True, id="after-effect-before-outcome-no-reconcile"),
]


@pytest.mark.parametrize(("kill_at", "approve_first"), KILL_POINTS)
async def test_sigkill_at_each_point_then_resume(kill_at: str, approve_first: bool, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    provider_path = tmp_path / "provider.db"
    payments.PROVIDER["path"] = provider_path
    provider = payments.Provider(provider_path)
    async with agentfold.connect(url) as store:
        client = payments.runtime.client(store)
        for number in INVOICES:
            await client.start(payments.pay_invoice, {"number": number}, workflow_id=number)
            if approve_first:
                await client.signal(number, "approval", {"by": "alice"})

        doomed = await spawn_worker(url, provider_path, kill_at)
        try:
            paused = await expect_line_in(doomed, f"PAUSED {kill_at}")
        finally:
            await kill(doomed)
        assert doomed.returncode == -signal.SIGKILL
        killed_run = paused.split()[-1]

        if not approve_first:
            for number in INVOICES:
                await client.signal(number, "approval", {"by": "bob"})
        survivor = await spawn_worker(url, provider_path, None)
        try:
            await expect_line_in(survivor, "READY")
            results = {number: await client.result(number, timeout=LINE_TIMEOUT) for number in INVOICES}
        finally:
            await kill(survivor)

        approver = "alice" if approve_first else "bob"
        for number in INVOICES:
            assert results[number] == {
                "paid": f"pay-{number}",
                "approved_by": approver,
                "receipt": f"receipt-pay-{number}",
            }
            assert await client.state(number) == "Completed"

        # A step with `reconcile` ran its effect exactly once. A step without it ran once per attempt that got past
        # its intent before the crash: twice for the run killed after the effect, never with a new key.
        calls = provider.calls()
        attempts: dict[str, int] = {}
        async for event in store.read_all(types=["StepStarted"]):
            key = event.data["idempotency_key"]
            attempts[key] = max(attempts.get(key, 0), event.data["attempt"])
        assert set(calls) == {
            idempotency_key(number, seq, step)
            for number in INVOICES
            for seq, step in ((1, "initiate_payment"), (3, "confirm_payment"))
        }
        for number in INVOICES:
            assert calls[idempotency_key(number, 1, "initiate_payment")] == ("initiate_payment", 1)
            confirm = idempotency_key(number, 3, "confirm_payment")
            kind, count = calls[confirm]
            assert kind == "confirm_payment"
            assert 1 <= count <= attempts[confirm]
        if kill_at == "before:StepCompleted:confirm_payment":
            assert calls[idempotency_key(killed_run, 3, "confirm_payment")] == ("confirm_payment", 2)
        if kill_at == "after:StepStarted:confirm_payment":
            assert calls[idempotency_key(killed_run, 3, "confirm_payment")] == ("confirm_payment", 1)

        # The killed run's history shows what happened: intent, then the reconciliation or the second attempt. (The
        # other runs were frozen and killed wherever they were, so they may show reconciliations of their own.)
        recorded = [event async for event in store.read_all(stream_prefix="workflow-")]
        reconciled = [event for event in recorded if event.type == "StepCompleted" and event.data.get("reconciled")]
        not_applied = [event for event in recorded if event.type == "StepReconciled"]
        if kill_at == "before:StepCompleted:initiate_payment":
            assert reconciled, "the provider said the effect was applied: its result is recorded, not re-run"
        elif kill_at == "after:StepStarted:initiate_payment":
            assert not_applied, "the provider said the effect was not applied: the step ran again"
            assert all(event.data["applied"] is False for event in not_applied)
        for number in INVOICES:
            types = [event.type async for event in store.read_stream(workflow_stream(number))]
            assert types[0] == "WorkflowStarted"
            assert types[-1] == "WorkflowCompleted"
            assert types.count("WorkflowCompleted") == 1
