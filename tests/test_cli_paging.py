"""`agentfold workflows` pages through the runs index: newest start first, keyset cursors that neither repeat nor
skip a run (also while runs are started between pages), filters applied to every page, counts over every run; and
`stats` counts runs per state from the same index. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.bench import run_events
from agentfold.events import NO_STREAM
from agentfold.runtime import history as h
from tests.backends import BACKENDS, Backend
from tests.test_cli import cli, ok_json, ok_text

RUNS = 23
PAGE = 5
SQL_BACKENDS = [backend for backend in BACKENDS if backend.name in ("sqlite", "postgres")]


@pytest.fixture(params=SQL_BACKENDS, ids=lambda backend: backend.name)
def runs_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: Backend = request.param
    yield from backend.filled(tmp_path, make_runs)


async def make_runs(url: str) -> None:
    """RUNS runs as the runs-page figure of `agentfold bench` writes them, in batches of three, so some share a
    start time (the id breaks the tie) and some do not."""
    async with agentfold.connect(url) as store:
        for first in range(0, RUNS, 3):
            await asyncio.gather(
                *(
                    store.append(f"{h.WORKFLOW_STREAM_PREFIX}bench-{index:07d}", run_events(index), NO_STREAM)
                    for index in range(first, min(RUNS, first + 3))
                )
            )
        assert await store.head_position() > 0


async def newest_first(url: str) -> list[str]:
    """Every run id, newest start first, ties by id descending: read straight from the log."""
    async with agentfold.connect(url) as store:
        starts = [
            (event.recorded_at_us, event.stream_id[len(h.WORKFLOW_STREAM_PREFIX) :])
            async for event in store.read_all(types=[h.WORKFLOW_STARTED])
        ]
    return [workflow_id for _, workflow_id in sorted(starts, reverse=True)]


def all_pages(url: str, *options: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    pages: list[list[str]] = []
    listings: list[dict[str, Any]] = []
    cursor: list[str] = []
    while True:
        listing = ok_json("workflows", "--json", "--limit", str(PAGE), *options, *cursor, "--store", url)
        listings.append(listing)
        pages.append([run["workflow_id"] for run in listing["runs"]])
        if listing["next_after"] is None:
            return pages, listings
        assert len(pages) <= RUNS, "the cursor does not move on"
        cursor = ["--after", listing["next_after"]]


def test_pages_cover_every_run_once_in_order(runs_url: str) -> None:
    pages, listings = all_pages(runs_url)
    assert [len(page) for page in pages] == [PAGE] * (RUNS // PAGE) + [RUNS % PAGE]
    listed = [workflow_id for page in pages for workflow_id in page]
    assert listed == asyncio.run(newest_first(runs_url))  # order, no repeat, no gap
    failed = len([index for index in range(RUNS) if index % 10 == 0])
    waiting = len([index for index in range(RUNS) if index % 20 == 5])
    for listing in listings:  # the counts cover every run on every page
        assert listing["total"] == RUNS
        assert listing["counts"]["Failed"] == failed
        assert listing["counts"]["Completed"] == RUNS - failed - waiting


def test_filters_apply_to_every_page(runs_url: str) -> None:
    expected_failed = [run for run in asyncio.run(newest_first(runs_url)) if int(run.rsplit("-", 1)[1]) % 10 == 0]
    pages, listings = all_pages(runs_url, "--status", "failed")
    assert [workflow_id for page in pages for workflow_id in page] == expected_failed
    assert all(run["status"] == "Failed" for listing in listings for run in listing["runs"])
    # A waiting run that no worker ever held is stalled; --stalled with --status keeps those in that state.
    stalled = ok_json("workflows", "--json", "--stalled", "--store", runs_url)
    stalled_ids = [run["workflow_id"] for run in stalled["runs"]]
    assert stalled_ids == [run for run in asyncio.run(newest_first(runs_url)) if int(run.rsplit("-", 1)[1]) % 20 == 5]
    assert all(run["stalled"] for run in stalled["runs"])
    assert ok_json("workflows", "--json", "--stalled", "--status", "completed", "--store", runs_url)["runs"] == []


def test_runs_started_between_pages_neither_shift_nor_repeat_a_page(runs_url: str) -> None:
    first = ok_json("workflows", "--json", "--limit", str(PAGE), "--store", runs_url)

    async def start_more() -> None:
        async with agentfold.connect(runs_url) as store:
            for index in range(RUNS, RUNS + 4):
                await store.append(f"{h.WORKFLOW_STREAM_PREFIX}bench-{index:07d}", run_events(index), NO_STREAM)

    asyncio.run(start_more())
    second = ok_json("workflows", "--json", "--limit", str(PAGE), "--after", first["next_after"], "--store", runs_url)
    before = asyncio.run(newest_first(runs_url))[4:]  # the order without the four newer runs
    assert [run["workflow_id"] for run in first["runs"] + second["runs"]] == before[: 2 * PAGE]
    assert second["total"] == RUNS + 4


def test_the_table_prints_the_next_page_hint_and_the_counts(runs_url: str) -> None:
    listing = ok_text("workflows", "--limit", "3", "--store", runs_url)
    assert f"3 of {RUNS} workflow runs" in listing
    hint = next(line for line in listing.splitlines() if line.startswith("next page: --after "))
    cursor = hint.removeprefix("next page: --after ").strip()
    assert cursor == ok_json("workflows", "--json", "--limit", "3", "--store", runs_url)["next_after"]
    assert "runs per state: " in listing and "Failed 3" in listing
    last = ok_text("workflows", "--limit", str(RUNS), "--store", runs_url)
    assert "next page" not in last


def test_a_bad_cursor_or_limit_is_a_usage_error(runs_url: str) -> None:
    bad = cli("workflows", "--after", "not-a-cursor!", "--store", runs_url)
    assert bad.returncode == 2 and "not a page cursor" in bad.stderr and "Traceback" not in bad.stderr
    for limit in ("0", "501"):
        refused = cli("workflows", "--limit", limit, "--store", runs_url)
        assert refused.returncode == 2 and "--limit" in refused.stderr


def test_stats_counts_runs_per_state_from_the_index(runs_url: str) -> None:
    figures = ok_json("stats", "--json", "--store", runs_url)
    listing = ok_json("workflows", "--json", "--limit", "1", "--store", runs_url)
    assert figures["runs_per_state"] == listing["counts"]
    assert sum(figures["runs_per_state"].values()) == RUNS == figures["runs"]
    assert "runs per state" in ok_text("stats", "--store", runs_url)
