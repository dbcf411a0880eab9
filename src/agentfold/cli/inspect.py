"""Look inside a store: `workflows`, `show`, `replay`, `diff`, `tail`, `export`, `stats`.

Every command only reads the log (`workflows` and `stats` bring the runs index beside it up to date). Tables fit
the terminal; `--json` prints the same facts for scripts (`tail --json`: one object per line). Steps that failed,
retries and attempts left in doubt stand out by colour and by a marker column, so they show in a plain-text paste
too.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Group
from rich.json import JSON
from rich.text import Text

from agentfold.cli import main
from agentfold.cli.common import (
    format_size,
    format_time,
    json_option,
    output_console,
    print_json,
    print_json_line,
    progress_bar,
    resolve_workflow,
    run_with_store,
    store_option,
    wide_option,
)
from agentfold.cli.langgraph_threads import is_thread, replay_thread, show_thread
from agentfold.cli.tables import Cell, Column, fit_table
from agentfold.display import format_duration, iso_time, now_us
from agentfold.errors import InvalidInput
from agentfold.events import AGENT_ID, RecordedEvent
from agentfold.runs_index import MAX_PAGE, STALLED, RunsIndex, RunsPage, RunsQuery
from agentfold.runtime import history as h
from agentfold.runtime.conversation import ConversationLine, conversation
from agentfold.runtime.inspect import (
    FLAG_ATTEMPT_FAILED,
    FLAG_FAILED,
    FLAG_IN_DOUBT,
    FLAG_RECONCILED,
    FLAG_RETRY,
    FLAG_SUSPENDED,
    FLAG_TIMED_OUT,
    INBOX,
    RUN_STATUSES,
    SUSPENDED,
    Change,
    ReplayStep,
    RunSummary,
    compact_json,
    describe_event,
    diff_versions,
    event_json,
    export_trace,
    replay,
    run_summary,
    state_at,
    store_stats,
    timeline,
)
from agentfold.store import EventStore

TRACE_FORMAT: Final = "agentfold-trace/1"
DEFAULT_PAGE: Final = 50
"""Runs `workflows` shows per page."""

MARKERS: Final = {
    FLAG_FAILED: ("✗", "bold red"),
    FLAG_ATTEMPT_FAILED: ("!", "red"),
    FLAG_RETRY: ("↻", "yellow"),
    FLAG_IN_DOUBT: ("?", "magenta"),
    FLAG_RECONCILED: ("≈", "cyan"),
    FLAG_TIMED_OUT: ("⌛", "yellow"),
    FLAG_SUSPENDED: ("‖", "bold magenta"),
}
"""Flag -> (symbol, row style). The marker column shows the symbol and the flag's name."""

STATE_STYLES: Final = {
    "Completed": "green",
    "Failed": "bold red",
    "AwaitingInput": "cyan",
    "Processing": "yellow",
    "Idle": "dim",
    "Cancelled": "dim yellow",
    "Terminated": "red",
    SUSPENDED: "bold magenta",
}

VALUE_LIMIT: Final = 80


def _marker(flag: str) -> Text:
    if not flag:
        return Text("")
    symbol, style = MARKERS[flag]
    return Text(f"{symbol} {flag}", style=style)


def _state(status: str) -> Text:
    return Text(status, style=STATE_STYLES.get(status, ""))


def _run_issues(run: RunSummary) -> Text:
    parts: list[tuple[str, str]] = []
    if run.failed_steps:
        parts.append((f"✗ {run.failed_steps} failed", "bold red"))
    if run.retries:
        parts.append((f"↻ {run.retries} {'retry' if run.retries == 1 else 'retries'}", "yellow"))
    if run.in_doubt_steps:
        parts.append((f"? {run.in_doubt_steps} in doubt", "magenta"))
    if run.reconciled_steps:
        parts.append((f"≈ {run.reconciled_steps} reconciled", "cyan"))
    if run.problem:
        parts.append(("unreadable history", "bold red"))
    text = Text()
    for index, (part, style) in enumerate(parts):
        if index:
            text.append(", ")
        text.append(part, style=style)
    return text


# -- workflows -----------------------------------------------------------------------------------------------------


@main.command()
@store_option
@click.option(
    "--status",
    type=click.Choice(RUN_STATUSES, case_sensitive=False),
    help="Only runs in this state.",
)
@click.option(
    "--stalled",
    is_flag=True,
    help="Only unfinished runs no live worker holds (lease expired, worker stopped, never run).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE),
    default=DEFAULT_PAGE,
    show_default=True,
    help="Runs per page, newest start first.",
)
@click.option("--after", "cursor", metavar="CURSOR", help="The page after this cursor (printed below each page).")
@wide_option
@json_option
def workflows(
    store_url: str, status: str | None, stalled: bool, limit: int, cursor: str | None, wide: bool, as_json: bool
) -> None:
    """List workflow runs a page at a time, newest first: state, agent, start, last event, duration, failures.

    Pages come from the runs index (a read model of runs kept beside the log, brought up to date first), so a
    page costs the same however many runs the store holds; the counts per state cover every run."""
    state = None if status is None else next(known for known in RUN_STATUSES if known.lower() == status.lower())
    try:
        query = RunsQuery(status=STALLED if stalled else None, state=state, after=cursor, limit=limit)
    except InvalidInput as error:
        raise click.BadParameter(str(error), param_hint="--after") from None

    async def listing(store: EventStore) -> tuple[RunsPage, list[RunSummary]]:
        async with RunsIndex(store, store_url) as index:
            await index.catch_up()
            page = await index.page(query)
        # The page's runs folded from their own streams: what the index does not keep (steps in doubt,
        # reconciled), at the cost of one stream read per run shown.
        summaries = await asyncio.gather(*(run_summary(store, row.workflow_id) for row in page.runs))
        return page, list(summaries)

    page, runs = run_with_store(store_url, listing)
    at = now_us()
    total = sum(page.counts.values())
    if as_json:
        stalled_ids = {row.workflow_id for row in page.runs if row.stalled}
        print_json(
            {
                "runs": [{**run.to_json(at), "stalled": run.workflow_id in stalled_ids} for run in runs],
                "next_after": page.next_cursor,
                "counts": page.counts,
                "total": total,
            }
        )
        return
    console = output_console()
    if not runs:
        console.print(
            ("no stalled workflow runs" if stalled else "no workflow runs")
            + (f" in state {state}" if state else "")
            + (" after this cursor" if cursor else "")
        )
        return
    columns = [
        Column("workflow id"),
        Column("agent", rank=3, fold=True, min_width=16),
        Column("state"),
        Column("started (UTC)", rank=5),
        Column("last event", rank=7, fold=True, min_width=18),
        Column("quiet for", rank=8, justify="right"),
        Column("duration", rank=4, justify="right"),
        Column("events", rank=6, justify="right"),
        Column("issues", rank=2, fold=True, min_width=12),
    ]
    rows: list[list[Cell]] = []
    for run in runs:
        finished = run.finished_at_us is not None
        rows.append(
            [
                run.workflow_id,
                run.agent,
                _state(run.status),
                format_time(run.started_at_us),
                run.last_event_type,
                "" if finished else format_duration(max(0, at - run.last_event_at_us)),
                format_duration(run.duration_us(at)) + ("" if finished else " …"),
                str(run.version),
                _run_issues(run),
            ]
        )
    styles = ["red" if run.state == "Failed" or run.failed_steps else None for run in runs]
    title = f"{len(runs)} of {total} workflow runs" + (f" after {cursor}" if cursor else "")
    fit_table(columns, rows, console.width, wide=wide, title=title, row_styles=styles).print(console)
    counts = ", ".join(f"{name} {number:,}" for name, number in page.counts.items() if number)
    console.print(f"runs per state: {counts}")
    if page.next_cursor is not None:
        console.print(f"next page: --after {page.next_cursor}")


async def _run_events_count(store: EventStore, workflow_id: str) -> int:
    """Events in the run's stream and its inbox: what `run_events` reads, as a progress bar's total."""
    return await store.stream_version(h.workflow_stream(workflow_id)) + await store.stream_version(
        h.signal_stream(workflow_id)
    )


# -- show ----------------------------------------------------------------------------------------------------------


@main.command()
@store_option
@click.argument("workflow_id", metavar="WORKFLOW")
@wide_option
@json_option
def show(store_url: str, workflow_id: str, wide: bool, as_json: bool) -> None:
    """The timeline of one run: every event with its step, attempt, agent, time and duration.

    For ``langgraph:<thread>``: the thread's checkpoints, with the nodes that made each."""
    if is_thread(workflow_id):
        show_thread(store_url, workflow_id, wide, as_json)
        return

    async def load(store: EventStore) -> Any:
        chosen = await resolve_workflow(store, workflow_id, store_url)
        with progress_bar(f"reading {chosen}", await _run_events_count(store, chosen)) as update:
            return await timeline(store, chosen, update)

    trace = run_with_store(store_url, load)
    if as_json:
        print_json(trace.to_json())
        return
    run: RunSummary = trace.run
    console = output_console()
    heading = Text.assemble(
        (run.workflow_id, "bold"),
        f"  {run.workflow}  ",
        _state(run.status),
        f"  {run.version} events, {format_duration(run.duration_us())}",
    )
    issues = _run_issues(run)
    if issues.plain:
        heading.append("  ")
        heading.append_text(issues)
    # One agent for the whole run (the usual case) is said once, in the heading, leaving the width to the details.
    several_agents = any(row.agent != run.agent for row in trace.rows)
    if not several_agents:
        heading.append(f"  agent {run.agent}")
    columns = [
        Column("v", justify="right"),
        Column("time (UTC)", rank=7),
        Column("+", rank=9, justify="right"),
        Column("event"),
        Column("#", rank=8, justify="right"),
        Column("step", rank=1, fold=True, min_width=10),
        Column("try", rank=5, justify="right"),
        *([Column("agent", rank=4, fold=True)] if several_agents else []),
        Column("took", rank=6, justify="right"),
        Column("!", rank=2),
        Column("detail", rank=3, fold=True, min_width=16),
    ]
    rows: list[list[Cell]] = []
    styles: list[str | None] = []
    for row in trace.rows:
        styles.append(MARKERS[row.flag][1] if row.flag else ("dim" if row.stream == INBOX else None))
        rows.append(
            [
                f"inbox {row.version}" if row.stream == INBOX else str(row.version),
                format_time(row.recorded_at_us)[11:],
                format_duration(row.since_previous_us),
                row.event_type,
                "" if row.seq is None else str(row.seq),
                row.name,
                "" if row.attempt is None else str(row.attempt),
                *([row.agent] if several_agents else []),
                format_duration(row.took_us),
                _marker(row.flag),
                row.detail,
            ]
        )
    fit_table(columns, rows, console.width, wide=wide, title=heading, row_styles=styles).print(console)


# -- replay --------------------------------------------------------------------------------------------------------


def _short(value: Any) -> str:
    if isinstance(value, dict):
        value = {key: item for key, item in value.items() if item}
    return compact_json(value, VALUE_LIMIT)


def _describe_change(change: Change) -> Text:
    if change.kind == "added":
        return Text(f"+ {change.path} = {_short(change.after)}", style="green")
    if change.kind == "removed":
        return Text(f"- {change.path} (was {_short(change.before)})", style="red")
    return Text(f"~ {change.path}: {_short(change.before)} → {_short(change.after)}")


@main.command(name="replay")
@store_option
@click.argument("workflow_id", metavar="WORKFLOW")
@click.option("--to", "to_version", type=click.IntRange(min=1), help="Stop after this version (default: the last).")
@click.option("--conversation", "as_conversation", is_flag=True, help="The model conversation recorded up to --to.")
@wide_option
@json_option
def replay_command(
    store_url: str, workflow_id: str, to_version: int | None, as_conversation: bool, wide: bool, as_json: bool
) -> None:
    """Dry replay: fold the recorded events one by one and show the state and what changed after each.

    Nothing is executed: no workflow code, no step, no write. The fold is the one a worker uses to resume a run.
    With --conversation: the messages a durable agent run exchanged with its model, as recorded.
    For ``langgraph:<thread>``: the checkpoints to ``--to`` (a checkpoint's #) and the channel values there.
    """
    if is_thread(workflow_id):
        replay_thread(store_url, workflow_id, to_version, wide, as_json)
        return
    if as_conversation:
        _print_conversation(store_url, workflow_id, to_version, wide, as_json)
        return

    async def fold(store: EventStore) -> tuple[str, list[ReplayStep], dict[str, Any]]:
        chosen = await resolve_workflow(store, workflow_id, store_url)
        last = await store.stream_version(h.workflow_stream(chosen))
        steps: list[ReplayStep] = []
        with progress_bar(f"replaying {chosen}", to_version or last) as update:
            async for step in replay(store, chosen, to_version, update):
                steps.append(step)
        final = await state_at(store, chosen, steps[-1].version)
        return chosen, steps, final

    chosen, steps, final = run_with_store(store_url, fold)
    if as_json:
        print_json(
            {
                "workflow_id": chosen,
                "to_version": steps[-1].version,
                "steps": [step.to_json() for step in steps],
                "state": final,
            }
        )
        return
    console = output_console()
    columns = [
        Column("v", justify="right"),
        Column("event"),
        Column("state", rank=2),
        Column("what changed", rank=1, fold=True, min_width=24),
    ]
    rows: list[list[Cell]] = []
    for step in steps:
        changes = Text("\n").join(_describe_change(change) for change in step.changes)
        if step.error is not None:
            changes = Text(f"not folded: {step.error}", style="bold red")
        rows.append([str(step.version), step.event_type, _state(step.state), changes])
    title = f"dry replay of {chosen} to version {steps[-1].version} (nothing executed)"
    fit_table(columns, rows, console.width, wide=wide, title=title).print(console)
    console.print(Group(Text(f"projected state at version {steps[-1].version}", style="bold"), JSON.from_data(final)))


def _print_conversation(store_url: str, workflow_id: str, to_version: int | None, wide: bool, as_json: bool) -> None:
    async def read(store: EventStore) -> tuple[str, list[ConversationLine]]:
        chosen = await resolve_workflow(store, workflow_id, store_url)
        return chosen, await conversation(store, chosen, to_version)

    chosen, lines = run_with_store(store_url, read)
    if as_json:
        print_json({"workflow_id": chosen, "to_version": to_version, "conversation": [x.to_json() for x in lines]})
        return
    console = output_console()
    columns = [
        Column("v", justify="right"),
        Column("#", rank=3, justify="right"),
        Column("who"),
        Column("what", rank=1, fold=True, min_width=24),
        Column("tokens", rank=2, fold=True),
    ]
    rows: list[list[Cell]] = [
        [str(line.version), "" if line.seq is None else str(line.seq), line.who, line.text, line.usage]
        for line in lines
    ]
    upto = "" if to_version is None else f" to version {to_version}"
    title = f"conversation of {chosen}{upto} (as recorded, nothing called)"
    fit_table(columns, rows, console.width, wide=wide, title=title).print(console)


# -- diff ----------------------------------------------------------------------------------------------------------


@main.command()
@store_option
@click.argument("workflow_id", metavar="WORKFLOW")
@click.argument("from_version", metavar="A", type=click.IntRange(min=0))
@click.argument("to_version", metavar="B", type=click.IntRange(min=0))
@wide_option
@json_option
def diff(store_url: str, workflow_id: str, from_version: int, to_version: int, wide: bool, as_json: bool) -> None:
    """How the projected state of a run differs between versions A and B (0: before the first event)."""

    async def compare(store: EventStore) -> tuple[str, list[Change]]:
        chosen = await resolve_workflow(store, workflow_id, store_url)
        return chosen, await diff_versions(store, chosen, from_version, to_version)

    chosen, changes = run_with_store(store_url, compare)
    if as_json:
        print_json(
            {
                "workflow_id": chosen,
                "from": from_version,
                "to": to_version,
                "changes": [change.to_json() for change in changes],
            }
        )
        return
    console = output_console()
    if not changes:
        console.print(f"{chosen}: no difference between versions {from_version} and {to_version}")
        return
    columns = [
        Column("path", fold=True, min_width=16),
        Column(""),
        Column(f"at {from_version}", rank=2, fold=True, min_width=16),
        Column(f"at {to_version}", rank=1, fold=True, min_width=16),
    ]
    rows: list[list[Cell]] = []
    styles: list[str | None] = []
    for change in changes:
        styles.append({"added": "green", "removed": "red"}.get(change.kind))
        before = "" if change.kind == "added" else _short(change.before)
        after = "" if change.kind == "removed" else _short(change.after)
        rows.append([change.path, change.kind, before, after])
    title = f"{chosen}: version {from_version} → {to_version}, {len(changes)} changes"
    fit_table(columns, rows, console.width, wide=wide, title=title, row_styles=styles).print(console)


# -- tail ----------------------------------------------------------------------------------------------------------


def _tail_line(event: RecordedEvent) -> Text:
    flag = ""
    if event.type == h.STEP_FAILED:
        flag = FLAG_FAILED if event.data.get("final") else FLAG_ATTEMPT_FAILED
    elif event.type == h.WORKFLOW_FAILED:
        flag = FLAG_FAILED
    elif event.type == h.STEP_STARTED and int(event.data.get("attempt", 1) or 1) > 1:
        flag = FLAG_RETRY
    agent = event.metadata.get(AGENT_ID)
    line = Text.assemble(
        (format_time(event.recorded_at_us)[11:], "dim"),
        f" #{event.position} ",
        (event.stream_id, "bold"),
        f" v{event.version} ",
        (event.type, MARKERS[flag][1] if flag else "cyan"),
    )
    if isinstance(agent, str) and agent:
        line.append(f" [{agent}]")
    if flag:
        line.append(" ")
        line.append_text(_marker(flag))
    line.append(f" {describe_event(event)}")
    return line


@main.command()
@store_option
@click.option("--stream-prefix", "stream_prefix", default="", help="Only streams whose id starts with this.")
@click.option("--type", "types", multiple=True, help="Only events of this type; repeat for several.")
@click.option(
    "--after",
    "after_position",
    type=click.IntRange(min=0),
    help="Start after this global position (0: from the beginning). Default: only events appended from now on.",
)
@click.option("--count", type=click.IntRange(min=1), hidden=True, help="Stop after this many events.")
@json_option
def tail(
    store_url: str,
    stream_prefix: str,
    types: tuple[str, ...],
    after_position: int | None,
    count: int | None,
    as_json: bool,
) -> None:
    """Follow events as they are appended, until Ctrl-C. `--json` prints one object per line."""
    console = output_console()

    async def follow(store: EventStore) -> None:
        start = await store.head_position() if after_position is None else after_position
        loop = asyncio.get_running_loop()
        subscription = store.subscribe(start, types=list(types) or None, stream_prefix=stream_prefix or None)
        stop = asyncio.Event()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        closing = asyncio.create_task(_close_on(stop, subscription))
        seen = 0
        try:
            async with subscription:
                async for event in subscription:
                    if as_json:
                        print_json_line(event_json(event))
                    else:
                        console.print(_tail_line(event), soft_wrap=True)
                        sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        break
        finally:
            closing.cancel()
            for signal_number in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signal_number)

    run_with_store(store_url, follow)


async def _close_on(stop: asyncio.Event, subscription: Any) -> None:
    await stop.wait()
    await subscription.close()


# -- export --------------------------------------------------------------------------------------------------------


@main.command()
@store_option
@click.argument("workflow_id", metavar="WORKFLOW")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "jsonl"]),
    default="json",
    show_default=True,
    help="json: one document; jsonl: a header line, then one event per line.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write here instead of stdout.",
)
def export(store_url: str, workflow_id: str, output_format: str, output: Path | None) -> None:
    """The full trace of a run (its events and its inbox's, verbatim), for a bug report."""

    async def collect(store: EventStore) -> Any:
        chosen = await resolve_workflow(store, workflow_id, store_url)
        with progress_bar(f"exporting {chosen}", await _run_events_count(store, chosen)) as update:
            return await export_trace(store, chosen, update)

    trace = run_with_store(store_url, collect)
    header = {
        "format": TRACE_FORMAT,
        "exported_at": iso_time(now_us()),
        "run": trace.run.to_json(),
    }
    if output_format == "json":
        text = json.dumps({**header, "events": trace.events}, indent=2, ensure_ascii=False) + "\n"
    else:
        lines = [header, *({"event": event} for event in trace.events)]
        text = "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(trace.events)} events of {trace.run.workflow_id} written to {output}", err=True)


# -- stats ---------------------------------------------------------------------------------------------------------


@main.command()
@store_option
@wide_option
@json_option
def stats(store_url: str, wide: bool, as_json: bool) -> None:
    """Streams, events, size, oldest and newest event, counts per event type and per stream category, and runs per
    state (from the runs index, brought up to date first)."""

    async def count(store: EventStore) -> Any:
        with progress_bar("reading every event", await store.head_position()) as update:
            figures = await store_stats(store, update)
        async with RunsIndex(store, store_url) as index:
            await index.catch_up()
            counts = (await index.page(RunsQuery(limit=1))).counts
        return figures, counts

    figures, runs_per_state = run_with_store(store_url, count)
    if as_json:
        print_json({**figures.to_json(), "runs_per_state": runs_per_state})
        return
    console = output_console()
    summary: list[list[Cell]] = [
        ["streams", f"{figures.streams:,}"],
        ["events", f"{figures.events:,}"],
        ["size (encoded events)", format_size(figures.size_bytes)],
        ["head position", f"{figures.head_position:,}"],
        ["oldest event (UTC)", format_time(figures.oldest_us)],
        ["newest event (UTC)", format_time(figures.newest_us)],
        ["workflow runs", f"{figures.runs:,}"],
    ]
    fit_table(
        [Column("figure"), Column("value", justify="right")], summary, console.width, wide=wide, title="store"
    ).print(console)
    if figures.types:
        types: list[list[Cell]] = [
            [event_type, f"{number:,}", f"{number / figures.events:.1%}"]
            for event_type, number in figures.types.items()
        ]
        type_columns = [Column("type"), Column("events", justify="right"), Column("share", rank=1, justify="right")]
        fit_table(type_columns, types, console.width, wide=wide, title="events per type").print(console)
    if figures.categories:
        categories: list[list[Cell]] = [[category, f"{number:,}"] for category, number in figures.categories.items()]
        category_columns = [Column("category"), Column("streams", justify="right")]
        fit_table(category_columns, categories, console.width, wide=wide, title="streams per category").print(console)
    states: list[list[Cell]] = [[_state(name), f"{number:,}"] for name, number in runs_per_state.items() if number]
    if states:
        state_columns = [Column("state"), Column("runs", justify="right")]
        fit_table(state_columns, states, console.width, wide=wide, title="runs per state").print(console)
