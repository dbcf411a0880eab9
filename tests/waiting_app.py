"""A workflow that runs a step, waits for a signal and runs another: the run a worker holds while nothing of it is
in flight, used by the lease and worker-identity tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from agentfold.runtime import Runtime, WorkflowContext
from agentfold.store import EventStore


def waiting_app(calls: Counter[str]) -> Runtime:
    """A runtime with the workflow `waiting`; `calls` counts each step's executions by idempotency key."""
    runtime = Runtime()

    async def effect(what: str, idempotency_key: str) -> str:
        calls[idempotency_key] += 1
        return what

    @runtime.workflow(name="waiting")
    async def waiting(ctx: WorkflowContext, number: int) -> dict[str, Any]:
        first = await ctx.step("first", effect, f"first-{number}")
        go = await ctx.wait_for("go")
        second = await ctx.step("second", effect, f"second-{number}")
        return {"first": first, "second": second, "by": go["by"]}

    return runtime


async def until(store: EventStore, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Return once `check()` is true, re-checked after each append (a hang guard of `timeout` seconds)."""
    async with asyncio.timeout(timeout):
        while True:
            head = await store.head_position()
            if await check():
                return
            await store.wait_for_append(head, 0.2)
