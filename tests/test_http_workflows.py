"""Workflow runs driven over HTTP on a real server, with a worker in the same process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import agentfold
from agentfold.store import EventStore
from agentfold.web.api import ApiSettings
from tests.api_server import api_only_app, bearer, running, token_for

runtime = agentfold.Runtime()


@runtime.workflow
async def review(ctx: agentfold.WorkflowContext, draft: str) -> dict[str, str]:
    verdict = await ctx.wait_for("verdict")
    return {"draft": draft, "verdict": verdict["says"]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    async with await agentfold.connect(f"sqlite:///{tmp_path / 'wf.db'}?synchronous=NORMAL") as opened:
        yield opened


async def test_start_signal_result_state_list_and_cancel(store: EventStore) -> None:
    token = await token_for(
        store,
        "editor",
        write=["workflow-review-*", "signals-review-*"],
        workflows=["start", "signal", "cancel"],
    )
    settings = ApiSettings(runtime=runtime)
    async with running(api_only_app(store, settings)) as url, runtime.worker(store):
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=bearer(token), timeout=30) as http:
            start = {"workflow": "review", "workflow_id": "review-1", "args": ["essay"]}
            first = await http.post("/workflows", json=start)
            assert first.status_code == 200, first.text
            again = await http.post("/workflows", json={**start, "args": ["other"]})
            assert again.json() == first.json() == {"workflow_id": "review-1", "workflow": "review"}

            waiting = await http.get("/workflows/review-1/result", params={"timeout": 0.2})
            assert waiting.status_code == 202 and waiting.json()["status"] in ("Processing", "AwaitingInput")

            signal = {"name": "verdict", "payload": {"says": "ship it"}, "signal_id": "v-1"}
            for _ in range(2):
                sent = await http.post("/workflows/review-1/signals", json=signal)
                assert sent.status_code == 200, sent.text
            done = await http.get("/workflows/review-1/result", params={"timeout": 20})
            assert done.status_code == 200
            assert done.json() == {
                "workflow_id": "review-1",
                "status": "completed",
                "result": {"draft": "essay", "verdict": "ship it"},
            }
            state = (await http.get("/workflows/review-1")).json()
            assert state["state"] == "Completed" and state["workflow"] == "review"

            await http.post("/workflows", json={**start, "workflow_id": "review-2"})
            cancelled = await http.post("/workflows/review-2/cancel", json={"reason": "withdrawn"})
            assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"] is True
            assert (await http.post("/workflows/review-2/cancel")).status_code == 200
            ended = await http.get("/workflows/review-2/result", params={"timeout": 20})
            assert ended.json()["status"] == "cancelled" and ended.json()["reason"] == "withdrawn"
            refused = await http.post("/workflows/review-1/cancel")
            assert refused.status_code == 409 and refused.json()["type"] == "urn:agentfold:error:RunControlRefused"

            runs = (await http.get("/workflows")).json()["runs"]
            assert [run["workflow_id"] for run in runs] == ["review-1", "review-2"]
            completed = (await http.get("/workflows", params={"status": "Completed"})).json()["runs"]
            assert [run["workflow_id"] for run in completed] == ["review-1"]

            by_name = await http.post("/workflows", json={"workflow": "elsewhere", "workflow_id": "review-3"})
            assert by_name.status_code == 200  # registered on another service's runtime: started by name
            unnamed = await http.post("/workflows", json={"workflow": "", "workflow_id": "review-4"})
            assert unnamed.status_code == 422 and unnamed.json()["field"] == "workflow"
            missing = await http.get("/workflows/review-404")
            assert missing.status_code == 404 and missing.json()["type"] == "urn:agentfold:error:WorkflowNotFound"
            nobody = await http.post("/workflows/review-404/signals", json={"name": "verdict"})
            assert nobody.status_code == 404
            out_of_scope = await http.post("/workflows", json={**start, "workflow_id": "other-1"})
            assert out_of_scope.status_code == 403


async def test_a_result_poll_without_timeout_waits_no_longer_than_the_servers_maximum(store: EventStore) -> None:
    """The default wait (30 s) is capped by `max_result_wait_seconds`: a client that names no timeout gets its 202
    within the server's own limit, never a wait longer than the server promised in its document."""
    token = await token_for(store, "editor", write=["workflow-review-*"], workflows=["start"])
    settings = ApiSettings(max_result_wait_seconds=0.2)  # no worker: the run never ends
    async with running(api_only_app(store, settings)) as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=bearer(token), timeout=25) as http:
            started = await http.post("/workflows", json={"workflow": "review", "workflow_id": "review-9"})
            assert started.status_code == 200, started.text
            waiting = await http.get("/workflows/review-9/result")
            assert waiting.status_code == 202 and waiting.json() == {"workflow_id": "review-9", "status": "Processing"}
            document = (await http.get("/openapi.json")).json()
            [timeout] = [
                parameter
                for parameter in document["paths"]["/workflows/{workflow_id}/result"]["get"]["parameters"]
                if parameter["name"] == "timeout"
            ]
            assert timeout["schema"]["default"] == 0.2
