"""A LangGraph agent on agentfold: a refund needs a human's approval, the worker is killed mid-graph, and the
resumed run does not issue the refund twice."""

import asyncio
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

import agentfold
from agentfold.integrations.langgraph import AgentfoldSaver

STORE = "sqlite:///approval.db"
LEDGER = Path("refunds.json")  # the payment provider's books: refunds by idempotency key
THREAD = {"configurable": {"thread_id": "refund-order-42"}}


def issue_refund(idempotency_key: str, order: str, amount: int) -> dict[str, Any]:
    """The provider's API: a second call with the same key returns the first refund instead of paying again."""
    books = json.loads(LEDGER.read_text()) if LEDGER.exists() else {}
    if idempotency_key not in books:
        books[idempotency_key] = {"order": order, "amount": amount, "refund_id": f"re_{len(books) + 1}"}
        LEDGER.write_text(json.dumps(books))
    return books[idempotency_key]


class Ticket(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


model = GenericFakeChatModel(
    messages=iter([AIMessage("", tool_calls=[{"name": "refund", "args": {"order": "42", "amount": 30}, "id": "c1"}])])
)


def plan(state: Ticket) -> dict[str, Any]:
    return {"messages": [model.invoke(state["messages"])]}


def approve(state: Ticket) -> dict[str, Any]:
    call = state["messages"][-1].tool_calls[0]
    answer = interrupt({"approve refund?": call["args"]})
    return {"messages": [HumanMessage(f"refund {answer}")]}


def act(state: Ticket, runtime: Runtime) -> dict[str, Any]:
    call = state["messages"][-2].tool_calls[0]
    key = runtime.execution_info.task_id  # the same task on resume: the same key
    refund = issue_refund(key, **call["args"])
    if os.environ.get("CRASH_AFTER_REFUND"):
        Path("refund-called").touch()
        time.sleep(60)  # killed here: the refund is paid, the step is not recorded
    return {"messages": [ToolMessage(json.dumps(refund), tool_call_id=call["id"])]}


def build(saver: AgentfoldSaver) -> Any:
    graph = StateGraph(Ticket)
    graph.add_node("plan", plan)
    graph.add_node("approve", approve)
    graph.add_node("act", act)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "approve")
    graph.add_edge("approve", "act")
    graph.add_edge("act", END)
    return graph.compile(checkpointer=saver)


async def run(graph_input: Any) -> Any:
    async with agentfold.connect(STORE) as store:
        # durability="sync": each step's checkpoint is stored before the next step runs, so the task (and its id,
        # the refund's idempotency key) is recorded before the refund is paid.
        return await build(AgentfoldSaver(store)).ainvoke(graph_input, THREAD, durability="sync")


def worker(graph_input: Any, crash: bool) -> None:
    if crash:
        os.environ["CRASH_AFTER_REFUND"] = "1"
    print(asyncio.run(run(graph_input)).get("__interrupt__", ["finished"])[0], flush=True)


def in_process(graph_input: Any, crash: bool = False) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(target=worker, args=(graph_input, crash))
    process.start()
    return process


if __name__ == "__main__":
    first = in_process({"messages": [HumanMessage("my order 42 arrived broken")]})
    first.join()  # the graph stops at interrupt() and waits for a human

    second = in_process(Command(resume="approved"), crash=True)
    while not Path("refund-called").exists():
        time.sleep(0.05)
    os.kill(second.pid, signal.SIGKILL)  # mid-graph, after the provider call
    second.join()
    print("worker killed after the refund call")

    final = asyncio.run(run(None))  # resume from the last checkpoint: `act` runs again with the same key
    print(final["messages"][-1].content)
    print("refunds issued:", len(json.loads(LEDGER.read_text())))
