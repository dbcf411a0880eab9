"""`agentfold start / signal / cancel / terminate / retry / restart` against a real worker process.

The worker is `agentfold worker tests.workflow_apps.control:runtime`; the commands run in subprocesses without the
workflow's code, as a person at a terminal would use them. A refused action exits with code 2 and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import WorkflowCancelled, WorkflowFailed, WorkflowTerminated
from agentfold.runtime import Runtime, WorkflowClient, workflow_stream
from agentfold.store import EventStore
from tests.backends import DURABLE, Backend, require_service

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0
APP = "tests.workflow_apps.control:runtime"
CONTROL_BACKENDS = [backend for backend in DURABLE if backend.name in ("sqlite", "postgres")]


@pytest.fixture(params=CONTROL_BACKENDS, ids=lambda backend: backend.name)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend: Backend = request.param
    require_service(backend)
    chosen = backend.make_url(tmp_path)
    yield chosen
    backend.cleanup(chosen)


def env(effects: Path) -> dict[str, str]:
    chosen = {key: value for key, value in os.environ.items() if key != "AGENTFOLD_STORE"}
    chosen.update({"COLUMNS": "120", "NO_COLOR": "1", "PYTHONPATH": str(ROOT), "CONTROL_EFFECTS": str(effects)})
    return chosen


def agentfold_cli(effects: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentfold.cli", *args],
        capture_output=True,
        text=True,
        env=env(effects),
        cwd=ROOT,
        timeout=TIMEOUT,
    )


def ok_json(effects: Path, *args: str) -> Any:
    result = agentfold_cli(effects, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
async def store(url: str) -> AsyncIterator[EventStore]:
    async with agentfold.connect(url) as opened:
        yield opened


async def spawn_worker(url: str, effects: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "agentfold.cli", "worker", APP, "--store", url, "--lease-ttl", "2"],
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env(effects),
    )
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), TIMEOUT)).decode()
        assert line, "the worker exited before it was ready"
        if " ready: " in line:
            return process


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


async def until_state(client: WorkflowClient, workflow_id: str, state: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            head = await client.store.head_position()
            if await client.state(workflow_id) == state:
                return
            await client.store.wait_for_append(head, 1.0)


def set_charge_down(effects: Path, down: bool) -> None:
    """Make the `charge` effect fail (the provider is down) or work again."""
    flag = Path(f"{effects}.fail-charge")
    if down:
        flag.touch()
    else:
        flag.unlink()


def executed(effects: Path) -> Counter[str]:
    return Counter(effects.read_text().splitlines() if effects.exists() else [])


async def test_a_person_starts_approves_cancels_and_terminates_runs_from_the_cli(
    url: str, store: EventStore, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    client = Runtime().client(store)  # no workflow code in this process either
    worker = await spawn_worker(url, effects)
    try:
        started = ok_json(effects, "start", "approval", "--input", '{"id": 7}', "--id", "order-7", "--store", url)
        assert started["workflow_id"] == "order-7" and started["started"] is True
        again = ok_json(effects, "start", "approval", "--input", '{"id": 7}', "--id", "order-7", "--store", url)
        assert again["started"] is False
        await until_state(client, "order-7", "AwaitingInput")
        sent = ok_json(effects, "signal", "order-7", "approval", "--payload", '{"by": "alice"}', "--store", url)
        assert sent["signal"] == "approval"
        assert await client.result("order-7", timeout=TIMEOUT) == {"order": 7, "approved_by": "alice"}

        ok_json(effects, "start", "approval", "--input", '{"id": 8}', "--id", "order-8", "--store", url)
        await until_state(client, "order-8", "AwaitingInput")
        cancelled = agentfold_cli(effects, "cancel", "order-8", "--reason", "out of stock", "--store", url)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel requested for order-8" in cancelled.stdout
        with pytest.raises(WorkflowCancelled, match="out of stock"):
            await client.result("order-8", timeout=TIMEOUT)
        requested = [event async for event in store.read_all(types=["WorkflowCancelRequested"])]
        assert requested[0].metadata["via"] == "cli" and "@" in requested[0].metadata["actor"]

        ok_json(effects, "start", "approval", "--input", '{"id": 9}', "--id", "order-9", "--store", url)
        await until_state(client, "order-9", "AwaitingInput")
        terminated = ok_json(effects, "terminate", "order-9", "--store", url)
        assert terminated["state"] == "Terminated"
        with pytest.raises(WorkflowTerminated):
            await client.result("order-9", timeout=TIMEOUT)
    finally:
        await kill(worker)

    assert executed(effects) == Counter(
        {
            "order-7/1/reserve reserve": 1,
            "order-7/3/charge charge": 1,
            "order-8/1/reserve reserve": 1,
            "order-8/3/release release": 1,
            "order-9/1/reserve reserve": 1,
        }
    )
    # A misspelt workflow is started all the same (it may be registered elsewhere), with a warning.
    unserved = agentfold_cli(effects, "start", "aproval", "--id", "typo-1", "--store", url)
    assert unserved.returncode == 0 and "no live worker serves workflow 'aproval'" in unserved.stderr
    versions = {run: await store.stream_version(workflow_stream(run)) for run in ("order-7", "order-8", "order-9")}
    head = await store.head_position()
    refusals = [("cancel", "order-7"), ("terminate", "order-8"), ("retry", "order-9")]
    for action, run in refusals:
        refused = agentfold_cli(effects, action, run, "--store", url)
        assert refused.returncode == 2, (action, run, refused.stdout, refused.stderr)
        assert f"cannot {action} workflow {run!r}: it is" in refused.stderr
        assert "nothing was written" in refused.stderr
        assert "Traceback" not in refused.stderr
    bad_step = agentfold_cli(effects, "restart", "order-7", "--from-step", "nope", "--store", url)
    assert bad_step.returncode == 2 and "no recorded step 'nope'" in bad_step.stderr
    bad_json = agentfold_cli(effects, "start", "approval", "--input", "{oops", "--store", url)
    assert bad_json.returncode == 2 and "--input" in bad_json.stderr
    unknown = agentfold_cli(effects, "cancel", "order-77", "--store", url)
    assert unknown.returncode == 1 and "did you mean 'order-7'" in unknown.stderr
    assert {run: await store.stream_version(workflow_stream(run)) for run in versions} == versions
    assert await store.head_position() == head


async def test_a_failed_run_is_retried_after_its_worker_was_killed_then_restarted_from_a_step(
    url: str, store: EventStore, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    set_charge_down(effects, True)
    client = Runtime().client(store)
    worker = await spawn_worker(url, effects)
    try:
        ok_json(effects, "start", "approval", "--input", '{"id": 1}', "--id", "order-1", "--store", url)
        ok_json(effects, "signal", "order-1", "approval", "--payload", '{"by": "ann"}', "--store", url)
        with pytest.raises(WorkflowFailed, match="the provider is down"):
            await client.result("order-1", timeout=TIMEOUT)
    finally:
        await kill(worker)
    assert worker.returncode == -signal.SIGKILL

    set_charge_down(effects, False)
    retried = ok_json(effects, "retry", "order-1", "--store", url)  # no worker is alive: the retry is recorded
    assert retried["attempt"] == 2 and retried["state"] == "Processing"
    worker = await spawn_worker(url, effects)
    try:
        assert await client.result("order-1", timeout=TIMEOUT) == {"order": 1, "approved_by": "ann"}
        restarted = ok_json(effects, "restart", "order-1", "--from-step", "charge", "--store", url)
        assert restarted["attempt"] == 3
        assert await client.result("order-1", timeout=TIMEOUT) == {"order": 1, "approved_by": "ann"}
    finally:
        await kill(worker)
    # The reservation and the approval were kept; the charge ran once per attempt that reached it, with one key.
    assert executed(effects) == Counter({"order-1/1/reserve reserve": 1, "order-1/3/charge charge": 2})
    history = await client.history("order-1")
    assert (history.state, history.attempt) == ("Completed", 3)
