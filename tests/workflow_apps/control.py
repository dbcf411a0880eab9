"""An approval workflow for the run-control tests, run by `agentfold worker tests.workflow_apps.control:runtime`.

Effects are lines appended to the file named by the environment variable `CONTROL_EFFECTS` (one line per execution,
``<idempotency key> <effect>``), so a test sees any effect that ran twice, even across SIGKILLed workers. A step
fails while a file ``<CONTROL_EFFECTS>.fail-<effect>`` exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agentfold.errors import WorkflowCancelled
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext

runtime = Runtime(default_retry=NO_RETRY)


def effects_file() -> Path:
    return Path(os.environ["CONTROL_EFFECTS"])


def effect(name: str, idempotency_key: str) -> str:
    path = effects_file()
    if Path(f"{path}.fail-{name}").exists():
        raise ConnectionError(f"{name}: the provider is down")
    with path.open("a") as lines:
        lines.write(f"{idempotency_key} {name}\n")
    return f"{name}-done"


def executed() -> list[str]:
    """Every effect executed so far, as ``<idempotency key> <effect>`` lines."""
    path = effects_file()
    return path.read_text().splitlines() if path.exists() else []


@runtime.workflow(name="approval")
async def approval(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    """Reserve, wait for a person's approval, charge; a cancel while waiting releases the reservation."""
    await ctx.step("reserve", effect, "reserve")
    try:
        decision = await ctx.wait_for("approval")
    except WorkflowCancelled:
        await ctx.step("release", effect, "release")
        raise
    await ctx.step("charge", effect, "charge")
    return {"order": order["id"], "approved_by": decision["by"]}
