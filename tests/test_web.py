"""The inspector over HTTP: every page and its JSON twin, the runs index behind the listing, errors, sign-in and
the safety rules (headers, token, CSRF, escaping). The browser tests are in test_web_browser.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import agentfold
from agentfold.events import NO_STREAM, NewEvent
from agentfold.runtime import Runtime, WorkflowContext
from tests.inspector_server import served

XSS = "<script>alert('x')</script>"


def make_runtime() -> Runtime:
    runtime = Runtime()

    @runtime.workflow(name="approval")
    async def approval(ctx: WorkflowContext, title: str) -> str:
        await ctx.step("draft", draft, title)
        decision = await ctx.wait_for("approve")
        return f"{title}: {decision}"

    return runtime


async def draft(title: str) -> str:
    return f"draft of {title}"


async def seed(url: str) -> None:
    """Two runs: one that finished, one waiting for approval, and a stream that holds an XSS payload."""
    runtime = make_runtime()
    async with agentfold.connect(url) as store:
        client = runtime.client(store)
        async with runtime.worker(store):
            done = await client.start("approval", "first", workflow_id="doc-1")
            await client.start("approval", XSS, workflow_id="doc-2")
            await client.signal("doc-1", "approve", "yes")
            await done.result(timeout=20)
            for _ in range(400):
                if await client.state("doc-2") == "AwaitingInput":
                    break
                await asyncio.sleep(0.05)
        await store.append("notes-1", [NewEvent("Noted", {"text": XSS})], expected_version=NO_STREAM)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'web.db'}"
    asyncio.run(seed(url))
    return url


def test_runs_page_and_its_json_twin(sqlite_store: str) -> None:
    with served(sqlite_store) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        page = http.get("/runs")
        assert page.status_code == 200
        assert "doc-1" in page.text and "doc-2" in page.text
        listing = http.get("/runs.json").json()
        assert {run["workflow_id"]: run["status"] for run in listing["runs"]} == {
            "doc-1": "Completed",
            "doc-2": "Stalled",
        }
        assert listing["counts"]["Completed"] == 1
        waiting = http.get("/runs.json", params={"status": "Stalled"}).json()
        assert [run["workflow_id"] for run in waiting["runs"]] == ["doc-2"]
