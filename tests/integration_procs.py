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


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "racer":
        asyncio.run(racer(*arguments))
    else:
        raise SystemExit(f"unknown command {command!r}")
