"""`agentfold show langgraph:<thread>` and `agentfold replay langgraph:<thread>`: a LangGraph thread's checkpoints.

The facts come from `agentfold.integrations.langgraph` (`thread_timeline`, `channel_values_at`); this module only
presents them. LangGraph is needed only when such a thread is asked for.
"""

from __future__ import annotations

from typing import Any, Final

from rich.console import Group
from rich.json import JSON
from rich.text import Text

from agentfold.cli.common import format_time, output_console, print_json, run_with_store
from agentfold.cli.tables import Cell, Column, fit_table
from agentfold.store import EventStore

THREAD_PREFIX: Final = "langgraph:"


def is_thread(target: str) -> bool:
    """Whether a `show`/`replay` argument names a LangGraph thread rather than a workflow run."""
    return target.startswith(THREAD_PREFIX)


def _timeline_table(entries: list[Any], title: str, wide: bool) -> None:
    console = output_console()
    columns = [
        Column("#", justify="right"),
        Column("time (UTC)", rank=4),
        Column("step", justify="right"),
        Column("source", rank=3),
        Column("nodes", rank=1, fold=True, min_width=10),
        Column("updated", rank=2, fold=True, min_width=10),
        Column("checkpoint", rank=5),
    ]
    rows: list[list[Cell]] = []
    styles: list[str | None] = []
    for entry in entries:
        marker = " ‖ waits (interrupt)" if entry.interrupted else ""
        rows.append(
            [
                str(entry.seq),
                format_time(entry.recorded_at_us)[11:],
                "" if entry.step is None else str(entry.step),
                entry.source or "",
                ", ".join(entry.nodes) + marker,
                ", ".join(entry.updated),
                entry.checkpoint_id,
            ]
        )
        styles.append("bold magenta" if entry.interrupted else (None if entry.visible else "dim strike"))
    fit_table(columns, rows, console.width, wide=wide, title=title, row_styles=styles).print(console)


def show_thread(store_url: str, target: str, wide: bool, as_json: bool) -> None:
    """The timeline of a LangGraph thread: one row per checkpoint, with the nodes that made it."""
    from agentfold.integrations.langgraph import parse_thread, thread_timeline

    thread_id, ns = parse_thread(target)

    async def load(store: EventStore) -> Any:
        return await thread_timeline(store, thread_id, ns)

    entries = run_with_store(store_url, load)
    if as_json:
        print_json({"thread_id": thread_id, "checkpoint_ns": ns, "checkpoints": [e.to_json() for e in entries]})
        return
    _timeline_table(
        entries, f"LangGraph thread {thread_id}{f' / {ns}' if ns else ''}: {len(entries)} checkpoints", wide
    )


def replay_thread(store_url: str, target: str, to_seq: int | None, wide: bool, as_json: bool) -> None:
    """The thread's checkpoints up to `to_seq` (default: the last) and the channel values there; no node runs."""
    from agentfold.errors import InvalidInput
    from agentfold.integrations.langgraph import channel_values_at, parse_thread, plain, thread_timeline

    thread_id, ns = parse_thread(target)

    async def load(store: EventStore) -> tuple[list[Any], Any]:
        entries = await thread_timeline(store, thread_id, ns)
        chosen = [entry for entry in entries if to_seq is None or entry.seq <= to_seq]
        if not chosen:
            raise InvalidInput(f"thread {thread_id!r} has no checkpoint #{to_seq} or earlier")
        found = await channel_values_at(store, thread_id, ns, chosen[-1].checkpoint_id)
        return chosen, found

    entries, found = run_with_store(store_url, load)
    values = plain(found.checkpoint["channel_values"]) if found is not None else None
    if as_json:
        print_json(
            {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "to_seq": entries[-1].seq,
                "checkpoints": [entry.to_json() for entry in entries],
                "channel_values": values,
            }
        )
        return
    title = f"LangGraph thread {thread_id} to checkpoint #{entries[-1].seq} (nothing executed)"
    _timeline_table(entries, title, wide)
    heading = Text(f"channel values at checkpoint #{entries[-1].seq} ({entries[-1].checkpoint_id})", style="bold")
    body: Any = JSON.from_data(values) if values is not None else Text("(deleted or pruned)", style="dim")
    output_console().print(Group(heading, body))
