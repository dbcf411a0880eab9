"""`AgentfoldSession` behaves as the OpenAI Agents SDK's sessions do, and keeps its own promises."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from agents.memory import Session, SessionSettings

from agentfold.errors import InvalidInput
from agentfold.integrations.openai_agents import AgentfoldSession, session_stream
from agentfold.store import EventStore

ROOT = Path(__file__).resolve().parent.parent


def message(text: str, role: str = "user") -> dict[str, str]:
    return {"role": role, "content": text}


async def test_order_limit_pop_clear_and_isolation(store: EventStore) -> None:
    session = AgentfoldSession("one", store)
    other = AgentfoldSession("two", store)
    assert isinstance(session, Session)
    await session.add_items([message("a"), message("b", "assistant")])
    await session.add_items([message("c")])
    await other.add_items([message("elsewhere")])
    assert await session.get_items() == [message("a"), message("b", "assistant"), message("c")]
    assert await session.get_items(limit=2) == [message("b", "assistant"), message("c")]
    assert await session.get_items(limit=10) == await session.get_items()
    assert await session.get_items(limit=0) == []
    assert await session.pop_item() == message("c")
    assert await session.get_items() == [message("a"), message("b", "assistant")]
    assert await session.pop_item() == message("b", "assistant")
    await session.add_items([message("d")])
    assert await session.get_items(limit=1) == [message("d")]
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([message("after clear")])
    assert await session.get_items() == [message("after clear")]
    assert await other.get_items() == [message("elsewhere")]
    limited = AgentfoldSession("one", store, session_settings=SessionSettings(limit=1))
    await limited.add_items([message("e")])
    assert await limited.get_items() == [message("e")]
    with pytest.raises(InvalidInput):
        await session.add_items(message("not a list"))  # type: ignore[arg-type]


async def test_concurrent_add_items_from_two_tasks_keep_each_call_whole(store: EventStore) -> None:
    session = AgentfoldSession("busy", store)

    async def writer(name: str) -> None:
        for call in range(10):
            await session.add_items([message(f"{name}-{call}-{part}") for part in range(3)])

    await asyncio.gather(writer("x"), writer("y"))
    items = [item["content"] for item in await session.get_items()]
    assert len(items) == 60
    for start in range(0, 60, 3):
        name, call, _ = items[start].split("-")
        assert items[start : start + 3] == [f"{name}-{call}-{part}" for part in range(3)]
    assert sorted(items) == sorted(f"{n}-{c}-{p}" for n in "xy" for c in range(10) for p in range(3))


async def test_a_cancelled_add_items_leaves_all_or_nothing(store: EventStore) -> None:
    session = AgentfoldSession("cancelled", store)
    for attempt in range(12):
        call = asyncio.ensure_future(session.add_items([message(f"{attempt}-{part}") for part in range(5)]))
        for _ in range(attempt):
            await asyncio.sleep(0)
        call.cancel()  # it may already be done: then the items must all be there
        with contextlib.suppress(asyncio.CancelledError):
            await call
        stored = [item["content"] for item in await session.get_items() if item["content"].startswith(f"{attempt}-")]
        assert stored in ([], [f"{attempt}-{part}" for part in range(5)])


async def test_pops_from_two_tasks_remove_distinct_items(store: EventStore) -> None:
    session = AgentfoldSession("popped", store)
    await session.add_items([message(str(n)) for n in range(6)])
    popped = await asyncio.gather(*(session.pop_item() for _ in range(4)))
    assert sorted(item["content"] for item in popped if item) == ["2", "3", "4", "5"]
    assert await session.get_items() == [message("0"), message("1")]


async def test_a_branch_shares_the_prefix_without_copying_it(store: EventStore) -> None:
    main = AgentfoldSession("main", store)
    await main.add_items([message(str(n)) for n in range(5)])
    assert await main.pop_item() == message("4")
    branch = await main.branch_from(3, session_id="alt")
    assert await branch.get_items() == [message("0"), message("1"), message("2")]
    assert len([event async for event in store.read_stream(session_stream("alt"))]) == 1
    await branch.add_items([message("alt-3")])
    assert await branch.pop_item() == message("alt-3")
    assert await branch.pop_item() == message("2")  # a shared item, popped in the branch only
    await main.add_items([message("main-4")])
    assert await branch.get_items() == [message("0"), message("1")]
    assert await branch.get_items(limit=1) == [message("1")]
    assert await main.get_items() == [message(str(n)) for n in range(4)] + [message("main-4")]
    nested = await branch.branch_from(1)
    assert await nested.get_items() == [message("0")]
    empty = await main.branch_from(0)
    assert await empty.get_items() == []
    with pytest.raises(InvalidInput):
        await main.branch_from(99)


def test_runner_runs_two_turns_and_a_new_process_resumes_from_the_session(durable_url: str) -> None:
    def turn(text: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "tests.integration_procs", "agent-turn", durable_url, "chat-1", text],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split("OUTPUT ", 1)[1].strip()

    assert turn("my name is Ada") == "turn 1; heard: my name is Ada"
    assert turn("what is my name?") == "turn 2; heard: my name is Ada | what is my name?"
