"""Durable Pydantic AI agent runs in worker processes that are SIGKILLed, on SQLite and PostgreSQL.

The agents (`tests/workflow_apps/agents.py`) call a function model three times per run and charge a ledger once; the
model's calls and the ledger's charges are counted in a SQLite file, so a count made by a process that was killed
afterwards is still there. Every test checks the same end: each run completes, the model was called exactly once per
request, and each run's charge was applied exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentfold
from agentfold.runtime import workflow_stream
from agentfold.store import EventStore
from tests.backends import BACKENDS, Backend, require_service
from tests.worker_process import expect_line, kill, spawn_app
from tests.workflow_apps import agents

ROOT = Path(__file__).resolve().parent.parent
LINE_TIMEOUT = 60.0
STORE_BACKENDS = [backend for backend in BACKENDS if backend.name in ("sqlite", "postgres") and backend.available()]


@pytest.fixture(params=STORE_BACKENDS, ids=lambda backend: backend.name)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: Backend = request.param
    require_service(backend)
    chosen = backend.make_url(tmp_path)
    yield chosen
    backend.cleanup(chosen)


@pytest.fixture
def counts(tmp_path: Path) -> agents.Counts:
    agents.COUNTS["path"] = tmp_path / "counts.db"
    return agents.Counts(agents.COUNTS["path"])


async def spawn_worker(
    url: str, counts: agents.Counts, kill_at: str | None = None, lease_ttl: float = 1.0
) -> asyncio.subprocess.Process:
    args = [url, str(counts.path), *([kill_at] if kill_at else [])]
    return await spawn_app("tests.workflow_apps.agents", *args, env={"AGENTS_LEASE_TTL": str(lease_ttl)})


async def expect_line_in(process: asyncio.subprocess.Process, prefix: str) -> str:
    return await expect_line(process, prefix, LINE_TIMEOUT)


def assert_exactly_once(counts: agents.Counts, orders: list[str], *, charged: bool = True) -> None:
    """Three model requests per run, each made once; one ledger charge per run (none when it was rejected)."""
    assert counts.model_calls() == {(order, request): 1 for order in orders for request in (1, 2, 3)}
    ledger = counts.ledger()
    if charged:
        assert sorted(run for run, _ in ledger.values()) == sorted(orders)
        assert all(calls == 1 for _, calls in ledger.values())
    else:
        assert ledger == {}


async def recorded_types(store: EventStore, run_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(event.type, event.data) async for event in store.read_stream(workflow_stream(run_id))]


KILL_POINTS = [
    pytest.param("after:StepCompleted:model_request", id="after-first-model-response"),
    pytest.param("after:StepStarted:tool:charge", id="after-effect-intent"),
    pytest.param("before:StepCompleted:tool:charge", id="after-effect-before-its-record"),
]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
async def test_sigkill_then_a_new_worker_finishes_without_repeating(
    kill_at: str, url: str, counts: agents.Counts
) -> None:
    async with agentfold.connect(url) as store:
        await agents.shop.start(store, "order o-1", run_id="o-1")
        doomed = await spawn_worker(url, counts, kill_at)
        try:
            paused = await expect_line_in(doomed, f"PAUSED {kill_at}")
        finally:
            await kill(doomed)
        assert doomed.returncode == -signal.SIGKILL
        assert paused.split()[-1] == "o-1"

        survivor = await spawn_worker(url, counts)
        try:
            await expect_line_in(survivor, "READY")
            output = await agents.shop.result(store, "o-1", timeout=LINE_TIMEOUT)
        finally:
            await kill(survivor)

        assert output == "order o-1: receipt-o-1-42"
        assert_exactly_once(counts, ["o-1"])
        events = await recorded_types(store, "o-1")
        reconciled = [data for kind, data in events if kind == "StepCompleted" and data.get("reconciled")]
        not_applied = [data for kind, data in events if kind == "StepReconciled"]
        if kill_at == "before:StepCompleted:tool:charge":
            # The ledger had the charge: its answer is recorded as the call's result; the tool did not run again.
            assert [data["name"] for data in reconciled] == ["tool:charge:charge-o-1"]
            assert not_applied == []
        elif kill_at == "after:StepStarted:tool:charge":
            # The ledger had no charge for the key: the call ran again, with the same key.
            assert [data["applied"] for data in not_applied] == [False]
            assert reconciled == []
        else:
            assert reconciled == [] and not_applied == []
        model_steps = [data for kind, data in events if kind == "StepStarted" and data["name"] == "model_request"]
        assert len(model_steps) == 3, "a recorded model response is never requested again"


async def wait_for_state(
    store: EventStore, run_ids: list[str], states: tuple[str, ...], limit: float = LINE_TIMEOUT
) -> None:
    client = agents.runtime.client(store)
    for _ in range(int(limit / 0.05)):
        if all([await client.state(run_id) in states for run_id in run_ids]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"runs did not all reach {states}")


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "rejected"])
async def test_approval_waits_across_a_worker_restart(approved: bool, url: str, counts: agents.Counts) -> None:
    async with agentfold.connect(url) as store:
        client = agents.runtime.client(store)
        await agents.approved_shop.start(store, "order o-2", run_id="o-2")
        first = await spawn_worker(url, counts)
        try:
            await expect_line_in(first, "READY")
            await wait_for_state(store, ["o-2"], ("AwaitingInput",))
        finally:
            await kill(first)
        assert counts.ledger() == {}, "nothing is charged before the approval"

        if approved:  # from a shell, as a person approving it would
            payload = json.dumps({"approvals": {"charge-o-2": True}})
            command = ["agentfold.cli", "signal", "o-2", "approval", "--payload", payload, "--store", url]
            sent = await asyncio.create_subprocess_exec(sys.executable, "-m", *command, cwd=ROOT)
            assert await sent.wait() == 0
        else:
            denied = {"kind": "tool-denied", "message": "refund policy says no"}
            await client.signal("o-2", "approval", {"approvals": {"charge-o-2": denied}})
        second = await spawn_worker(url, counts)
        try:
            await expect_line_in(second, "READY")
            output = await agents.approved_shop.result(store, "o-2", timeout=LINE_TIMEOUT)
        finally:
            await kill(second)

    if approved:
        assert output == "order o-2: receipt-o-2-42"
    else:
        assert output == "order o-2: refund policy says no"
    assert_exactly_once(counts, ["o-2"], charged=approved)


async def test_fifty_runs_on_two_workers_one_killed(url: str, counts: agents.Counts) -> None:
    orders = [f"c-{number}" for number in range(50)]
    async with agentfold.connect(url) as store:
        client = agents.runtime.client(store)
        for order in orders:
            await agents.approved_shop.start(store, f"order {order}", run_id=order)
        # A lease long enough that a busy worker's late heartbeat never hands a running step to the other worker
        # (a takeover on an expired lease is at-least-once by design); the killed worker's runs move after it.
        workers = [await spawn_worker(url, counts, lease_ttl=10.0) for _ in range(2)]
        doomed = survivor = workers[0]
        try:
            ids = {(await expect_line_in(worker, "READY")).split()[1]: worker for worker in workers}
            await wait_for_state(store, orders, ("AwaitingInput",), limit=4 * LINE_TIMEOUT)
            # The worker holding the most runs is killed (how the two shared them depends on the machine's load):
            # each of its runs must be taken over by the other and finished once.
            holders = Counter([(await client.history(order)).owner for order in orders])
            doomed = ids[holders.most_common(1)[0][0]]
            [survivor] = [worker for worker in workers if worker is not doomed]
            await kill(doomed)
            for order in orders:
                await client.signal(order, "approval", {"approvals": {f"charge-{order}": True}})
            outputs = [await agents.approved_shop.result(store, order, timeout=LINE_TIMEOUT) for order in orders]
        finally:
            await kill(doomed)
            await kill(survivor)

    assert outputs == [f"order {order}: receipt-{order}-42" for order in orders]
    assert_exactly_once(counts, orders)
