"""Durable Pydantic AI agents in one process: what is recorded, streaming, waits answered by token, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCalls, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, RunContext

import agentfold
from agentfold.errors import InvalidInput
from agentfold.integrations.pydantic_ai import (
    AgentfoldDurability,
    DurableAgent,
    current_idempotency_key,
    event_token,
    resolve,
)
from agentfold.runtime import Runtime, workflow_stream
from agentfold.store import EventStore
from tests.backends import BACKENDS, Backend, require_service

ROOT = Path(__file__).resolve().parent.parent
STORE_BACKENDS = [backend for backend in BACKENDS if backend.name in ("sqlite", "postgres") and backend.available()]


@pytest.fixture(params=STORE_BACKENDS, ids=lambda backend: backend.name)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    backend: Backend = request.param
    require_service(backend)
    url = backend.make_url(tmp_path)
    try:
        async with agentfold.connect(url) as opened:
            yield opened
    finally:
        backend.cleanup(url)


def two_step_model(calls: list[int]) -> FunctionModel:
    """Asks for the `quote` tool once, then answers with what it returned."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(len(messages))
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("quote", {"order": "o-9"}, tool_call_id="q-1")])
        return ModelResponse(parts=[TextPart(f"quoted {messages[-1].parts[0].content}")])

    return FunctionModel(respond)


async def test_model_requests_and_tool_calls_are_recorded_steps(store: EventStore) -> None:
    calls: list[int] = []
    keys: list[str] = []
    agent = Agent(two_step_model(calls), name="quoter", capabilities=[AgentfoldDurability()])

    @agent.tool_plain
    def quote(order: str) -> int:
        keys.append(current_idempotency_key())
        return 17

    runtime = Runtime()
    quoter = DurableAgent(runtime, agent)
    async with runtime.worker(store):
        await quoter.start(store, "quote o-9", run_id="quote-1")
        assert await quoter.result(store, "quote-1", timeout=30) == "quoted 17"

    events = [event async for event in store.read_stream(workflow_stream("quote-1"))]
    completed = [event.data for event in events if event.type == "StepCompleted"]
    assert [data["name"] for data in completed] == ["model_request", "tool:quote:q-1", "model_request"]
    first = completed[0]["result"]
    assert first["request"]["parts"][0]["content"] == "quote o-9"
    assert first["response"]["model_name"] == "function:respond:"
    assert first["response"]["usage"]["input_tokens"] > 0
    assert first["response"]["usage"]["output_tokens"] > 0
    assert keys == ["quote-1/2/tool:quote:q-1"]
    assert calls == [1, 3]
    finished = events[-1].data["result"]
    assert finished["usage"]["requests"] == 2

    # The conversation is read back from the log, at any point, without calling the model again.
    whole = await quoter.conversation(store, "quote-1")
    assert [type(message) for message in whole] == [ModelRequest, ModelResponse] * 2
    assert isinstance(whole[-1].parts[0], TextPart) and whole[-1].parts[0].content == "quoted 17"
    assert len(await quoter.conversation(store, "quote-1", upto=1)) == 2
    assert calls == [1, 3]

    # Starting the same run id again starts nothing.
    await quoter.start(store, "quote o-9", run_id="quote-1")
    assert calls == [1, 3]

    # A next turn of the conversation is a run that starts from the messages the first one recorded.
    async with runtime.worker(store):
        await quoter.start(store, "and again?", run_id="quote-2", message_history=whole)
        assert await quoter.result(store, "quote-2", timeout=30) == "quoted and again?"
    assert calls == [1, 3, 5], "the model saw the first turn's four messages, then the new prompt"
    second = await quoter.conversation(store, "quote-2")
    assert second[:4] == whole
    assert len(second) == 6


async def test_outside_a_durable_run_the_agent_runs_as_usual() -> None:
    calls: list[int] = []
    agent = Agent(two_step_model(calls), name="plain", capabilities=[AgentfoldDurability()])

    @agent.tool_plain
    def quote(order: str) -> int:
        return 5

    result = await agent.run("quote o-9")
    assert result.output == "quoted 5"
    assert calls == [1, 3]


async def test_streaming_delivers_events_live_and_records_the_final_response(store: EventStore) -> None:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        for piece in ("Your ", "refund ", "is on its way."):
            yield piece

    seen: list[str] = []

    async def handler(ctx: RunContext[Any], events: AsyncIterable[Any]) -> None:
        async for event in events:
            delta = getattr(getattr(event, "delta", None), "content_delta", None)
            if delta is not None:
                seen.append(delta)

    agent = Agent(
        FunctionModel(stream_function=stream),
        name="streamer",
        capabilities=[AgentfoldDurability(event_stream_handler=handler)],
    )
    runtime = Runtime()
    streamer = DurableAgent(runtime, agent)
    async with runtime.worker(store):
        await streamer.start(store, "where is my refund?", run_id="stream-1")
        assert await streamer.result(store, "stream-1", timeout=30) == "Your refund is on its way."

    assert "".join(seen).endswith("refund is on its way.")
    assert len(seen) >= 2, "the handler saw the response in pieces, as it streamed"
    recorded = [
        event.data["result"]["response"]
        async for event in store.read_stream(workflow_stream("stream-1"))
        if event.type == "StepCompleted"
    ]
    assert [part["content"] for part in recorded[0]["parts"]] == ["Your refund is on its way."]


async def test_a_wait_is_answered_with_the_token_it_handed_out(store: EventStore) -> None:
    tokens: list[str] = []
    asked = asyncio.Event()

    async def ask(ctx: RunContext[Any], requests: DeferredToolRequests, token: str) -> None:
        tokens.append(token)
        asked.set()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-3"}, tool_call_id="r-1")])
        return ModelResponse(parts=[TextPart(str(messages[-1].parts[0].content))])

    agent = Agent(
        FunctionModel(respond),
        name="refunder",
        capabilities=[AgentfoldDurability(), RequestInput(ask=ask, name="refund_approval")],
    )
    refunds: list[str] = []

    @agent.tool_plain(requires_approval=True)
    def refund(order: str) -> str:
        refunds.append(order)
        return f"refunded {order}"

    runtime = Runtime()
    refunder = DurableAgent(runtime, agent)
    async with runtime.worker(store):
        await refunder.start(store, "refund o-3", run_id="refund-1")
        await asyncio.wait_for(asked.wait(), 30)
        assert tokens == [event_token("refund-1", "refund_approval")]
        assert refunds == []
        await resolve(runtime, store, tokens[0], {"approvals": {"r-1": True}})
        assert await refunder.result(store, "refund-1", timeout=30) == "refunded o-3"
    assert refunds == ["o-3"]
    with pytest.raises(InvalidInput, match="not a token"):
        await resolve(runtime, store, "no token here", {})


def test_bad_input_is_refused_with_clear_errors() -> None:
    runtime = Runtime()
    bare = Agent(FunctionModel(lambda messages, info: ModelResponse(parts=[TextPart("hi")])), name="bare")
    with pytest.raises(InvalidInput, match="AgentfoldDurability"):
        DurableAgent(runtime, bare)
    with pytest.raises(InvalidInput, match=r"pydantic_ai\.Agent"):
        DurableAgent(runtime, "not an agent")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not callable"):
        AgentfoldDurability(effects={"charge": 3})  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="RetryPolicy"):
        AgentfoldDurability(retry=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="inside a tool call"):
        current_idempotency_key()
    assert runtime.names == [], "nothing was registered"
    named = Agent(bare.model, name="bare", capabilities=[AgentfoldDurability()])
    DurableAgent(runtime, named, name="support-v2")
    assert runtime.names == ["support-v2"]


def docs_example(heading: str) -> str:
    text = (ROOT / "docs" / "integrations.md").read_text().split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert code is not None
    return code.group(1)


def agentfold_cli(*args: str, cwd: Path) -> Any:
    """Run `agentfold ... --json` in a subprocess, as a user would, and decode what it prints."""
    env = {key: value for key, value in os.environ.items() if key != "AGENTFOLD_STORE"}
    done = subprocess.run(
        [sys.executable, "-m", "agentfold.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "250", "NO_COLOR": "1"},
        cwd=cwd,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_docs_example_runs_and_show_and_replay_read_its_run(tmp_path: Path) -> None:
    script = tmp_path / "support.py"
    script.write_text(docs_example("## Pydantic AI"))
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "approval needed for {'refund-1': {'order_id': 'A-17', 'amount': 59}}" in run.stdout
    assert "Done: refunded 59 EUR on A-17" in run.stdout
    assert '["request", "response", "request", "response", "request", "response"]' in run.stdout

    store = "sqlite:///support.db"
    shown = agentfold_cli("show", "ticket-42", "--store", store, cwd=tmp_path)
    details = {row["version"]: row["detail"] for row in shown["timeline"] if row["event_type"] == "StepCompleted"}
    model_rows = [detail for detail in details.values() if detail.startswith("model function:support_model")]
    assert len(model_rows) == 3
    assert all(" in, " in detail and " out tokens" in detail for detail in model_rows)
    assert 'calls lookup_order({"order_id":"A-17"})' in model_rows[0]
    assert "returned refunded 59 EUR on A-17" in details.values()

    whole = agentfold_cli("replay", "ticket-42", "--conversation", "--store", store, cwd=tmp_path)["conversation"]
    assert [line["who"] for line in whole] == ["user", "model", "tool", "model", "tool", "model"]
    assert whole[-1]["text"] == "Done: refunded 59 EUR on A-17"
    assert whole[1]["usage"].startswith("model function:support_model::")
    first_exchange = whole[1]["version"]
    early = agentfold_cli(
        "replay", "ticket-42", "--conversation", "--to", str(first_exchange), "--store", store, cwd=tmp_path
    )["conversation"]
    assert early == whole[:2]
