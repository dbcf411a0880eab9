"""Durable Pydantic AI agents run by a worker process the crash tests SIGKILL.

`python -m tests.workflow_apps.agents STORE_URL COUNTS_DB [KILL_AT]` runs a worker until killed (lease TTL
``AGENTS_LEASE_TTL`` seconds, default 1). `KILL_AT`
(``before|after:EventType:step-name-prefix``) names an append: when the worker reaches it, it prints
``PAUSED <KILL_AT> <run id>`` and freezes, so the parent can SIGKILL it at exactly that point.

Two agents share one function model and two tools: `lookup_order` (pure) and `charge` (an effect on a ledger, with a
`reconcile` that asks the ledger about the call's idempotency key). `shop` charges at once; `approved_shop` needs an
approval for the charge (`RequestInput`, answered by the signal ``approval``). The model's calls and the ledger's
charges are counted in a SQLite file, so the counts survive the death of the process that made them.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

import agentfold
from agentfold.events import AppendResult, NewEvent
from agentfold.integrations.pydantic_ai import AgentfoldDurability, DurableAgent, current_idempotency_key
from agentfold.runtime import NOT_APPLIED, RecordHook, RetryPolicy, Runtime

runtime = Runtime(default_retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))

COUNTS: dict[str, Path] = {}


class Counts:
    """The outside world: how often the model was called per request, and what the ledger charged per key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS model_calls "
                "(run TEXT NOT NULL, request INTEGER NOT NULL, calls INTEGER NOT NULL, PRIMARY KEY (run, request))"
            )
            connection.execute(
                "CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, run TEXT NOT NULL, calls INTEGER NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def model_called(self, run: str, request: int) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO model_calls (run, request, calls) VALUES (?, ?, 1) "
                "ON CONFLICT (run, request) DO UPDATE SET calls = calls + 1",
                (run, request),
            )

    def charge(self, key: str, run: str) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO ledger (key, run, calls) VALUES (?, ?, 1) "
                "ON CONFLICT (key) DO UPDATE SET calls = calls + 1",
                (key, run),
            )

    def charged(self, key: str) -> bool:
        with self._connect() as connection:
            return connection.execute("SELECT 1 FROM ledger WHERE key = ?", (key,)).fetchone() is not None

    def model_calls(self) -> dict[tuple[str, int], int]:
        with self._connect() as connection:
            rows = connection.execute("SELECT run, request, calls FROM model_calls").fetchall()
        return {(run, request): calls for run, request, calls in rows}

    def ledger(self) -> dict[str, tuple[str, int]]:
        with self._connect() as connection:
            rows = connection.execute("SELECT key, run, calls FROM ledger").fetchall()
        return {key: (run, calls) for key, run, calls in rows}


def counts() -> Counts:
    return Counts(COUNTS["path"])


def order_of(messages: Sequence[ModelMessage]) -> str:
    """The order a run is about: its prompt is ``order <id>``."""
    for message in messages:
        for part in message.parts:
            if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                return part.content.split()[-1]
    raise AssertionError("no prompt in the conversation")


async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Three requests per run: look the order up, charge it, then say what happened."""
    order = order_of(messages)
    request = sum(isinstance(message, ModelResponse) for message in messages) + 1
    counts().model_called(order, request)
    if request == 1:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order": order}, tool_call_id=f"lookup-{order}")])
    if request == 2:
        total = next(
            part.content["total"]
            for part in messages[-1].parts
            if isinstance(part, ToolReturnPart) and isinstance(part.content, dict)
        )
        return ModelResponse(
            parts=[ToolCallPart("charge", {"order": order, "amount": total}, tool_call_id=f"charge-{order}")]
        )
    last = messages[-1].parts[-1]
    outcome = last.content if isinstance(last, ToolReturnPart) else "nothing"
    return ModelResponse(parts=[TextPart(f"order {order}: {outcome}")])


def lookup_order(order: str) -> dict[str, Any]:
    """Look an order up (pure)."""
    return {"order": order, "total": 42}


def charge(order: str, amount: int) -> str:
    """Charge an order on the ledger (an effect)."""
    counts().charge(current_idempotency_key(), order)
    return f"receipt-{order}-{amount}"


def charge_status(idempotency_key: str, order: str, amount: int) -> Any:
    """What the ledger knows about a charge whose outcome the run did not record."""
    if counts().charged(idempotency_key):
        return f"receipt-{order}-{amount}"
    return NOT_APPLIED


async def hand_to_approver(ctx: Any, requests: Any, token: str) -> None:
    """The approver is told elsewhere (the test signals ``approval``); the run waits."""
    return None


def make_agent(name: str, *, approval: bool) -> Agent[None, str]:
    toolset: FunctionToolset[None] = FunctionToolset(id="shop")
    toolset.add_function(lookup_order)
    toolset.add_function(charge, requires_approval=approval)
    capabilities: list[Any] = [AgentfoldDurability(effects={"charge": charge_status})]
    if approval:
        capabilities.append(RequestInput(ask=hand_to_approver, name="approval"))
    return Agent(FunctionModel(respond), name=name, toolsets=[toolset], capabilities=capabilities)


shop = DurableAgent(runtime, make_agent("shop", approval=False))
approved_shop = DurableAgent(runtime, make_agent("approved_shop", approval=True))


class KillPoint(RecordHook):
    """Freezes the process at one append so the parent can SIGKILL it there."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.moment, self.event_type, self.prefix = spec.split(":", 2)

    def _matches(self, events: Sequence[NewEvent]) -> bool:
        return any(
            event.type == self.event_type and str(event.data.get("name", "")).startswith(self.prefix)
            for event in events
        )

    def _freeze(self, workflow_id: str) -> None:
        print(f"PAUSED {self.spec} {workflow_id}", flush=True)
        sys.stdin.readline()  # blocks the whole process (event loop included) until it is killed
        raise SystemExit("the kill point was released instead of killed")

    def before_append(self, workflow_id: str, events: Sequence[NewEvent]) -> None:
        if self.moment == "before" and self._matches(events):
            self._freeze(workflow_id)

    def after_append(self, workflow_id: str, events: Sequence[NewEvent], result: AppendResult) -> None:
        if self.moment == "after" and self._matches(events):
            self._freeze(workflow_id)


async def serve(url: str, lease_ttl: float) -> None:
    async with agentfold.connect(url) as store, runtime.worker(store, lease_ttl=lease_ttl) as worker:
        print("READY", worker.worker_id, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    url, counts_path, *kill_at = sys.argv[1:]
    COUNTS["path"] = Path(counts_path)
    Counts(COUNTS["path"])
    if kill_at:
        runtime.hooks.append(KillPoint(kill_at[0]))
    asyncio.run(serve(url, float(os.environ.get("AGENTS_LEASE_TTL", "1.0"))))


if __name__ == "__main__":
    main()
