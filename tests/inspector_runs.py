"""Runs the inspector tests look at: an approval workflow that waits for a signal, and a log holding an XSS payload."""

from __future__ import annotations

import asyncio

import agentfold
from agentfold.events import NO_STREAM, NewEvent
from agentfold.runtime import Runtime, WorkflowContext

XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>"
WAIT_POLLS = 400


async def draft(title: str) -> str:
    return f"draft of {title}"


def approval_runtime() -> Runtime:
    runtime = Runtime()

    @runtime.workflow(name="approval")
    async def approval(ctx: WorkflowContext, title: str) -> str:
        await ctx.step("draft", draft, title)
        decision = await ctx.wait_for("approve")
        return f"{title}: {decision}"

    return runtime


async def wait_for_state(url: str, workflow_id: str, state: str) -> None:
    async with agentfold.connect(url) as store:
        client = approval_runtime().client(store)
        for _ in range(WAIT_POLLS):
            if await client.state(workflow_id) == state:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{workflow_id} never reached {state}")


async def seed(url: str, waiting: tuple[str, ...] = ("doc-2",)) -> None:
    """``doc-1`` approved and completed; each of `waiting` (``doc-2``'s title is the XSS payload) waiting for
    approval with no worker left; ``notes-1`` holding the XSS payload in its data."""
    runtime = approval_runtime()
    async with agentfold.connect(url) as store:
        client = runtime.client(store)
        async with runtime.worker(store):
            done = await client.start("approval", "first", workflow_id="doc-1")
            for workflow_id in waiting:
                await client.start("approval", XSS if workflow_id == "doc-2" else workflow_id, workflow_id=workflow_id)
            await client.signal("doc-1", "approve", "yes")
            await done.result(timeout=20)
            for workflow_id in waiting:
                for _ in range(WAIT_POLLS):
                    if await client.state(workflow_id) == "AwaitingInput":
                        break
                    await asyncio.sleep(0.05)
        await store.append("notes-1", [NewEvent("Noted", {"text": XSS})], expected_version=NO_STREAM)
