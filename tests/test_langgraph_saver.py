"""What `AgentfoldSaver` guarantees beyond LangGraph's own savers, with LangGraph's own graphs and types."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

import agentfold
from agentfold.errors import CheckpointConflict, InvalidInput
from agentfold.integrations.langgraph import CHECKPOINT_SAVED, AgentfoldSaver, stream_for
from agentfold.store import EventStore

ROOT = Path(__file__).resolve().parent.parent


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int


def chat_graph(saver: AgentfoldSaver) -> Any:
    def reply(state: Chat) -> dict[str, Any]:
        turn = state.get("turns", 0) + 1
        return {"messages": [AIMessage(f"answer {turn}", id=f"a{turn}")], "turns": turn}

    builder = StateGraph(Chat)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=saver)


def config(thread_id: str) -> Any:
    return {"configurable": {"thread_id": thread_id}}


async def test_a_chat_stores_appended_messages_and_reads_back_exactly_what_was_put(store: EventStore) -> None:
    saver = AgentfoldSaver(store, snapshot_every=4)
    graph = chat_graph(saver)
    for turn in range(1, 11):
        await graph.ainvoke({"messages": [HumanMessage(f"question {turn}", id=f"q{turn}")]}, config("chat"))
    state = await graph.aget_state(config("chat"))
    assert [message.content for message in state.values["messages"]][-4:] == [
        "question 9",
        "answer 9",
        "question 10",
        "answer 10",
    ]
    assert len(state.values["messages"]) == 20

    # A fresh saver (as in a new process) folds the stored suffixes back into the same values, at every checkpoint.
    fresh = AgentfoldSaver(store, snapshot_every=4)
    history = [item async for item in fresh.alist(config("chat"))]
    cached = [item async for item in saver.alist(config("chat"))]
    assert [item.checkpoint for item in history] == [item.checkpoint for item in cached]
    head = await fresh.aget_tuple(config("chat"))
    assert head is not None
    assert head.checkpoint["channel_values"]["messages"] == state.values["messages"]

    kinds = {"full": 0, "suffix": 0}
    async for event in store.read_stream(stream_for("chat")):
        if event.type == CHECKPOINT_SAVED:
            for record in event.data["values"]:
                if record["channel"] == "messages":
                    kinds["suffix" if "base" in record else "full"] += 1
    assert kinds["suffix"] > kinds["full"] > 0


async def test_a_long_thread_stores_whole_values_again_as_they_outgrow_their_suffixes(store: EventStore) -> None:
    """A list channel is stored whole again once its suffixes outgrow its last whole value; any other channel once
    its stored form lies `snapshot_every` checkpoints back. A fresh saver still reads back exactly what was put."""
    saver = AgentfoldSaver(store, snapshot_every=3)
    graph = chat_graph(saver)
    long_text = "x" * 3000  # suffixes outgrow the minimum chain size within a few steps
    for turn in range(1, 9):
        await graph.ainvoke({"messages": [HumanMessage(f"q{turn} {long_text}", id=f"q{turn}")]}, config("long"))
    checkpoints = [e.data async for e in store.read_stream(stream_for("long")) if e.type == CHECKPOINT_SAVED]
    wholes = [c["seq"] for c in checkpoints for r in c["values"] if r["channel"] == "messages" and "full" in r]
    suffixes = [c["seq"] for c in checkpoints for r in c["values"] if r["channel"] == "messages" and "base" in r]
    assert len(wholes) >= 3 and suffixes
    for data in [c for c in checkpoints if "turns" in c["anchors"]]:
        anchor_seq, anchor_bytes, chain_bytes = data["anchors"]["turns"]
        assert data["seq"] - anchor_seq < 3 and chain_bytes == 0
        anchor_seq, anchor_bytes, chain_bytes = data["anchors"]["messages"]
        assert chain_bytes <= max(anchor_bytes, 4096)
    fresh = AgentfoldSaver(store, snapshot_every=3)
    head = await fresh.aget_tuple(config("long"))
    state = await graph.aget_state(config("long"))
    assert head is not None
    assert head.checkpoint["channel_values"]["messages"] == state.values["messages"]
    assert len(head.checkpoint["channel_values"]["messages"]) == 16


async def test_a_put_that_does_not_extend_the_head_is_refused_and_writes_nothing(store: EventStore) -> None:
    saver = AgentfoldSaver(store)
    root = await saver.aput(config("t"), empty_checkpoint(), {"source": "input", "step": -1}, {})
    first = await saver.aput(root, empty_checkpoint(), {"source": "loop", "step": 0}, {})
    version = await store.stream_version(stream_for("t"))
    with pytest.raises(CheckpointConflict) as refused:
        await saver.aput(root, empty_checkpoint(), {"source": "loop", "step": 0}, {})
    assert refused.value.head_id == first["configurable"]["checkpoint_id"]
    assert await store.stream_version(stream_for("t")) == version
    # A deliberate branch (`update_state` on an older checkpoint) is allowed.
    await saver.aput(root, empty_checkpoint(), {"source": "update", "step": 1}, {})
    assert await store.stream_version(stream_for("t")) == version + 1


async def test_retried_put_writes_write_nothing_twice(store: EventStore) -> None:
    saver = AgentfoldSaver(store)
    saved = await saver.aput(config("w"), empty_checkpoint(), {"source": "loop", "step": 0}, {})
    writes = [("messages", ["hi"]), ("turns", 1)]
    await saver.aput_writes(saved, writes, "task-1", "~__pregel_pull, reply")
    version = await store.stream_version(stream_for("w"))
    await AgentfoldSaver(store).aput_writes(saved, writes, "task-1", "~__pregel_pull, reply")  # after a crash
    assert await store.stream_version(stream_for("w")) == version
    found = await saver.aget_tuple(saved)
    assert found is not None
    assert found.pending_writes == [("task-1", "messages", ["hi"]), ("task-1", "turns", 1)]
    # The same task failing twice writes its error twice with other values: stored, the newer one kept.
    await saver.aput_writes(saved, [("__error__", "first failure")], "task-2")
    await saver.aput_writes(saved, [("__error__", "second failure")], "task-2")
    found = await saver.aget_tuple(saved)
    assert found is not None
    assert ("task-2", "__error__", "second failure") in found.pending_writes


async def test_the_sync_methods_run_the_same_core_from_another_thread(store: EventStore) -> None:
    saver = AgentfoldSaver(store)
    saved = await asyncio.to_thread(saver.put, config("s"), empty_checkpoint(), {"source": "input", "step": -1}, {})
    found = await asyncio.to_thread(saver.get_tuple, config("s"))
    assert found is not None
    assert found.config == saved
    assert len(await asyncio.to_thread(lambda: list(saver.list(config("s"))))) == 1
    with pytest.raises(InvalidInput):
        saver.get_tuple(config("s"))  # on the saver's own loop it would deadlock


def test_two_processes_racing_on_one_thread_never_fork(durable_url: str, tmp_path: Path) -> None:
    thread_id = f"race-{uuid.uuid4().hex[:8]}"

    async def start() -> None:
        async with agentfold.connect(durable_url) as store:
            await AgentfoldSaver(store).aput(config(thread_id), empty_checkpoint(), {"source": "input"}, {})

    asyncio.run(start())
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration_procs", "racer", durable_url, thread_id, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for racer in racers:
        assert racer.stdout is not None
        assert racer.stdout.readline().strip() == "LOADED"
    go.touch()
    outcomes = sorted(racer.communicate(timeout=60)[0].split()[0] for racer in racers)
    assert outcomes == ["CONFLICT", "SAVED"]

    async def count() -> int:
        async with agentfold.connect(durable_url) as store:
            events = [event async for event in store.read_stream(stream_for(thread_id))]
            return sum(event.type == CHECKPOINT_SAVED for event in events)

    assert asyncio.run(count()) == 2
