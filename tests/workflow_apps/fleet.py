"""Workflows for the multi-worker tests: run by `agentfold worker tests.workflow_apps.fleet:runtime`.

Every step applies an effect at a fake provider (a SQLite file named by the environment variable
`FLEET_PROVIDER`) that counts executions per idempotency key, and reconciles by asking it, so a test sees any
effect that ran twice.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from agentfold.runtime import NOT_APPLIED, RetryPolicy, Runtime

STEPS = 6
STEP_SECONDS = 0.02

runtime = Runtime(default_retry=RetryPolicy(max_attempts=5, initial_backoff=0.01))


class Provider:
    """The external system: one row per idempotency key, `calls` counting how often the effect was executed.

    WAL and one connection per process keep it fast under three workers: an effect that waits seconds for a
    database lock would outlive its worker's lease and tell the test nothing about the runtime.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, kind TEXT NOT NULL, calls INTEGER NOT NULL)"
        )

    def apply(self, kind: str, key: str) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT INTO effects (key, kind, calls) VALUES (?, ?, 1) "
                "ON CONFLICT (key) DO UPDATE SET calls = calls + 1",
                (key, kind),
            )

    def applied(self, key: str) -> bool:
        with self._lock:
            return self._connection.execute("SELECT 1 FROM effects WHERE key = ?", (key,)).fetchone() is not None

    def calls(self) -> dict[str, tuple[str, int]]:
        with self._lock:
            rows = self._connection.execute("SELECT key, kind, calls FROM effects").fetchall()
        return {key: (kind, calls) for key, kind, calls in rows}

    def close(self) -> None:
        self._connection.close()


_PROVIDER: list[Provider] = []


def provider() -> Provider:
    if not _PROVIDER:
        _PROVIDER.append(Provider(Path(os.environ["FLEET_PROVIDER"])))
    return _PROVIDER[0]


async def effect(index: int, idempotency_key: str) -> dict[str, Any]:
    await asyncio.sleep(STEP_SECONDS)
    await asyncio.to_thread(provider().apply, f"step-{index}", idempotency_key)
    return {"step": index}


async def effect_status(idempotency_key: str, index: int) -> Any:
    applied = await asyncio.to_thread(provider().applied, idempotency_key)
    return {"step": index} if applied else NOT_APPLIED


@runtime.workflow(name="fleet")
async def fleet(ctx: Any, number: int) -> dict[str, Any]:
    done = []
    for index in range(STEPS):
        result = await ctx.step(f"effect-{index}", effect, index, reconcile=effect_status)
        done.append(result["step"])
    return {"number": number, "steps": done}


@runtime.workflow(name="patient")
async def patient(ctx: Any, number: int) -> dict[str, Any]:
    """Waits for a signal: a run a worker holds without anything in flight."""
    first = await ctx.step("effect-0", effect, 0, reconcile=effect_status)
    approval = await ctx.wait_for("go")
    return {"number": number, "first": first["step"], "by": approval["by"]}


async def gated_effect(index: int, idempotency_key: str) -> dict[str, Any]:
    """The effect, then a hold until the file `FLEET_GATE` names exists: a step a paused worker is caught in."""
    await asyncio.to_thread(provider().apply, f"step-{index}", idempotency_key)
    gate = Path(os.environ["FLEET_GATE"])
    while not await asyncio.to_thread(gate.exists):  # noqa: ASYNC110  # another process creates it: nothing to await
        await asyncio.sleep(0.05)
    return {"step": index}


@runtime.workflow(name="gated")
async def gated(ctx: Any, number: int) -> dict[str, Any]:
    """A held step (applied, not yet recorded as done) then a plain one, both reconciled against the provider."""
    first = await ctx.step("effect-0", gated_effect, 0, reconcile=effect_status)
    second = await ctx.step("effect-1", effect, 1, reconcile=effect_status)
    return {"number": number, "steps": [first["step"], second["step"]]}
