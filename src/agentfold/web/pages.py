"""The inspector's pages. Each view gathers its data with the same functions the command line uses
(`agentfold.runtime.inspect`, `agentfold.runs_index`) and hands it to a template; the same URL ending in ``.json``
returns that data as JSON.

Run ids may hold ``/`` (a child run's id is ``<parent>/<seq>/child:<name>``), so they travel as the query parameter
``id`` except on the run page itself (``/runs/<id>``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from agentfold import display
from agentfold.display import iso_time, now_us
from agentfold.errors import InvalidInput, WorkflowNotFound
from agentfold.events import RecordedEvent
from agentfold.runs_index import LISTED_STATUSES, RunRow, RunsIndex, RunsQuery
from agentfold.runtime import history as h
from agentfold.runtime.inspect import (
    INBOX,
    diff_states,
    event_json,
    run_events,
    state_at,
    timeline,
)
from agentfold.runtime.leases import WORKER_HEARTBEAT, worker_stream
from agentfold.runtime.statemachine import AWAITING_INPUT, FAILED, PROCESSING
from agentfold.store import EventStore
from agentfold.web import actions, live, signin
from agentfold.web.security import csrf_token
from agentfold.web.settings import ServeSettings
from agentfold.web.timeline import chart

STREAM_PAGE: Final = 50
STREAMS_PAGE: Final = 100
TREE_LIMIT: Final = 200
TAIL_BACKLOG: Final = 100
RECHECK_UNFINISHED_MS: Final = 2000
"""How often an unfinished run's page reads itself again: whether a live worker holds it changes with time and with
events of the workers' streams, which its live feed does not follow."""
"""Positions before the head the tail page starts from, so it opens with the latest events."""


def format_time(timestamp_us: int | None) -> str:
    if timestamp_us is None:
        return ""
    moment = datetime.fromtimestamp(timestamp_us / 1_000_000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_duration(duration_us: int | None) -> str:
    return display.format_duration(duration_us)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def store_of(request: Request) -> EventStore:
    store: EventStore = request.app.state.store
    return store


def _settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def _index(request: Request) -> RunsIndex:
    index: RunsIndex = request.app.state.index
    return index


def wants_json(request: Request) -> bool:
    return request.url.path.endswith(".json") or request.query_params.get("format") == "json"


def render(request: Request, template: str, data: dict[str, Any], context: dict[str, Any]) -> Response:
    """`data` as JSON for the ``.json`` twin, else the template with `data` and `context`."""
    if wants_json(request):
        return JSONResponse(data)
    settings = _settings(request)
    page = request.app.state.templates.get_template(template).render(
        request=request,
        settings=settings,
        csrf_token=csrf_token(settings) if settings.actions_enabled else "",
        fragment=request.query_params.get("fragment") == "1",
        **context,
    )
    return HTMLResponse(page)


def _time_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time such as 2026-01-31T12:00, got {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, got {raw[:40]!r}") from None


# -- runs ----------------------------------------------------------------------------------------------------------


async def runs_page(request: Request) -> Response:
    """Every run, newest first, filtered and keyset-paged, with live counts per status."""
    params = request.query_params
    query = RunsQuery(
        status=params.get("status") or None,
        workflow=params.get("workflow") or None,
        id_prefix=params.get("id_prefix") or None,
        started_from_us=_time_param(request, "from"),
        started_until_us=_time_param(request, "until"),
        after=params.get("after") or None,
        limit=int_param(request, "limit", _settings(request).page_size) or _settings(request).page_size,
    )
    index = _index(request)
    await index.catch_up()
    page = await index.page(query)
    filters = {key: params[key] for key in ("status", "workflow", "id_prefix", "from", "until") if params.get(key)}
    next_url = None
    if page.next_cursor is not None:
        next_url = "/runs?" + urlencode({**filters, "after": page.next_cursor})
    data = {**page.to_json(), "filters": filters, "next_url": next_url}
    context = {
        "page": page,
        "filters": filters,
        "statuses": LISTED_STATUSES,
        "workflows": await index.workflows(),
        "next_url": next_url,
        "now_us": now_us(),
        "status_url": lambda status: "/runs?" + urlencode({**filters, "status": status}),
    }
    return render(request, "runs.html", data, context)


# -- one run -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeNode:
    run: RunRow
    depth: int


async def _tree(index: RunsIndex, root: RunRow) -> list[TreeNode]:
    """The run and every run it started, depth first, at most `TREE_LIMIT` nodes."""
    nodes: list[TreeNode] = []
    pending = [(root, 0)]
    while pending and len(nodes) < TREE_LIMIT:
        run, depth = pending.pop()
        nodes.append(TreeNode(run, depth))
        children = await index.children(run.workflow_id)
        pending.extend((child, depth + 1) for child in reversed(children))
    return nodes


async def _heartbeat(store: EventStore, worker: str | None) -> int | None:
    """When the worker last said it was alive, or None."""
    if worker is None:
        return None
    stream = worker_stream(worker)
    version = await store.stream_version(stream)
    if version == 0:
        return None
    last: int | None = None
    async for event in store.read_stream(stream, after_version=max(0, version - 4)):
        if event.type == WORKER_HEARTBEAT:
            last = event.recorded_at_us
    return last


def _step_names(state: dict[str, Any]) -> list[str]:
    """The run's recorded steps, in order, each once: what a restart can start from."""
    names = [command["name"] for command in state["commands"].values() if command["kind"] == h.STEP]
    return list(dict.fromkeys(names))


def _open_waits(state: dict[str, Any]) -> list[str]:
    return [
        command["name"]
        for command in state["commands"].values()
        if command["kind"] == h.WAIT and command["outcome"] is None
    ]


async def _run_id(request: Request) -> str:
    """The run named in the path, or (for the JSON twin) the path without its ``.json``."""
    raw: str = request.path_params["workflow_id"]
    store = store_of(request)
    if raw.endswith(".json") and await store.stream_version(h.workflow_stream(h.check_workflow_id(raw))) == 0:
        raw = raw[: -len(".json")]
        request.scope["agentfold.json"] = True
    return h.check_workflow_id(raw)


async def run_page(request: Request) -> Response:
    """A run: header, timeline chart, the tree of runs it started, every event (each links to its state)."""
    workflow_id = await _run_id(request)
    store = store_of(request)
    index = _index(request)
    await index.catch_up()
    run_timeline = await timeline(store, workflow_id)
    events = await run_events(store, workflow_id)
    run_stream = [event for kind, event in events if kind != INBOX]
    state = await state_at(store, workflow_id, run_stream[-1].version)
    rows = await index.runs([workflow_id])
    row = rows.get(workflow_id)
    parent = None if row is None or row.parent_id is None else row.parent_id
    tree = [] if row is None else await _tree(index, row)
    owner = None if row is None else row.owner
    heartbeat = await _heartbeat(store, owner)
    moment = now_us()
    drawn = chart(run_timeline, moment)
    first = run_stream[0]
    finished = state["finished"]
    summary = run_timeline.run
    data: dict[str, Any] = {
        "run": {
            **summary.to_json(),
            "status": row.shown_status if row is not None else summary.status,
            "input": first.data.get("input"),
            "finished": finished,
            "owner": owner,
            "last_heartbeat_at": iso_time(heartbeat),
            "parent_id": parent,
            "children": [node.run.workflow_id for node in tree if node.depth == 1],
            "waiting_for": _open_waits(state),
        },
        "chart": drawn.to_json(),
        "timeline": [line.to_json() for line in run_timeline.rows],
        "tree": [{"workflow_id": node.run.workflow_id, "depth": node.depth} for node in tree],
        # The live feed resumes after the oldest position the page reflects: the runs index (status, owner, tree)
        # was caught up before the events were read, so an event the index had not applied still refreshes the page.
        "position": min(index.position, max(event.position for _, event in events)),
    }
    if request.scope.get("agentfold.json"):
        return JSONResponse(data)
    context = {
        "summary": summary,
        "row": row,
        "status": data["run"]["status"],
        "input": first.data.get("input"),
        "finished": finished,
        "owner": owner,
        "heartbeat": heartbeat,
        "parent": parent,
        "tree": tree,
        "chart": drawn,
        "rows": run_timeline.rows,
        "waiting_for": data["run"]["waiting_for"],
        "failed": summary.state == FAILED,
        "steps": _step_names(state),
        "running": summary.state in (PROCESSING, AWAITING_INPUT),
        "position": data["position"],
        "recheck_ms": RECHECK_UNFINISHED_MS,
        "last_version": run_stream[-1].version,
        "now_us": moment,
    }
    return render(request, "run.html", data, context)


async def event_page(request: Request) -> Response:
    """One event of a run: the projected state before and after it and what changed (a dry replay)."""
    workflow_id = h.check_workflow_id(request.query_params.get("id", ""))
    version = int_param(request, "version")
    if version is None or version < 1:
        raise InvalidInput("version must be a whole number of at least 1")
    store = store_of(request)
    before = await state_at(store, workflow_id, version - 1)
    after = await state_at(store, workflow_id, version)
    event: RecordedEvent | None = None
    async for found in store.read_stream(h.workflow_stream(workflow_id), after_version=version - 1, limit=1):
        event = found
    if event is None:
        raise WorkflowNotFound(workflow_id)
    changes = diff_states(before, after)
    data = {
        "workflow_id": workflow_id,
        "event": event_json(event),
        "before": before,
        "after": after,
        "changes": [change.to_json() for change in changes],
    }
    context = {"workflow_id": workflow_id, "event": event, "before": before, "after": after, "changes": changes}
    return render(request, "event.html", data, context)


async def diff_page(request: Request) -> Response:
    """What changed in a run's projected state between two of its versions."""
    workflow_id = h.check_workflow_id(request.query_params.get("id", ""))
    from_version = int_param(request, "from", 0) or 0
    to_version = int_param(request, "to")
    store = store_of(request)
    last = await store.stream_version(h.workflow_stream(workflow_id))
    if last == 0:
        raise WorkflowNotFound(workflow_id)
    to_version = last if to_version is None else to_version
    before = await state_at(store, workflow_id, from_version)
    after = await state_at(store, workflow_id, to_version)
    changes = diff_states(before, after)
    data = {
        "workflow_id": workflow_id,
        "from": from_version,
        "to": to_version,
        "changes": [change.to_json() for change in changes],
    }
    context = {
        "workflow_id": workflow_id,
        "from_version": from_version,
        "to_version": to_version,
        "last": last,
        "changes": changes,
    }
    return render(request, "diff.html", data, context)


# -- streams -------------------------------------------------------------------------------------------------------


async def streams_page(request: Request) -> Response:
    """Streams whose id starts with a prefix, in the order their first event (after `after`) was appended."""
    prefix = request.query_params.get("prefix") or None
    after = int_param(request, "after", 0) or 0
    store = store_of(request)
    seen: dict[str, int] = {}
    scanned_to = after
    async for page in store.read_all_pages(after_position=after, stream_prefix=prefix):
        for event in page:
            scanned_to = event.position
            if event.stream_id not in seen:
                if len(seen) == STREAMS_PAGE:
                    break
                seen[event.stream_id] = event.position
        else:
            continue
        break
    more = len(seen) == STREAMS_PAGE
    next_url = (
        "/streams?" + urlencode({**({"prefix": prefix} if prefix else {}), "after": scanned_to}) if more else None
    )
    versions = {stream_id: await store.stream_version(stream_id) for stream_id in seen}
    data = {
        "prefix": prefix,
        "streams": [{"stream_id": stream_id, "version": version} for stream_id, version in versions.items()],
        "next_url": next_url,
    }
    return render(request, "streams.html", data, {"prefix": prefix or "", "versions": versions, "next_url": next_url})


def thread_of_stream(stream_id: str) -> tuple[str, str] | None:
    """(thread id, namespace) of a LangGraph thread's stream when its id is readable (long or odd ids are hashed)."""
    prefix = "langgraph:"  # as `agentfold.integrations.langgraph` names a thread's stream
    if not stream_id.startswith(prefix) or stream_id.startswith(prefix + "#"):
        return None
    thread_id, _, ns = stream_id[len(prefix) :].partition("/")
    return (thread_id, ns) if thread_id else None


async def stream_page(request: Request) -> Response:
    """One stream's events, oldest first, a page at a time."""
    from agentfold.validation import check_stream_id

    stream_id = check_stream_id(request.query_params.get("id", ""))
    after = int_param(request, "after", 0) or 0
    store = store_of(request)
    version = await store.stream_version(stream_id)
    events = [event async for event in store.read_stream(stream_id, after_version=after, limit=STREAM_PAGE)]
    next_url = None
    if events and events[-1].version < version:
        next_url = "/stream?" + urlencode({"id": stream_id, "after": events[-1].version})
    workflow_id = stream_id[len(h.WORKFLOW_STREAM_PREFIX) :] if stream_id.startswith(h.WORKFLOW_STREAM_PREFIX) else None
    data = {
        "stream_id": stream_id,
        "version": version,
        "events": [event_json(event) for event in events],
        "next_url": next_url,
    }
    context = {
        "stream_id": stream_id,
        "version": version,
        "events": events,
        "next_url": next_url,
        "workflow_id": workflow_id,
        "thread": thread_of_stream(stream_id),
    }
    return render(request, "stream.html", data, context)


async def tail_page(request: Request) -> Response:
    """The last events of streams under a prefix, then every new one as it is appended (like `agentfold tail`)."""
    prefix = request.query_params.get("prefix", "")
    store = store_of(request)
    start = max(0, await store.head_position() - TAIL_BACKLOG)
    return render(request, "tail.html", {"prefix": prefix, "after": start}, {"prefix": prefix, "head_position": start})


async def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


View = Callable[[Request], Awaitable[Response]]


def routes() -> list[BaseRoute]:
    """Every page with its JSON twin; actions and sign-in; the live event feed."""
    pages: list[tuple[str, View]] = [
        ("/runs", runs_page),
        ("/event", event_page),
        ("/diff", diff_page),
        ("/streams", streams_page),
        ("/stream", stream_page),
        ("/tail", tail_page),
    ]
    table: list[BaseRoute] = [Route("/", home)]
    for path, view in pages:
        table.append(Route(path, view))
        table.append(Route(f"{path}.json", view))
    table.append(Route("/runs/{workflow_id:path}", run_page))
    table.extend(live.routes())
    table.extend(actions.routes())
    table.extend(signin.routes())
    return table
