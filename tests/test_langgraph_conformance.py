"""LangGraph's own checkpointer conformance suite, every base and optional capability, on every backend."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from agentfold.integrations.langgraph import AgentfoldSaver
from agentfold.store import EventStore


async def test_langgraph_conformance_suite(store: EventStore) -> None:
    async def make_saver() -> AsyncGenerator[AgentfoldSaver, None]:
        yield AgentfoldSaver(store)

    registered = checkpointer_test(name=f"AgentfoldSaver[{store.scheme}]")(make_saver)
    report = await validate(registered)
    failures = {name: result.failures for name, result in report.results.items() if not result.passed}
    assert failures == {}
    assert {name for name, result in report.results.items() if result.passed} == {c.value for c in ALL_CAPABILITIES}
    assert all(result.tests_passed > 0 for result in report.results.values())
