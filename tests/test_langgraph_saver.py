"""What `AgentfoldSaver` guarantees beyond LangGraph's own savers, with LangGraph's own graphs and types."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

import agentfold
from agentfold.errors import CheckpointConflict, InvalidInput
from agentfold.integrations.langgraph import (
    CHECKPOINT_SAVED,
    HEAD_SNAPSHOT,
    WRITES_SAVED,
    AgentfoldSaver,
    body_of,
    stream_for,
)
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


class RecordingSaver(AgentfoldSaver):
    """Keeps a copy of every checkpoint it was given, to compare with what is read back."""

    def __init__(self, store: EventStore, **options: Any) -> None:
        super().__init__(store, **options)
        self.put_checkpoints: dict[str, Any] = {}

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        self.put_checkpoints[checkpoint["id"]] = copy.deepcopy(checkpoint)
        return await super().aput(config, checkpoint, metadata, new_versions)


async def test_a_chat_stores_what_changed_and_reads_back_exactly_what_was_put(store: EventStore) -> None:
    """A checkpoint stores the messages it appended once: as a reference to the pending write that holds them (with
    ``durability="sync"``, where a task's writes are stored before the next checkpoint is made). A fresh saver (as
    in a new process) reads every checkpoint back as it was put, through a message removed (not an append) and a
    branch from an older checkpoint."""
    saver = RecordingSaver(store, snapshot_every=4)
    graph = chat_graph(saver)
    for turn in range(1, 7):
        question = {"messages": [HumanMessage(f"question {turn}", id=f"q{turn}")]}
        await graph.ainvoke(question, config("chat"), durability="sync")
    await graph.aupdate_state(config("chat"), {"messages": [RemoveMessage(id="q2")]})
    older = [state async for state in graph.aget_state_history(config("chat"))][9]
    await graph.aupdate_state(older.config, {"messages": [HumanMessage("a branch", id="b1")]})
    await graph.ainvoke({"messages": [HumanMessage("question 7", id="q7")]}, config("chat"))  # writes in the background

    fresh = AgentfoldSaver(store, snapshot_every=4)
    listed = {item.checkpoint["id"]: item.checkpoint async for item in fresh.alist(config("chat"))}
    assert listed.keys() == saver.put_checkpoints.keys()
    for checkpoint_id, put in saver.put_checkpoints.items():
        found = await fresh.aget_tuple({"configurable": {"thread_id": "chat", "checkpoint_id": checkpoint_id}})
        assert found is not None
        assert found.checkpoint == listed[checkpoint_id] == put
    head = await fresh.aget_tuple(config("chat"))
    state = await graph.aget_state(config("chat"))
    assert head is not None and head.checkpoint["channel_values"]["messages"] == state.values["messages"]

    stored = [
        body_of(event)["values"].get("messages")
        async for event in store.read_stream(stream_for("chat"))
        if event.type == CHECKPOINT_SAVED
    ]
    kinds = [record[0] for record in stored[: len(stored) - 3] if record is not None]  # up to the last turn
    assert kinds.count("add@") >= 10 and "add" not in kinds
    assert kinds.count("set") == 2  # the message removed, and the branch: a whole list each


async def test_a_checkpoint_waits_for_its_parents_writes_under_way_to_refer_to_them(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LangGraph appends a task's writes in the background, beside the next checkpoint's put. When the store is slow
    to take the writes, the checkpoint still refers to them rather than storing the messages a second time."""
    appended = store.append

    async def slow_writes(stream: str, events: Any, **options: Any) -> Any:
        if events and events[0].type == WRITES_SAVED:
            await asyncio.sleep(0.05)
        return await appended(stream, events, **options)

    monkeypatch.setattr(store, "append", slow_writes)
    graph = chat_graph(AgentfoldSaver(store))
    for turn in range(1, 4):
        await graph.ainvoke({"messages": [HumanMessage(f"q{turn}", id=f"q{turn}")]}, config("slow"), durability="sync")
    kinds = [
        body_of(event)["values"]["messages"][0]
        async for event in store.read_stream(stream_for("slow"))
        if event.type == CHECKPOINT_SAVED and "messages" in body_of(event)["values"]
    ]
    assert kinds == ["set@"] + ["add@"] * (len(kinds) - 1) and len(kinds) == 6


async def test_reading_the_head_starts_at_the_snapshot_a_read_kept(store: EventStore) -> None:
    """A read of the head that folded `snapshot_every` checkpoints or more keeps the head whole beside the log; the
    next read needs nothing before it (here the events before it are trimmed away)."""
    graph = chat_graph(AgentfoldSaver(store, snapshot_every=3))
    for turn in range(1, 9):  # 8 turns of 3 checkpoints and 2 writes: longer than the first read of a head
        await graph.ainvoke({"messages": [HumanMessage(f"question {turn}", id=f"q{turn}")]}, config("long"))
    assert await store.load_snapshot(stream_for("long"), HEAD_SNAPSHOT) is not None  # kept by the reads above
    await graph.ainvoke({"messages": [HumanMessage("question 9", id="q9")]}, config("long"))
    head = await AgentfoldSaver(store, snapshot_every=3).aget_tuple(config("long"))
    assert head is not None
    snapshot = await store.load_snapshot(stream_for("long"), HEAD_SNAPSHOT)
    assert snapshot is not None and snapshot.version > 1
    state = await graph.aget_state(config("long"))

    await store.trim_stream(stream_for("long"), snapshot.version)
    again = await AgentfoldSaver(store, snapshot_every=3).aget_tuple(config("long"))
    assert again is not None and again.checkpoint == head.checkpoint
    assert again.checkpoint["channel_values"]["messages"] == state.values["messages"]
    assert len(state.values["messages"]) == 18


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
