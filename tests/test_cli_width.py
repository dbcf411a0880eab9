"""Every inspection command at 80 and 120 columns (the real CLI, `COLUMNS` set as a terminal sets it): ids are
never cut or wrapped, the key columns are there, and no line is wider than the terminal unless an id alone is.

The runs are made by the real runtime: a step retried after a failure, a step retried after its worker stopped in
the middle of it, and a step settled by `reconcile` after its worker stopped, so the `issues` column has something
to say about each.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

import agentfold
from agentfold.runtime import RetryPolicy, Runtime, WorkflowContext
from tests.test_cli import cli_env

TIMEOUT = 30.0
WIDTHS = (80, 120)
ONE_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0, max_backoff=0)

RETRIED = "order-0001"
CRASHED = "support-ticket-0042/researcher"
RECONCILED = "support-ticket-0042/payment-refund"
RUN_IDS = (RETRIED, CRASHED, RECONCILED)
LONG_ID = "tenant-acme-corporation/" + "q" * 90


def research_app(blocked: bool) -> tuple[Runtime, asyncio.Queue[str]]:
    """One workflow whose steps fail once, hang while `blocked` (until the worker stops), and are reconciled.

    The queue gets the idempotency key of each step that started hanging.
    """
    runtime = Runtime(default_retry=ONE_RETRY)
    failures: set[str] = set()
    hang = asyncio.Event()
    hanging: asyncio.Queue[str] = asyncio.Queue()

    async def search(query: str, idempotency_key: str) -> list[str]:
        if idempotency_key not in failures:
            failures.add(idempotency_key)
            raise ConnectionError("search index timeout")
        return [f"{query}: result"]

    async def fetch(url: str, idempotency_key: str) -> str:
        if blocked:
            hanging.put_nowait(idempotency_key)
            await hang.wait()
        return f"page {url}"

    async def refund(amount: int, idempotency_key: str) -> str:
        if blocked:
            hanging.put_nowait(idempotency_key)
            await hang.wait()
        return f"refund {idempotency_key}"

    async def refund_status(idempotency_key: str, amount: int) -> str:
        return f"refund {idempotency_key} (settled)"

    @runtime.workflow(name="research")
    async def research(ctx: WorkflowContext, task: dict[str, Any]) -> str:
        kind = task["kind"]
        if kind == "retried":
            return str(await ctx.step("search", search, "durable agents"))
        if kind == "crashed":
            return await ctx.step("fetch", fetch, "https://example.test/paper")
        if kind == "reconciled":
            return str(await ctx.step("refund", refund, 25, reconcile=refund_status))
        return "nothing to do"

    return runtime, hanging


async def make_runs(url: str) -> None:
    """Three finished runs: one retried after a failure, two resumed after their first worker stopped mid-step."""
    async with asyncio.timeout(2 * TIMEOUT), agentfold.connect(url) as store:
        first, hanging = research_app(blocked=True)
        client = first.client(store)
        async with first.worker(store, stop_timeout=0.1):
            await client.start("research", {"kind": "retried"}, workflow_id=RETRIED)
            await client.start("research", {"kind": "crashed"}, workflow_id=CRASHED)
            await client.start("research", {"kind": "reconciled"}, workflow_id=RECONCILED)
            await client.result(RETRIED, timeout=TIMEOUT)
            await hanging.get()
            await hanging.get()
        second, _ = research_app(blocked=False)
        async with second.worker(store):
            for workflow_id in RUN_IDS:
                await second.client(store).result(workflow_id, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def runs_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('width') / 'runs.db'}"
    asyncio.run(make_runs(url))
    return url


def at_width(columns: int, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "agentfold.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env({"COLUMNS": str(columns)}),
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def assert_fits(text: str, columns: int) -> None:
    for line in text.splitlines():
        assert cell_len(line) <= columns, f"{cell_len(line)} > {columns}: {line!r}"


def header(text: str) -> str:
    return next(line for line in text.splitlines() if "┃" in line)


@pytest.mark.parametrize("columns", WIDTHS)
def test_workflows_keeps_every_id_whole_and_says_what_went_wrong(runs_url: str, columns: int) -> None:
    listing = at_width(columns, "workflows", "--store", runs_url)
    assert_fits(listing, columns)
    key_columns = ["workflow id", "state", "issues"] + (
        ["agent", "duration", "started (UTC)"] if columns >= 120 else []
    )
    for name in key_columns:
        assert name in header(listing)
    for workflow_id in RUN_IDS:
        [row] = lines_with(listing, workflow_id)
        assert "Completed" in row
    assert "↻ 1 retry" in lines_with(listing, RETRIED)[0]
    assert "↻ 1 retry" in lines_with(listing, CRASHED)[0]
    assert "≈ 1 reconciled" in lines_with(listing, RECONCILED)[0]
    if columns == 80:
        assert "not shown at this width:" in listing and "--wide" in listing


def test_json_counts_the_retries_and_reconciles_the_timeline_shows(runs_url: str) -> None:
    listing = json.loads(at_width(80, "workflows", "--json", "--store", runs_url))
    runs = {run["workflow_id"]: run for run in listing["runs"]}
    assert (runs[RETRIED]["retries"], runs[RETRIED]["reconciled_steps"]) == (1, 0)
    assert (runs[CRASHED]["retries"], runs[CRASHED]["reconciled_steps"]) == (1, 0)
    assert (runs[RECONCILED]["retries"], runs[RECONCILED]["reconciled_steps"]) == (0, 1)
    flags = {
        row["flag"] for row in json.loads(at_width(80, "show", CRASHED, "--json", "--store", runs_url))["timeline"]
    }
    assert "retry" in flags


@pytest.mark.parametrize("columns", WIDTHS)
def test_show_keeps_the_step_and_detail_columns(runs_url: str, columns: int) -> None:
    for workflow_id, step, flag in ((RETRIED, "search", "attempt failed"), (RECONCILED, "refund", "reconciled")):
        timeline = at_width(columns, "show", workflow_id, "--store", runs_url)
        assert_fits(timeline, columns)
        assert workflow_id in timeline.splitlines()[0]
        for name in ("v", "event", "step", "detail", "!"):
            assert f" {name} " in f" {header(timeline)} "
        assert any(step in line and "StepStarted" in line for line in timeline.splitlines())
        assert any(flag in line for line in timeline.splitlines())
        assert "WorkflowCompleted" in timeline


@pytest.mark.parametrize("columns", WIDTHS)
def test_replay_diff_stats_and_tail_fit(runs_url: str, columns: int) -> None:
    store = ["--store", runs_url]
    replayed = at_width(columns, "replay", CRASHED, *store)
    assert_fits(replayed.split("projected state at version")[0], columns)
    assert f"dry replay of {CRASHED}" in replayed
    assert "what changed" in header(replayed) and "state" in header(replayed)
    assert '~ state: "Idle" → "Processing"' in replayed

    differences = at_width(columns, "diff", CRASHED, "0", "3", *store)
    assert_fits(differences, columns)
    assert f"{CRASHED}: version 0 → 3" in differences
    for name in ("path", "at 0", "at 3"):
        assert name in header(differences)

    figures = at_width(columns, "stats", *store)
    assert_fits(figures, columns)
    assert "events per type" in figures and "WorkflowStarted" in figures

    prefix = f"workflow-{CRASHED}"
    followed = at_width(columns, "tail", "--after", "0", "--stream-prefix", prefix, "--count", "3", *store)
    assert [line for line in followed.splitlines() if prefix in line] == followed.splitlines()
    assert len(followed.splitlines()) == 3

    exported = json.loads(at_width(columns, "export", RECONCILED, *store))
    assert exported["run"]["workflow_id"] == RECONCILED


def test_wide_shows_every_column(runs_url: str) -> None:
    listing = at_width(80, "workflows", "--wide", "--store", runs_url)
    for name in ("workflow id", "agent", "state", "started (UTC)", "last event", "quiet for", "duration", "events"):
        assert name in header(listing)
    assert "not shown at this width" not in listing
    timeline = at_width(80, "show", RETRIED, "--wide", "--store", runs_url)
    for name in ("time (UTC)", " + ", " # ", "try", "took", "detail"):
        assert name in header(timeline)
    assert any("ConnectionError: search index timeout" in line for line in timeline.splitlines())


def test_an_id_longer_than_the_terminal_is_never_cut(tmp_path: Path) -> None:
    """The id gets its whole width on one line (the terminal wraps it); the state beside it is still shown."""
    url = f"sqlite:///{tmp_path / 'long.db'}"

    async def one_run() -> None:
        runtime, _ = research_app(blocked=False)
        async with agentfold.connect(url) as store, runtime.worker(store):
            await runtime.client(store).start("research", {"kind": "none"}, workflow_id=LONG_ID)
            await runtime.client(store).result(LONG_ID, timeout=TIMEOUT)

    asyncio.run(one_run())
    [row] = lines_with(at_width(80, "workflows", "--store", url), LONG_ID)
    assert "Completed" in row
    assert LONG_ID in at_width(80, "show", LONG_ID, "--store", url).splitlines()[0]
    assert any(LONG_ID in line for line in at_width(80, "replay", LONG_ID, "--store", url).splitlines())
