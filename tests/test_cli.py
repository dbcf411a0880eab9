"""The inspection commands, driven as a user drives them: `python -m agentfold.cli ...` in a subprocess.

Runs are made by the real runtime (a worker in this process) on real stores; the commands read them from another
process. Nothing here writes events by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import WorkflowFailed
from agentfold.runtime import RetryPolicy, Runtime, WorkflowClient, WorkflowContext, workflow_stream
from agentfold.store import EventStore

TIMEOUT = 30.0
RETRY_ONCE = RetryPolicy(max_attempts=2, initial_backoff=0, max_backoff=0, non_retryable=(ValueError,))
RUN_IDS = ["order-1", "order-2", "order-3", "order-4"]


def order_app() -> tuple[Runtime, Any, asyncio.Event]:
    """An order workflow: reserve, charge (fails once with a transient error), wait for approval, ship."""
    runtime = Runtime(default_retry=RETRY_ONCE)
    charge_calls: Counter[str] = Counter()
    never = asyncio.Event()

    async def reserve(order: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": order["sku"]}

    async def charge(order: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        charge_calls[idempotency_key] += 1
        if order.get("declined"):
            raise ValueError("card declined")
        if charge_calls[idempotency_key] == 1:
            raise ConnectionError("provider timeout")
        return {"charge": f"ch-{order['number']}"}

    async def ship(order: dict[str, Any]) -> str:
        if order.get("stuck"):
            await never.wait()
        return f"shipped-{order['number']}"

    @runtime.workflow(name="fulfil_order")
    async def fulfil_order(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("reserve", reserve, order)
        payment = await ctx.step("charge", charge, order)
        approval = await ctx.wait_for("approval")
        await ctx.step("ship", ship, order)
        return {"payment": payment["charge"], "approved_by": approval["by"]}

    return runtime, fulfil_order, never


async def until(client: WorkflowClient, workflow_id: str, check: Any) -> None:
    """Return once `check(history)` holds for the run (woken by appends)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            head = await client.store.head_position()
            if check(await client.history(workflow_id)):
                return
            await client.store.wait_for_append(head, 1.0)


async def make_runs(url: str) -> None:
    """order-1 completes after a retried charge; order-2 fails (card declined); order-3 waits for approval;
    order-4 is stopped while shipping, leaving that step in doubt."""
    runtime, fulfil_order, _ = order_app()
    async with asyncio.timeout(2 * TIMEOUT), agentfold.connect(url) as store:
        client = runtime.client(store)
        async with runtime.worker(store):
            await client.start(fulfil_order, {"number": 1, "sku": "tea"}, workflow_id="order-1")
            await client.start(fulfil_order, {"number": 2, "sku": "mug", "declined": True}, workflow_id="order-2")
            await client.start(fulfil_order, {"number": 3, "sku": "pot"}, workflow_id="order-3")
            await client.start(fulfil_order, {"number": 4, "sku": "cup", "stuck": True}, workflow_id="order-4")
            await client.signal("order-1", "approval", {"by": "alice"})
            await client.signal("order-4", "approval", {"by": "bob"})
            assert (await client.result("order-1", timeout=TIMEOUT))["approved_by"] == "alice"
            with pytest.raises(WorkflowFailed):
                await client.result("order-2", timeout=TIMEOUT)
            await until(client, "order-3", lambda history: history.state == "AwaitingInput")
            await until(client, "order-4", lambda history: 4 in history.commands and history.commands[4].in_doubt)


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `agentfold` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "agentfold.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        cwd=cwd,
        timeout=TIMEOUT,
    )


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "AGENTFOLD_STORE"}
    env.update({"COLUMNS": "250", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(extra or {})
    return env


def ok_json(*args: str) -> Any:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ok_text(*args: str) -> str:
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


async def read_everything(url: str) -> list[agentfold.RecordedEvent]:
    async with agentfold.connect(url) as store:
        return [event async for event in store.read_all()]


@pytest.fixture(scope="module")
def sqlite_runs(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'runs.db'}"
    asyncio.run(make_runs(url))
    return url


def test_every_command_reads_runs_made_by_the_runtime(durable_url: str) -> None:
    asyncio.run(make_runs(durable_url))
    before = asyncio.run(read_everything(durable_url))
    store = ["--store", durable_url]

    runs = {run["workflow_id"]: run for run in ok_json("workflows", "--json", *store)["runs"]}
    assert sorted(runs) == RUN_IDS
    assert {run_id: run["status"] for run_id, run in runs.items()} == {
        "order-1": "Completed",
        "order-2": "Failed",
        "order-3": "AwaitingInput",
        "order-4": "Processing",
    }
    assert (runs["order-1"]["retries"], runs["order-1"]["failed_steps"], runs["order-1"]["in_doubt_steps"]) == (1, 0, 0)
    assert runs["order-2"]["failed_steps"] == 1
    assert runs["order-4"]["in_doubt_steps"] == 1
    assert {run["agent"] for run in runs.values()} == {"fulfil_order"}
    assert runs["order-1"]["finished_at"] is not None and runs["order-3"]["finished_at"] is None
    failed = ok_json("workflows", "--status", "failed", "--json", *store)
    assert [run["workflow_id"] for run in failed["runs"]] == ["order-2"]
    assert failed["next_after"] is None and failed["counts"]["Failed"] == 1 and failed["total"] == len(RUN_IDS)

    shown = ok_json("show", "order-1", "--json", *store)
    recorded = [event for event in before if event.stream_id in ("workflow-order-1", "signals-order-1")]
    assert [row["event_type"] for row in shown["timeline"]] == [event.type for event in recorded]
    assert [row["position"] for row in shown["timeline"]] == [event.position for event in recorded]
    flags = [(row["event_type"], row["name"], row["attempt"], row["flag"]) for row in shown["timeline"]]
    assert ("StepFailed", "charge", 1, "attempt failed") in flags
    assert ("StepStarted", "charge", 2, "retry") in flags
    assert [row["stream"] for row in shown["timeline"]].count("inbox") == 1
    failed = next(row for row in shown["timeline"] if row["event_type"] == "StepFailed")
    assert failed["detail"].startswith("ConnectionError: provider timeout")
    assert failed["took_s"] is not None and failed["took_s"] >= 0
    in_doubt = [row for row in ok_json("show", "order-4", "--json", *store)["timeline"] if row["flag"] == "in doubt"]
    assert [(row["event_type"], row["name"]) for row in in_doubt] == [("StepStarted", "ship")]

    replayed = ok_json("replay", "order-1", "--json", *store)
    version = runs["order-1"]["version"]
    assert [step["version"] for step in replayed["steps"]] == list(range(1, version + 1))
    assert replayed["steps"][0]["changes"][0] == {
        "path": "state",
        "kind": "changed",
        "before": "Idle",
        "after": "Processing",
    }
    assert [step["state"] for step in replayed["steps"]][-1] == "Completed"
    assert replayed["state"]["commands"]["2"]["failures"] == 1
    assert replayed["state"]["finished"]["result"] == {"payment": "ch-1", "approved_by": "alice"}
    partial = ok_json("replay", "order-1", "--to", "3", "--json", *store)
    assert (len(partial["steps"]), partial["state"]["version"]) == (3, 3)
    assert partial["state"]["commands"]["1"]["outcome_type"] == "StepCompleted"

    differences = ok_json("diff", "order-1", "0", str(version), "--json", *store)
    by_path = {change["path"]: change for change in differences["changes"]}
    assert (by_path["state"]["before"], by_path["state"]["after"]) == ("Idle", "Completed")
    assert by_path["commands.3"]["kind"] == "added"

    exported = cli("export", "order-1", "--format", "jsonl", *store)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert lines[0]["format"] == "agentfold-trace/1" and lines[0]["run"]["workflow_id"] == "order-1"
    assert [line["event"]["id"] for line in lines[1:]] == [str(event.id) for event in recorded]
    assert [line["event"]["data"] for line in lines[1:]] == [event.data for event in recorded]

    figures = ok_json("stats", "--json", *store)
    assert figures["events"] == len(before) and figures["head_position"] == before[-1].position
    assert figures["streams"] == len({event.stream_id for event in before})
    assert figures["types"] == dict(Counter(event.type for event in before))
    assert figures["runs"] == 4 and figures["categories"]["workflow"] == 4
    assert figures["size_bytes"] > sum(len(json.dumps(event.data)) for event in before) // 2

    # Nothing above wrote anything: replay folds recorded events and executes nothing.
    assert asyncio.run(read_everything(durable_url)) == before


def test_tail_follows_events_appended_after_it_started(durable_url: str) -> None:
    async def head_position() -> int:
        async with agentfold.connect(durable_url) as store:
            return await store.head_position()

    head = asyncio.run(head_position())
    command = [sys.executable, "-m", "agentfold.cli", "tail", "--store", durable_url, "--json"]
    command += ["--after", str(head), "--stream-prefix", "workflow-order-5", "--count", "3"]
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    filtered = subprocess.Popen(
        [*command[:-6], "--after", str(head), "--type", "StepFailed", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )

    async def start_another() -> None:
        runtime, fulfil_order, _ = order_app()
        async with asyncio.timeout(TIMEOUT), agentfold.connect(durable_url) as store, runtime.worker(store):
            client = runtime.client(store)
            await client.start(fulfil_order, {"number": 5, "sku": "jar"}, workflow_id="order-5")
            await until(client, "order-5", lambda history: history.state == "AwaitingInput")

    try:
        asyncio.run(start_another())
        out, err = follower.communicate(timeout=TIMEOUT)
        assert follower.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert [(event["stream_id"], event["type"]) for event in events] == [
            ("workflow-order-5", "WorkflowStarted"),
            ("workflow-order-5", "StepStarted"),
            ("workflow-order-5", "StepCompleted"),
        ]
        assert all(event["position"] > head for event in events)
        out, err = filtered.communicate(timeout=TIMEOUT)
        assert filtered.returncode == 0, err
        [failure] = [json.loads(line) for line in out.splitlines()]
        assert (failure["stream_id"], failure["data"]["error"]["type"]) == ("workflow-order-5", "ConnectionError")
    finally:
        for process in (follower, filtered):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_tables_make_failures_and_retries_stand_out(sqlite_runs: str) -> None:
    store = ["--store", sqlite_runs]
    listing = ok_text("workflows", *store)
    for expected in ("4 workflow runs", "order-2", "fulfil_order", "Failed", "AwaitingInput", "✗ 1 failed"):
        assert expected in listing
    assert "↻ 1 retry" in next(line for line in listing.splitlines() if "order-1" in line)
    assert "? 1 in doubt" in next(line for line in listing.splitlines() if "order-4" in line)
    assert "order-2" not in ok_text("workflows", "--status", "Completed", *store)
    assert "no workflow runs in state Idle" in ok_text("workflows", "--status", "idle", *store)

    timeline = ok_text("show", "order-1", *store)
    assert "Completed" in timeline
    charge_lines = [line for line in timeline.splitlines() if " charge " in line]
    assert any("! attempt failed" in line and "ConnectionError: provider timeout" in line for line in charge_lines)
    assert any("↻ retry" in line and "StepStarted" in line for line in charge_lines)
    assert "inbox 1" in timeline and "SignalSent" in timeline
    assert "✗ failed" in ok_text("show", "order-2", *store)
    assert "? in doubt" in ok_text("show", "order-4", *store)

    replayed = ok_text("replay", "order-1", "--to", "4", *store)
    assert "nothing executed" in replayed
    assert '~ state: "Idle" → "Processing"' in replayed
    assert "+ commands.1 = " in replayed
    assert "projected state at version 4" in replayed

    differences = ok_text("diff", "order-1", "1", "3", *store)
    assert "version 1 → 3" in differences and "commands.1" in differences
    assert "no difference" in ok_text("diff", "order-1", "3", "3", *store)

    followed = ok_text("tail", "--after", "0", "--type", "StepFailed", "--count", "4", *store).splitlines()
    assert len(followed) == 4 and all(" StepFailed " in line for line in followed)
    assert sum("! attempt failed" in line for line in followed) == 3
    [final] = [line for line in followed if "✗ failed" in line]
    assert "workflow-order-2 v" in final

    figures = ok_text("stats", *store)
    for expected in ("streams", "events per type", "WorkflowStarted", "StepStarted", "workflow runs", "signals"):
        assert expected in figures


def test_export_writes_a_file(sqlite_runs: str, tmp_path: Path) -> None:
    target = tmp_path / "trace.json"
    result = cli("export", "order-2", "--format", "json", "--output", str(target), "--store", sqlite_runs)
    assert result.returncode == 0, result.stderr
    trace = json.loads(target.read_text())
    assert trace["run"]["status"] == "Failed" and trace["run"]["failed_steps"] == 1
    assert [event["type"] for event in trace["events"]][::5] == ["WorkflowStarted", "WorkflowFailed"]
    assert trace["events"][-1]["data"]["error"]["type"] == "StepError"
    assert f"{len(trace['events'])} events of order-2 written to" in result.stderr


def test_a_stream_name_is_taken_for_its_workflow_id_and_typos_get_close_matches(sqlite_runs: str) -> None:
    shown = ok_json("show", workflow_stream("order-3"), "--json", "--store", sqlite_runs)
    assert shown["run"]["workflow_id"] == "order-3"

    typo = cli("show", "ordr-1", "--store", sqlite_runs)
    assert typo.returncode == 1
    assert "no workflow 'ordr-1'" in typo.stderr and "did you mean 'order-1'" in typo.stderr
    assert "Traceback" not in typo.stderr
    for command in (["replay", "order-9"], ["diff", "order-9", "0", "1"], ["export", "order-9"]):
        result = cli(*command, "--store", sqlite_runs)
        assert result.returncode == 1 and "did you mean" in result.stderr, result.stderr
    unrelated = cli("show", "invoice-77", "--store", sqlite_runs)
    assert unrelated.returncode == 1
    assert "did you mean" not in unrelated.stderr and "4 runs there" in unrelated.stderr


def test_bad_arguments_are_refused_with_a_reason(sqlite_runs: str) -> None:
    store = ["--store", sqlite_runs]
    bad_format = cli("export", "order-1", "--format", "xml", *store)
    assert bad_format.returncode == 2 and "Invalid value for '--format'" in bad_format.stderr
    beyond = cli("replay", "order-1", "--to", "999", *store)
    assert beyond.returncode == 2 and "out of range" in beyond.stderr and "Traceback" not in beyond.stderr
    backwards = cli("diff", "order-1", "0", "999", *store)
    assert backwards.returncode == 2 and "999 is out of range" in backwards.stderr
    status = cli("workflows", "--status", "Sleeping", *store)
    assert status.returncode == 2 and "Invalid value for '--status'" in status.stderr
    unknown_scheme = cli("stats", "--store", "mysql://root:pw@127.0.0.1/db")
    assert unknown_scheme.returncode == 2 and "unknown store URL" in unknown_scheme.stderr
    assert "pw@" not in unknown_scheme.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_unreachable_postgres_is_named_without_its_password() -> None:
    port = _free_port()
    url = f"postgresql://agent:hunter2-very-secret@127.0.0.1:{port}/orders"
    for result in (cli("workflows", "--store", url), cli("stats", env={"AGENTFOLD_STORE": url})):
        assert result.returncode == 2
        assert f"postgresql://agent:***@127.0.0.1:{port}/orders" in result.stderr
        assert "refused" in result.stderr.lower()
        assert "hunter2" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Path) -> None:
    result = cli("workflows", cwd=tmp_path)
    assert result.returncode == 2
    assert "no agentfold store at sqlite:///agentfold.db" in result.stderr and "does not exist" in result.stderr
    assert "AGENTFOLD_STORE" in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_an_empty_store_lists_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    async with agentfold.connect(url) as store:
        assert isinstance(store, EventStore)
    assert ok_json("workflows", "--json", "--store", url)["runs"] == []
    assert "no workflow runs" in ok_text("workflows", "--store", url)
    figures = ok_json("stats", "--json", "--store", url)
    assert (figures["events"], figures["streams"], figures["oldest"]) == (0, 0, None)
    missing = cli("show", "order-1", "--store", url)
    assert missing.returncode == 1 and "no workflow runs there" in missing.stderr
