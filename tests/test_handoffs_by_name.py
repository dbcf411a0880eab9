"""Hand-offs between services by name: each service's runtime registers only its own workflows.

A planner starts a writer registered on another runtime by name, under an id it chooses, without importing its
code, and messages it by id; a misspelt name fails the child run, not the parent; a client waiting on a run nobody
serves says so.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import StepError, WorkflowFailed
from agentfold.runtime import Runtime, WorkflowContext
from agentfold.store import EventStore
from tests.backends import DURABLE, Backend, require_service

TIMEOUT = 30.0
BACKENDS = [backend for backend in DURABLE if backend.name in ("sqlite", "postgres")]


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: Backend = request.param
    require_service(backend)
    chosen = backend.make_url(tmp_path)
    yield chosen
    backend.cleanup(chosen)


@pytest.fixture
async def store(url: str) -> AsyncIterator[EventStore]:
    async with agentfold.connect(url) as opened:
        yield opened


def writer_service() -> Runtime:
    runtime = Runtime()

    async def draft(topic: str) -> str:
        return f"a draft about {topic}"

    @runtime.workflow(name="writer")
    async def writer(ctx: WorkflowContext, brief: dict[str, Any]) -> dict[str, Any]:
        text = await ctx.step("draft", draft, brief["topic"])
        feedback = await ctx.wait_for("feedback")
        return {"text": text, "feedback": feedback["note"]}

    return runtime


def planner_service(child: str) -> Runtime:
    runtime = Runtime()

    @runtime.workflow(name="planner")
    async def planner(ctx: WorkflowContext, topic: str) -> dict[str, Any]:
        writer_id = await ctx.start_child(child, {"topic": topic}, workflow_id=f"{ctx.workflow_id}/writer")
        await ctx.send(writer_id, "feedback", {"note": "shorter, please"})
        try:
            return {"writer": writer_id, **await ctx.child_result(writer_id, timeout=TIMEOUT)}
        except StepError as error:
            return {"writer": writer_id, "error": error.error_message}

    return runtime


async def test_a_workflow_on_another_runtime_is_started_and_messaged_by_name_and_chosen_id(
    store: EventStore, url: str
) -> None:
    planners, writers = planner_service("writer"), writer_service()
    assert not planners.knows("writer")
    async with agentfold.connect(url) as other, planners.worker(store), writers.worker(other):
        client = planners.client(store)
        await client.start("planner", "tides", workflow_id="plan-1")
        assert await client.result("plan-1", timeout=TIMEOUT) == {
            "writer": "plan-1/writer",
            "text": "a draft about tides",
            "feedback": "shorter, please",
        }
        assert await client.state("plan-1/writer") == "Completed"


async def test_an_unknown_name_fails_the_child_run_not_the_parent(store: EventStore, url: str) -> None:
    planners, writers = planner_service("writre"), writer_service()
    async with (
        agentfold.connect(url) as other,
        planners.worker(store, lease_ttl=1.5, unserved_grace=1.0),
        writers.worker(other, lease_ttl=1.5, unserved_grace=1.0),
    ):
        client = planners.client(store)
        await client.start("planner", "tides", workflow_id="plan-2")
        outcome = await client.result("plan-2", timeout=TIMEOUT)
        with pytest.raises(
            WorkflowFailed, match="no live worker serves workflow 'writre' \\(served: planner, writer\\)"
        ):
            await client.result("plan-2/writer")
    assert outcome["writer"] == "plan-2/writer"
    assert "UnknownWorkflow" in outcome["error"] and "'writre'" in outcome["error"]
    assert await client.state("plan-2") == "Completed"
    # Once a worker serves the name, the failed child can be retried.
    assert await client.retry("plan-2/writer") == 2


async def test_result_warns_when_no_live_worker_serves_the_workflow(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    writers = writer_service()
    client = writers.client(store)
    await client.start("reviewer", {"draft": 1}, workflow_id="review-1")
    async with writers.worker(store, unserved_grace=None):
        with caplog.at_level(logging.WARNING, logger="agentfold.runtime"), pytest.raises(TimeoutError):
            await client.result("review-1", timeout=4.0)
        assert await client.workers_serving("writer") != []
    warnings = [record.getMessage() for record in caplog.records if "waits for a worker" in record.getMessage()]
    assert warnings == [
        "run 'review-1' waits for a worker: no live worker serves workflow 'reviewer' (start one with "
        "`agentfold worker package.module:runtime`, whose runtime registers it)"
    ]
    assert await client.state("review-1") == "Processing"


def test_what_workers_serve_survives_the_registry_snapshot() -> None:
    from agentfold.runtime.leases import Liveness

    liveness = Liveness.from_json({"w1": [2**62, False], "w2": [2**62, False]}, {"w1": ["planner"], "w2": None})
    assert liveness.serving("planner") is None  # w2 does not say what it serves: nobody judges
    restored = Liveness.from_json(liveness.to_json(), liveness.serves_to_json())
    assert restored.serves_to_json() == {"w1": ["planner"], "w2": None}
    assert Liveness.from_json({"w1": [2**62, False]}, {"w1": ["planner"]}).serving("planner") == ["w1"]
    assert all(len(entry) == 2 for entry in liveness.to_json().values())  # earlier releases read it as before
