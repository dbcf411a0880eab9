"""`agentfold reindex` folds the runs index and the open runs from the log again: rows edited by hand are put
right, the log is left as it was. On SQLite, PostgreSQL (both kept in the store by each append) and Redis (the open
runs kept by each append, the runs index by the processes that read it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import agentfold
from agentfold.bench import run_events
from agentfold.events import NO_STREAM, NewEvent
from agentfold.runtime import history as h
from tests.backends import BACKENDS, REDIS_URL, Backend, execute_sql
from tests.test_cli import ok_json, ok_text

RUNS = 7  # as the bench writes them: run 5 waits for a signal, the others end
OPEN = 3
WAITING = {"done-5"}


@pytest.fixture(params=[backend for backend in BACKENDS if backend.name != "memory"], ids=lambda backend: backend.name)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: Backend = request.param
    yield from backend.filled(tmp_path, make_runs)


async def make_runs(url: str) -> None:
    """RUNS runs as the bench writes them and OPEN runs that only started."""
    async with agentfold.connect(url) as store:
        for index in range(RUNS):
            await store.append(f"{h.WORKFLOW_STREAM_PREFIX}done-{index}", run_events(index), NO_STREAM)
        for index in range(OPEN):
            started = NewEvent(h.WORKFLOW_STARTED, {"workflow": "waiting", "input": {"args": []}, "version": None})
            await store.append(f"{h.WORKFLOW_STREAM_PREFIX}open-{index}", [started], NO_STREAM)


async def log_digest(url: str) -> list[tuple[int, str, int, str]]:
    async with agentfold.connect(url) as store:
        return [(e.position, e.stream_id, e.version, e.type) async for e in store.read_all()]


def damage(url: str) -> None:
    """What no append leaves: runs index rows gone and a run that never existed; an open run's row gone."""
    if url.startswith("redis"):
        prefix = url.rsplit("prefix=", 1)[1].split("&")[0]
        with redis.Redis.from_url(REDIS_URL.split("?")[0]) as client:
            client.hdel(f"{prefix}:runsindex:rows", "done-0", "open-0")
            client.hset(f"{prefix}:runs", "ghost", "w")
            client.hdel(f"{prefix}:runs", "open-1")
        return
    execute_sql(
        url,
        "DELETE FROM {s}agentfold_runs_index WHERE workflow_id IN ('done-0', 'open-0')",
        "INSERT INTO {s}open_runs VALUES ('ghost', 'w', NULL)",
        "DELETE FROM {s}open_runs WHERE workflow_id = 'open-1'",
    )


def test_reindex_puts_damaged_rows_right_and_leaves_the_log_alone(store_url: str) -> None:
    before = ok_json("workflows", "--json", "--store", store_url)
    assert before["total"] == RUNS + OPEN
    listed_before = listed(store_url)
    log = asyncio.run(log_digest(store_url))
    damage(store_url)
    assert asyncio.run(open_run_ids(store_url)) != {f"open-{index}" for index in range(OPEN)} | WAITING
    assert listed(store_url) == listed_before - {"done-0", "open-0"}

    done = ok_json("reindex", "--json", "--store", store_url)

    assert done["runs_index"]["kept_in_store"] is True
    assert done["open_runs"] == OPEN + len(WAITING)
    assert listed(store_url) == listed_before
    assert ok_json("workflows", "--json", "--store", store_url)["counts"] == before["counts"]
    assert asyncio.run(log_digest(store_url)) == log
    assert asyncio.run(open_run_ids(store_url)) == {f"open-{index}" for index in range(OPEN)} | WAITING
    assert done["runs_index"]["runs"] == RUNS + OPEN
    text = ok_text("reindex", "--store", store_url)
    assert "runs index:" in text and "open runs:" in text


def listed(url: str) -> set[str]:
    return {run["workflow_id"] for run in ok_json("workflows", "--json", "--store", url)["runs"]}


async def open_run_ids(url: str) -> set[str]:
    async with agentfold.connect(url) as store:
        kept = await store.open_runs()
        assert kept is not None
        return {run.workflow_id for run in kept[1]}
