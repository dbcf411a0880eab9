"""`agentfold show` and `agentfold replay` on a LangGraph thread, driven as a user drives them (a subprocess)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

import agentfold
from agentfold.integrations.langgraph import AgentfoldSaver
from tests.inspector_server import served
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


def test_the_inspector_lists_threads_and_shows_one_as_a_timeline_with_its_values(tmp_path: Path) -> None:
    """`agentfold serve` shows LangGraph threads: the list, a thread's checkpoints with the nodes that made them, the
    channel values at any checkpoint (nothing executed), and a link from the thread's stream; each page has a JSON
    twin that matches `agentfold show` / `replay`."""
    url = f"sqlite:///{tmp_path / 'threads.db'}"

    async def chat() -> None:
        async with agentfold.connect(url) as store:
            graph = chat_graph(AgentfoldSaver(store))
            for turn in (1, 2):
                await graph.ainvoke({"messages": [("user", f"question {turn}")]}, config("support-8"))
            await graph.ainvoke({"messages": [("user", "<b>hello</b>")]}, config("other <thread>"))

    asyncio.run(chat())
    shown = agentfold_cli("show", "--store", url, "langgraph:support-8")
    with served(url) as inspector, httpx.Client(base_url=inspector.base_url) as http:
        listing = http.get("/langgraph.json").json()
        assert [thread["thread_id"] for thread in listing["threads"]] == ["support-8", "other <thread>"]
        page = http.get("/langgraph")
        assert page.status_code == 200 and "support-8" in page.text
        assert "other &lt;thread&gt;" in page.text and "<thread>" not in page.text

        thread = http.get("/langgraph/thread.json", params={"id": "support-8"}).json()
        assert thread["checkpoints"] == shown["checkpoints"]
        made_by_reply = next(entry for entry in thread["checkpoints"] if entry["nodes"] == ["reply"])
        at = http.get("/langgraph/thread.json", params={"id": "support-8", "to": made_by_reply["seq"]}).json()
        assert at["to_seq"] == made_by_reply["seq"]
        assert [message["content"] for message in at["channel_values"]["messages"]] == ["question 1", "answer 1"]
        html = http.get("/langgraph/thread", params={"id": "support-8", "to": made_by_reply["seq"]}).text
        assert f"Channel values at checkpoint #{made_by_reply['seq']}" in html and "answer 1" in html

        stream = http.get("/stream", params={"id": "langgraph:support-8"}).text
        assert 'href="/langgraph/thread?id=support-8' in stream
        missing = http.get("/langgraph/thread", params={"id": "nobody"})
        assert missing.status_code == 400 and "no LangGraph thread &#39;nobody&#39;" in missing.text
