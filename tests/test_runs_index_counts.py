"""The runs index keeps its runs per state as counters, beside the rows: a listing without filters reads them (and
the runs live workers hold) instead of counting every row, and they agree with the rows counted one by one as runs
change state, with stalled runs told apart; a store from before the index was kept with each append gets it folded
when opened.
On SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

import agentfold
from agentfold.backends.runs_tables import COUNTS_TABLE, PROJECTOR_NAME, TABLE
from agentfold.bench import run_events
from agentfold.display import now_us
from agentfold.events import NO_STREAM, NewEvent
from agentfold.runs_index import STALLED, RunsIndex, RunsQuery
from agentfold.runtime import history as h
from agentfold.runtime.leases import WORKER_HEARTBEAT, worker_stream
from agentfold.runtime.statemachine import AWAITING_INPUT, COMPLETED, FAILED, PROCESSING, TERMINATED
from agentfold.store import EventStore
from tests.backends import PG_URL, SQLITE_EVENTS_BEFORE_SCHEMA_6

RUNS = 40


async def write_runs(store: EventStore) -> None:
    """Runs as the bench writes them (1 in 10 failed, 1 in 20 waiting, the rest completed), two held by a live
    worker, one by a worker that never heartbeated, one by nobody."""
    for index in range(RUNS):
        await store.append(f"{h.WORKFLOW_STREAM_PREFIX}bench-{index:03d}", run_events(index), NO_STREAM)
    await store.append(worker_stream("alive"), [NewEvent(WORKER_HEARTBEAT, {"worker": "alive", "ttl_us": 3_600e6})])
    for workflow_id, owner in (("held-1", "alive"), ("held-2", "alive"), ("lost", "gone"), ("new", None)):
        metadata = {} if owner is None else {h.OWNER_KEY: owner}
        started = NewEvent(h.WORKFLOW_STARTED, {"workflow": "intake", "input": {"args": []}}, metadata)
        stepping = [NewEvent(h.STEP_STARTED, {"seq": 1, "name": "work", "attempt": 1}, metadata)]
        await store.append(h.workflow_stream(workflow_id), [started, *([] if owner is None else stepping)])


async def counts(index: RunsIndex) -> tuple[dict[str, int], dict[str, int]]:
    """(the counts a listing without filters shows, the same counted row by row through a filter matching all)."""
    kept = (await index.page(RunsQuery(limit=5))).counts
    counted = (await index.page(RunsQuery(limit=5, started_from_us=0))).counts
    return kept, counted


async def test_kept_counts_agree_with_the_rows_as_runs_change_state(sql_url: str) -> None:
    async with agentfold.connect(sql_url) as store:
        await write_runs(store)
        async with RunsIndex(store, sql_url) as index:
            await index.catch_up()
            kept, counted = await counts(index)
            assert kept == counted
            assert (kept[COMPLETED], kept[FAILED], kept[PROCESSING]) == (34, 4, 2)
            # the 2 runs waiting for a signal, "lost" and "new": unfinished, and no live worker holds them
            assert (kept[STALLED], kept[AWAITING_INPUT]) == (4, 0)
            for number in (5, 25):  # the waiting runs end
                terminated = NewEvent(h.WORKFLOW_TERMINATED, {"reason": "test"})
                await store.append(f"{h.WORKFLOW_STREAM_PREFIX}bench-{number:03d}", [terminated])
            await store.append(h.workflow_stream("held-1"), [NewEvent(h.WORKFLOW_COMPLETED, {"result": 1})])
            await index.catch_up()
            kept, counted = await counts(index)
            assert kept == counted
            assert (kept[TERMINATED], kept[COMPLETED], kept[PROCESSING], kept[STALLED]) == (2, 35, 1, 2)
            assert sum(kept.values()) == RUNS + 4


async def listing(store: EventStore, url: str) -> list[dict[str, object]]:
    async with RunsIndex(store, url) as index:
        page = await index.page(RunsQuery(limit=500), at_us=now_us())
        return [row.to_json() | {"duration_s": 0} for row in page.runs] + [page.counts]


@pytest.mark.parametrize("checkpoint", [True, False], ids=["projector-checkpoint", "no-checkpoint"])
async def test_a_store_from_before_gets_its_index_folded_when_opened(sql_url: str, checkpoint: bool) -> None:
    """A store an earlier release wrote (its index kept by a projector with a checkpoint, or not at all, and
    without counters) gets the index folded from the log once, when opened, and then kept by appends."""
    async with agentfold.connect(sql_url) as store:
        await write_runs(store)
        head = await store.head_position()
        before = await listing(store, sql_url)
    downgrade(sql_url, head if checkpoint else None)
    async with agentfold.connect(sql_url) as store:
        assert await listing(store, sql_url) == before
        await store.append(h.workflow_stream("held-2"), [NewEvent(h.WORKFLOW_COMPLETED, {"result": 1})])
        after = await listing(store, sql_url)
        counts = after[-1]
        assert isinstance(counts, dict)
        assert (counts[COMPLETED], counts[PROCESSING]) == (35, 1)


def downgrade(url: str, checkpoint: int | None) -> None:
    """Leave the store as an earlier release did: no counters, no schema step for the kept index, and either the
    projector's checkpoint at `checkpoint` or (None) no checkpoint and rows the fold must not trust."""
    statements = [f"DROP TABLE {{s}}{COUNTS_TABLE}"]
    if checkpoint is None:
        statements += [
            f"DELETE FROM {{s}}{TABLE} WHERE workflow_id LIKE 'bench-00%'",
            f"UPDATE {{s}}{TABLE} SET status = 'Failed'",
        ]
    else:
        statements.append(f"INSERT INTO {{s}}checkpoints (name, position) VALUES ('{PROJECTOR_NAME}', {checkpoint})")
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split("///", 1)[1])
        for statement in [*statements, *SQLITE_EVENTS_BEFORE_SCHEMA_6, "PRAGMA user_version = 4"]:
            connection.execute(statement.replace("{s}", ""))
        connection.commit()
        connection.close()
        return
    schema = '"' + url.rsplit("schema=", 1)[1].split("&")[0] + '".'
    statements += ["DROP FUNCTION {s}apply_runs_index", "DELETE FROM {s}schema_migrations WHERE version = 9"]
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.replace("{s}", schema).encode())
