"""Processes the integration tests start: `python -m tests.integration_procs racer URL THREAD GO_FILE`.

Each prints one line per fact the parent needs, flushed at once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from langgraph.checkpoint.base import empty_checkpoint

import agentfold
from agentfold.errors import CheckpointConflict
from agentfold.integrations.langgraph import AgentfoldSaver


def wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.005)


async def racer(url: str, thread_id: str, go_file: str) -> None:
    """Load the thread's head, wait for the go file, then save a child of that head: `SAVED` or `CONFLICT`."""
    async with agentfold.connect(url) as store:
        saver = AgentfoldSaver(store)
        head = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        assert head is not None
        print("LOADED", flush=True)
        await asyncio.to_thread(wait_for, Path(go_file))
        child = empty_checkpoint()
        try:
            await saver.aput(head.config, child, {"source": "loop", "step": 1}, {})
        except CheckpointConflict as conflict:
            print(f"CONFLICT {conflict.head_id}", flush=True)
        else:
            print(f"SAVED {child['id']}", flush=True)


async def agent_turn(url: str, session_id: str, text: str) -> None:
    """One `Runner.run` turn of a scripted agent on an `AgentfoldSession`; prints `OUTPUT <final output>`."""
    from agents import Agent, Runner, set_tracing_disabled

    from agentfold.integrations.openai_agents import AgentfoldSession
    from tests.scripted_model import RecallingModel

    set_tracing_disabled(True)
    async with agentfold.connect(url) as store:
        session = AgentfoldSession(session_id, store)
        agent = Agent(name="assistant", instructions="Remember what you are told.", model=RecallingModel())
        result = await Runner.run(agent, text, session=session)
        print(f"OUTPUT {result.final_output}", flush=True)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "racer":
        asyncio.run(racer(*arguments))
    elif command == "agent-turn":
        asyncio.run(agent_turn(*arguments))
    else:
        raise SystemExit(f"unknown command {command!r}")
