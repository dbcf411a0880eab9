"""LangGraph threads in the inspector: the threads a saver wrote, and one thread's checkpoints as a timeline with
the channel values at any checkpoint (time travel without running a node), each with its JSON twin.

The list is read from the store alone; a thread's page folds its checkpoints with
`agentfold.integrations.langgraph`, so it needs the langgraph extra (without it the page says so).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agentfold.errors import InvalidInput
from agentfold.store import EventStore
from agentfold.web.pages import int_param, render, store_of

THREADS_PAGE: Final = 100
THREADS_STREAM: Final = "langgraph-threads"  # as `agentfold.integrations.langgraph` writes it


def _integration() -> Any:
    try:
        from agentfold.integrations import langgraph
    except ImportError as missing:
        raise InvalidInput(
            f"showing a LangGraph thread needs the langgraph extra ({missing.name} is not installed): "
            "pip install 'agentfold[langgraph]'"
        ) from None
    return langgraph


async def threads_page(request: Request) -> Response:
    """Every thread, in the order its first checkpoint was written, a page at a time."""
    after = int_param(request, "after", 0) or 0
    if after < 0:
        raise InvalidInput(f"after must be 0 or more, got {after}")
    store: EventStore = store_of(request)
    events = [event async for event in store.read_stream(THREADS_STREAM, after_version=after, limit=THREADS_PAGE + 1)]
    shown = events[:THREADS_PAGE]
    next_url = "/langgraph?" + urlencode({"after": shown[-1].version}) if len(events) > THREADS_PAGE and shown else None
    threads = [{"thread_id": event.data["thread_id"], "opened_at_us": event.recorded_at_us} for event in shown]
    data = {"threads": threads, "next_url": next_url}
    return render(request, "langgraph_threads.html", data, {"threads": threads, "next_url": next_url})


async def thread_page(request: Request) -> Response:
    """One thread's checkpoints (``id``, ``ns``) up to checkpoint ``to`` (default: the last), and the channel values
    there, read from the log."""
    thread_id = request.query_params.get("id", "")
    if not thread_id:
        raise InvalidInput("id must name a LangGraph thread")
    ns = request.query_params.get("ns", "")
    to_seq = int_param(request, "to")
    langgraph = _integration()
    store: EventStore = store_of(request)
    entries = await langgraph.thread_timeline(store, thread_id, ns)
    chosen = [entry for entry in entries if to_seq is None or entry.seq <= to_seq]
    if not chosen:
        raise InvalidInput(f"thread {thread_id!r} has no checkpoint #{to_seq} or earlier")
    found = await langgraph.channel_values_at(store, thread_id, ns, chosen[-1].checkpoint_id)
    values = langgraph.plain(found.checkpoint["channel_values"]) if found is not None else None
    data = {
        "thread_id": thread_id,
        "checkpoint_ns": ns,
        "to_seq": chosen[-1].seq,
        "checkpoints": [entry.to_json() for entry in entries],
        "channel_values": values,
    }
    context = {
        "thread_id": thread_id,
        "ns": ns,
        "entries": entries,
        "to_seq": chosen[-1].seq,
        "values": values,
        "stream_id": langgraph.stream_for(thread_id, ns),
    }
    return render(request, "langgraph_thread.html", data, context)


def routes() -> list[BaseRoute]:
    table: list[BaseRoute] = []
    for path, view in (("/langgraph", threads_page), ("/langgraph/thread", thread_page)):
        table.append(Route(path, view))
        table.append(Route(f"{path}.json", view))
    return table
