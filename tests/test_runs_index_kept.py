"""SQLite and PostgreSQL keep the runs index with each append, in its transaction: after any mix of appends
(concurrent ones committed in one group, refused ones, retried ones, hand-offs between runs, heartbeats) the rows
are what folding the log gives, and an append's change is there as soon as the append returns."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

import agentfold
from agentfold import runrows
from agentfold.backends.runs_tables import WORKERS_TABLE
from agentfold.errors import WrongExpectedVersion
from agentfold.events import ANY, NewEvent
from agentfold.runs_index import UNFINISHED, RunsIndex, RunsQuery
from agentfold.runtime import history as h
from agentfold.runtime.leases import WORKER_HEARTBEAT, WORKER_STOPPED, worker_stream
from agentfold.store import EventStore
from tests.backends import PG_PARTITIONED, PG_URL, SQL, Backend, require_service

RUNS = [f"run-{index}" for index in range(12)]
STEPS = [
    (h.STEP_STARTED, {"seq": 1, "name": "work", "attempt": 1}),
    (h.STEP_FAILED, {"seq": 1, "final": False}),
    (h.STEP_FAILED, {"seq": 1, "final": True}),
    (h.WAIT_STARTED, {"seq": 2, "name": "approval"}),
    (h.SIGNAL_RECEIVED, {"seq": 2}),
    (h.WORKFLOW_SUSPENDED, {"reason": "code changed"}),
    (h.WORKFLOW_CLAIMED, {"worker": "w1"}),
    (h.WORKFLOW_RELEASED, {}),
    (h.WORKFLOW_CANCEL_REQUESTED, {"reason": "test"}),
    (h.WORKFLOW_COMPLETED, {"result": 1}),
    (h.WORKFLOW_FAILED, {"error": "boom"}),
    (h.WORKFLOW_TERMINATED, {"reason": "test"}),
    (h.WORKFLOW_RESTARTED, {"from_seq": 1}),
]


def random_append(chooser: random.Random) -> tuple[str, list[NewEvent]]:
    if chooser.random() < 0.1:
        worker = chooser.choice(["w1", "w2"])
        stopped = chooser.random() < 0.2
        event = NewEvent(WORKER_STOPPED if stopped else WORKER_HEARTBEAT, {"worker": worker, "ttl_us": 5_000_000})
        return worker_stream(worker), [event]
    run_id = chooser.choice(RUNS)
    events = []
    for _ in range(chooser.randint(1, 3)):
        roll = chooser.random()
        metadata: dict[str, Any] = {h.OWNER_KEY: chooser.choice(["w1", "w2"])} if chooser.random() < 0.3 else {}
        if roll < 0.15:
            events.append(NewEvent(h.WORKFLOW_STARTED, {"workflow": chooser.choice(["intake", "refund"])}, metadata))
        elif roll < 0.25:
            events.append(NewEvent(h.STEP_COMPLETED, {"seq": 1, "result": chooser.choice(RUNS)}, metadata))
        else:
            event_type, data = chooser.choice(STEPS)
            events.append(NewEvent(event_type, data, metadata))
    return h.workflow_stream(run_id), events


async def write_randomly(store: EventStore, seed: int) -> None:
    chooser = random.Random(seed)
    for _ in range(40):
        batch = [random_append(chooser) for _ in range(chooser.randint(1, 8))]
        written: list[tuple[str, list[NewEvent]]] = []

        async def append(stream_id: str, events: list[NewEvent], written: list[Any] = written) -> None:
            expected = ANY if chooser.random() < 0.8 else chooser.randint(0, 3)
            try:
                await store.append(stream_id, events, expected_version=expected)
                written.append((stream_id, events))
            except WrongExpectedVersion:
                pass  # refused: the index must not change

        await asyncio.gather(*(append(stream_id, events) for stream_id, events in batch))  # one group, mostly
        for stream_id, events in written[:2]:  # retried: writes nothing again, changes nothing again
            await store.append(stream_id, events, expected_version=ANY)


def stalled(row: runrows.RunRow, rows: runrows.Rows) -> bool:
    """Stalled at time 0: unfinished, and held by nobody or by a worker that stopped."""
    return row.status in UNFINISHED and (row.owner is None or rows.workers.get(row.owner, 0) <= 0)


async def folded(store: EventStore) -> runrows.Rows:
    rows = runrows.Rows()
    async for page in store.read_all_pages():
        rows.apply(runrows.recorded(page))
    return rows


@pytest.fixture(params=[*SQL, PG_PARTITIONED], ids=lambda backend: backend.name)
def kept_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store of every layout that keeps the index with each append (PostgreSQL's partitioned one too)."""
    chosen: Backend = request.param
    require_service(chosen)
    url = chosen.make_url(tmp_path)
    yield url
    chosen.cleanup(url)


async def test_the_kept_rows_are_the_fold_of_the_log(kept_url: str) -> None:
    sql_url = kept_url
    async with agentfold.connect(sql_url) as store:
        await write_randomly(store, seed=27)
        expected = await folded(store)
        async with RunsIndex(store, sql_url) as index:
            assert index.kept_by_store
            assert await index.catch_up() == 0
            kept = await index.runs(RUNS, at_us=0)
            page = await index.page(RunsQuery(limit=100, started_from_us=0), at_us=0)
            unfiltered = await index.page(RunsQuery(limit=100), at_us=0)
        shown = {run_id: replace(row, stalled=stalled(row, expected)) for run_id, row in expected.runs.items()}
        assert kept == shown
        counted: dict[str, int] = {}
        for row in shown.values():
            counted[row.shown_status] = counted.get(row.shown_status, 0) + 1
        assert {status: count for status, count in page.counts.items() if count} == counted
        assert unfiltered.counts == page.counts  # the kept counters agree with the rows counted one by one
        assert kept_workers(sql_url) == expected.workers
        assert await store.rebuild_runs_index() == len(expected.runs)
        async with RunsIndex(store, sql_url) as index:
            assert await index.runs(RUNS, at_us=0) == kept


def kept_workers(url: str) -> dict[str, int]:
    """The workers' expiries the store keeps, read from its table."""
    statement = f"SELECT worker, expires_at_us FROM {{s}}{WORKERS_TABLE}"
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split("///", 1)[1])
        found = dict(connection.execute(statement.replace("{s}", "")).fetchall())
        connection.close()
        return found
    schema = '"' + url.rsplit("schema=", 1)[1].split("&")[0] + '".'
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as connection:
        return dict(connection.execute(statement.replace("{s}", schema).encode()).fetchall())


async def test_an_append_is_in_the_index_when_it_returns(sql_url: str) -> None:
    async with agentfold.connect(sql_url) as store, RunsIndex(store, sql_url) as index:
        started = NewEvent(h.WORKFLOW_STARTED, {"workflow": "intake"}, {"agent_id": "planner"})
        await store.append(h.workflow_stream("parent"), [started])
        await store.append(h.workflow_stream("child"), [NewEvent(h.WORKFLOW_STARTED, {"workflow": "refund"})])
        await store.append(h.workflow_stream("parent"), [NewEvent(h.STEP_COMPLETED, {"seq": 1, "result": "child"})])
        rows = await index.runs(["parent", "child"])
        assert (rows["parent"].agent, rows["parent"].status, rows["parent"].version) == ("planner", "Processing", 2)
        assert rows["child"].parent_id == "parent"
        assert [row.workflow_id for row in await index.children("parent")] == ["child"]
        suspended = NewEvent(h.WORKFLOW_SUSPENDED, {"reason": "code changed"})
        await store.append(h.workflow_stream("child"), [suspended])
        assert (await index.runs(["child"]))["child"].status == "Suspended"
        assert (await index.page(RunsQuery(limit=5))).counts["Suspended"] == 1
        steps = [
            (run, NewEvent(h.STEP_STARTED, {"seq": 1, "name": "work", "attempt": 1})) for run in ("child", "parent")
        ]
        await asyncio.gather(*(store.append(h.workflow_stream(run), [step]) for run, step in steps))
        child = (await index.runs(["child"]))["child"]
        assert (child.status, child.last_event_type, child.version) == ("Processing", h.STEP_STARTED, 3)
        counts = (await index.page(RunsQuery(limit=5))).counts
        assert (counts["Suspended"], counts["Stalled"]) == (0, 2)  # both running, held by nobody
        await store.append(h.workflow_stream("child"), [NewEvent(h.WORKFLOW_COMPLETED, {"result": 2})])
        child = (await index.runs(["child"]))["child"]
        assert (child.status, child.finished_at_us) == ("Completed", child.last_event_at_us)
