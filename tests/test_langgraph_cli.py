"""`agentfold show` and `agentfold replay` on a LangGraph thread, driven as a user drives them (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import agentfold
from agentfold.integrations.langgraph import AgentfoldSaver
from tests.test_langgraph_saver import chat_graph, config


def agentfold_cli(*arguments: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "agentfold.cli", *arguments, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_a_thread_shows_as_a_timeline_and_replays_to_any_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'threads.db'}"
    async with agentfold.connect(url) as store:
        graph = chat_graph(AgentfoldSaver(store))
        for turn in (1, 2):
            await graph.ainvoke({"messages": [("user", f"question {turn}")]}, config("support-7"))

    shown = agentfold_cli("show", "--store", url, "langgraph:support-7")
    checkpoints = shown["checkpoints"]
    assert [entry["seq"] for entry in checkpoints] == list(range(1, len(checkpoints) + 1))
    assert ["reply"] in [entry["nodes"] for entry in checkpoints]
    made_by_reply = next(entry for entry in checkpoints if entry["nodes"] == ["reply"])
    assert "messages" in made_by_reply["updated"]

    replayed = agentfold_cli("replay", "--store", url, "langgraph:support-7", "--to", str(made_by_reply["seq"]))
    assert replayed["to_seq"] == made_by_reply["seq"]
    assert [message["content"] for message in replayed["channel_values"]["messages"]] == ["question 1", "answer 1"]
    assert replayed["channel_values"]["turns"] == 1
    last = agentfold_cli("replay", "--store", url, "langgraph:support-7")
    assert [message["type"] for message in last["channel_values"]["messages"]] == ["human", "ai", "human", "ai"]
