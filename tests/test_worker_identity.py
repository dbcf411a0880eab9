"""Worker identity: a stable default id, one live incarnation per id, fencing of an older one.

The process tests run real `agentfold worker` processes on SQLite and PostgreSQL: one SIGKILLed and relaunched
under its id, one started beside a live one with the same id, and one paused with SIGSTOP, taken over, and resumed
with SIGCONT. They check the recorded events and the fake provider, never wall-clock timers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import agentfold
from agentfold.errors import LeaseLost, WorkerIdInUse, WorkerSuperseded, WrongExpectedVersion
from agentfold.events import NewEvent
from agentfold.runtime import default_worker_id, workflow_stream
from agentfold.runtime.history import load_history
from agentfold.runtime.identity import DEAD, RUNNING, UNKNOWN, ProcessIdentity, process_state, this_process
from agentfold.runtime.leases import WORKER_HEARTBEAT, WORKER_STOPPED, worker_stream
from agentfold.store import EventStore
from tests.backends import require_tool
from tests.waiting_app import until as wait_until
from tests.waiting_app import waiting_app
from tests.worker_process import fleet_worker
from tests.workflow_apps import fleet
from tests.workflow_apps.fleet import Provider

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180.0  # a guard against a hang on a loaded 2-core machine, not a measurement
LINE_TIMEOUT = 60.0
TTL = 60.0  # long: a lease that expired on a loaded machine would make a live worker look gone
HEARTBEAT = 0.25


# -- the default id ---------------------------------------------------------------------------------------------


def test_the_default_id_comes_from_the_environment_first_then_the_pod_then_a_fresh_one() -> None:
    assert default_worker_id({"AGENTFOLD_WORKER_ID": "billing-1", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == (
        "billing-1"
    )
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "billing-7f9c-x2x4q"}
    assert default_worker_id(pod) == "billing-7f9c-x2x4q"
    assert default_worker_id({**pod, "AGENTFOLD_WORKER_ID": "  "}) == "billing-7f9c-x2x4q"
    fresh = default_worker_id({})
    assert fresh != default_worker_id({}), "outside a pod or service, each start gets a new id"
    assert fresh.split("-")[-2] == str(os.getpid())


def test_the_worker_command_says_when_to_set_an_id() -> None:
    import subprocess

    shown = subprocess.run(
        [sys.executable, "-m", "agentfold.cli", "worker", "--help"], capture_output=True, text=True, check=True
    )
    text = " ".join(shown.stdout.split())
    assert "AGENTFOLD_WORKER_ID" in text and "Kubernetes pod name" in text and "systemd" in text
    assert "--take-over" in text and "resumes its runs at once" in text


def test_a_process_that_is_gone_is_dead_and_this_one_runs_only_while_its_worker_does() -> None:
    me = this_process("nonce-a")
    assert process_state(me) == DEAD, "no worker of this process runs incarnation nonce-a"
    from agentfold.runtime.identity import running_here

    running_here("nonce-a", True)
    try:
        assert process_state(me) == RUNNING
    finally:
        running_here("nonce-a", False)
    if me.boot and me.pidns:
        assert process_state(ProcessIdentity(me.host, me.boot, me.pidns, 2**22 + 7, 1, "x")) == DEAD
        assert process_state(ProcessIdentity(me.host, me.boot, "pid:[1]", os.getpid(), me.started, "x")) == UNKNOWN
    assert process_state(None) == UNKNOWN


# -- in one process ---------------------------------------------------------------------------------------------


async def until(store: EventStore, check: Any) -> None:
    await wait_until(store, check, TIMEOUT)


async def test_a_second_start_of_a_live_id_is_refused_and_writes_nothing(durable_url: str) -> None:
    runtime = waiting_app(Counter())
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other_store:
        async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="dup-1") as first:
            before = await store.stream_version(worker_stream("dup-1"))
            second = runtime.worker(other_store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="dup-1")
            with pytest.raises(WorkerIdInUse, match="'dup-1' is in use") as refused:
                await second.start()
            assert refused.value.worker_id == "dup-1" and refused.value.incarnation == first.incarnation
            records = [event async for event in store.read_stream(worker_stream("dup-1"))]
            assert {event.data["incarnation"] for event in records} == {first.incarnation}
            assert records[-1].version >= before
            assert first.superseded is None
        # Once the first one stopped, the id is free again: a new incarnation starts at once.
        async with runtime.worker(other_store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="dup-1") as again:
            assert again.incarnation is not None and first.incarnation is not None
            assert again.incarnation > first.incarnation
            started = [event async for event in store.read_stream(worker_stream("dup-1"))][-1]
            assert started.data["started"] is True
            assert started.data["previous"] == {"incarnation": first.incarnation, "state": "stopped"}


async def test_taking_over_a_live_id_fences_the_older_incarnation_out_of_its_runs(durable_url: str) -> None:
    calls: Counter[str] = Counter()
    runtime = waiting_app(calls)
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other_store:
        client = runtime.client(store)
        older = runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="same")
        await older.start()
        await client.start("waiting", 1, workflow_id="r1")
        await until(store, lambda: _state_is(client, "r1", "AwaitingInput"))
        # private: a superseded incarnation is staged by writing from the run it held
        held = older._executions["r1"]
        newer = runtime.worker(other_store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="same", take_over=True)
        await newer.start()
        try:

            async def resumed_by_newer() -> bool:
                history = await load_history(store, "r1")
                return history.owner_incarnation == newer.incarnation

            await until(store, resumed_by_newer)
            superseded = await asyncio.wait_for(older.wait_superseded(), TIMEOUT)
            assert isinstance(superseded, WorkerSuperseded) and superseded.newer == newer.incarnation
            # The older incarnation's next append to the run is refused: the newer one's claim moved it on.
            with pytest.raises(WrongExpectedVersion):
                await held._record([NewEvent("StepStarted", {"seq": 9, "name": "late", "attempt": 1})])
            assert older.running == []
            await client.signal("r1", "go", {"by": "ops"})
            assert await client.result("r1", timeout=TIMEOUT) == {"first": "first-1", "second": "second-1", "by": "ops"}
        finally:
            await older.stop()
            await newer.stop()
        with pytest.raises(WorkerSuperseded):
            await older.start()
        claims = [event async for event in store.read_all(types=["WorkflowClaimed"])]
        assert [(c.data["worker"], c.data["previous"], c.data["previous_state"]) for c in claims] == [
            ("same", "same", "superseded")
        ]
        assert claims[0].data["previous_incarnation"] == older.incarnation
        records = [event async for event in store.read_stream(worker_stream("same"))]
        assert records[-1].type == WORKER_STOPPED and records[-1].data["incarnation"] == newer.incarnation
        assert set(calls.values()) == {1}


async def _state_is(client: Any, workflow_id: str, state: str) -> bool:
    return bool(await client.state(workflow_id) == state)


async def test_a_run_held_by_a_newer_incarnation_is_left_alone(durable_url: str) -> None:
    runtime = waiting_app(Counter())
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other_store:
        client = runtime.client(store)
        older = runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="twice")
        await older.start()
        # private: a paused process is staged by stopping its heartbeat task
        older._heartbeat._task.cancel()  # type: ignore[union-attr]  # it stops heartbeating, as if paused
        async with runtime.worker(other_store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="twice", take_over=True):
            await client.start("waiting", 2, workflow_id="r2")
            await until(store, lambda: _state_is(client, "r2", "AwaitingInput"))
            with pytest.raises(LeaseLost):
                await older._execute("r2")
            assert older.superseded is not None
        await older.stop()


async def test_an_incarnation_with_an_overdue_heartbeat_checks_its_id_before_starting_a_step(durable_url: str) -> None:
    runtime = waiting_app(Counter())
    async with agentfold.connect(durable_url) as store, agentfold.connect(durable_url) as other_store:
        client = runtime.client(store)
        older = runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="overdue")
        await older.start()
        ids = ["o1", "o2"]
        for number, workflow_id in enumerate(ids):
            await client.start("waiting", number, workflow_id=workflow_id)

        async def both_waiting() -> bool:
            return all([await _state_is(client, workflow_id, "AwaitingInput") for workflow_id in ids])

        await until(store, both_waiting)
        # As if paused: it neither heartbeats nor follows the log, and its executions are still there.
        # private: a paused process is staged by stopping its heartbeat and serving tasks
        older._heartbeat._task.cancel()  # type: ignore[union-attr]
        older._serving.cancel()  # type: ignore[union-attr]
        held = dict(older._executions)
        newer = runtime.worker(
            other_store, concurrency=1, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="overdue", take_over=True
        )
        async with newer:

            async def one_resumed() -> bool:
                histories = [await load_history(store, workflow_id) for workflow_id in ids]
                return any(history.owner_incarnation == newer.incarnation for history in histories)

            await until(store, one_resumed)
            # With one slot, the newer incarnation has not claimed the other run: only the check fences it.
            unclaimed = [w for w in ids if (await load_history(store, w)).owner_incarnation == older.incarnation]
            assert len(unclaimed) == 1
            await asyncio.sleep(max(0.0, older._heartbeat.last_success + 2 * HEARTBEAT - time.monotonic()) + 0.05)
            version = await store.stream_version(workflow_stream(unclaimed[0]))
            with pytest.raises(WorkerSuperseded):
                await held[unclaimed[0]]._record([NewEvent("StepStarted", {"seq": 9, "name": "late", "attempt": 1})])
            assert await store.stream_version(workflow_stream(unclaimed[0])) == version, "no intent recorded"
            assert older.superseded is not None and older.superseded.newer == newer.incarnation
        await older.stop()


async def test_heartbeats_of_one_incarnation_at_once_never_look_like_a_newer_one(durable_url: str) -> None:
    """The heartbeat task and the check before an intent may beat together: both land, neither fences the other."""
    runtime = waiting_app(Counter())
    async with agentfold.connect(durable_url) as store:
        async with runtime.worker(store, lease_ttl=TTL, heartbeat=HEARTBEAT, worker_id="busy") as worker:
            # private: the heartbeat object is the one under test
            beating = worker._heartbeat
            before = await store.stream_version(worker_stream("busy"))
            beating.last_success = 0.0  # overdue, as after a pause: `confirm` beats too
            await asyncio.gather(*(beating.beat() for _ in range(4)), *(beating.confirm() for _ in range(4)))
            assert worker.superseded is None and not beating.superseded
            records = [event async for event in store.read_stream(worker_stream("busy"), after_version=before)]
            assert len(records) >= 5 and {event.data["incarnation"] for event in records} == {worker.incarnation}


# -- real processes -------------------------------------------------------------------------------------------


SAID: dict[int, str] = {}
"""What each spawned process wrote to stderr before it said it was ready (all of it, if it exited first)."""


async def spawn(
    url: str,
    tmp_path: Path,
    worker_id: str,
    *extra: str,
    lease_ttl: float = TTL,
    heartbeat: float = HEARTBEAT,
    wrapper: tuple[str, ...] = (),
) -> asyncio.subprocess.Process:
    """An `agentfold worker` process serving the fleet app, once it says it is ready (or has exited)."""
    options = ("--lease-ttl", str(lease_ttl), "--heartbeat", str(heartbeat), "--verbose", *extra)
    command, env = fleet_worker(url, worker_id, tmp_path / "provider.db", tmp_path / "gate", *options)
    process = await asyncio.create_subprocess_exec(
        *wrapper, *command, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert process.stderr is not None
    SAID[process.pid] = ""
    while True:
        raw = await asyncio.wait_for(process.stderr.readline(), LINE_TIMEOUT)
        SAID[process.pid] += raw.decode(errors="replace")
        if not raw or raw.startswith(f"worker {worker_id} ready".encode()):
            return process


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGKILL)
    await process.wait()


async def count(store: EventStore, event_type: str) -> int:
    return sum([len(page) async for page in store.read_all_pages(types=[event_type])])


async def until_count(store: EventStore, event_type: str, wanted: int) -> None:
    async def enough() -> bool:
        return await count(store, event_type) >= wanted

    await until(store, enough)


async def test_a_worker_sigkilled_and_relaunched_under_its_id_resumes_its_runs(sql_url: str, tmp_path: Path) -> None:
    """The lease TTL is a minute: the runs finish long before it ends only because the relaunch resumes them."""
    provider = Provider(tmp_path / "provider.db")
    first = await spawn(sql_url, tmp_path, "steady")
    second: asyncio.subprocess.Process | None = None
    try:
        async with agentfold.connect(sql_url) as store:
            client = fleet.runtime.client(store)
            for number in range(6):
                await client.start("gated", number, workflow_id=f"g{number}")
            await until_count(store, "StepStarted", 6)  # each run is in its held step
            await kill(first)
            (tmp_path / "gate").touch()
            second = await spawn(sql_url, tmp_path, "steady")
            assert second.returncode is None, "a relaunch after a crash is not refused"
            for number in range(6):
                assert await client.result(f"g{number}", timeout=TIMEOUT) == {"number": number, "steps": [0, 1]}
            records = [event async for event in store.read_stream(worker_stream("steady"))]
            starts = [event for event in records if event.data.get("started")]
            assert starts[-1].data["previous"]["state"] == DEAD, "the crashed process was seen to be gone"
            claims = [event async for event in store.read_all(types=["WorkflowClaimed"])]
            assert len(claims) == 6
            assert {(c.data["worker"], c.data["previous"], c.data["previous_state"]) for c in claims} == {
                ("steady", "steady", "superseded")
            }
            assert {c.data["incarnation"] for c in claims} == {starts[-1].data["incarnation"]}
            # Every effect ran once: the held step had applied it, and the relaunch reconciled instead of repeating.
            assert {calls for _, calls in provider.calls().values()} == {1}
            assert len(provider.calls()) == 12
    finally:
        await kill(first)
        if second is not None:
            await kill(second)
        provider.close()


async def test_a_second_worker_with_a_live_id_is_refused(sql_url: str, tmp_path: Path) -> None:
    provider = Provider(tmp_path / "provider.db")
    first = await spawn(sql_url, tmp_path, "dup-1")
    try:
        second = await spawn(sql_url, tmp_path, "dup-1")
        assert await asyncio.wait_for(second.wait(), LINE_TIMEOUT) == 1
        assert second.stderr is not None
        message = SAID[second.pid] + (await second.stderr.read()).decode()
        assert "worker id 'dup-1' is in use" in message and "--take-over" in message
        async with agentfold.connect(sql_url) as store:
            records = [event async for event in store.read_stream(worker_stream("dup-1"))]
            assert len({event.data["incarnation"] for event in records}) == 1, "the refused start wrote nothing"
            client = fleet.runtime.client(store)
            await client.start("fleet", 1, workflow_id="still-served")
            assert await client.result("still-served", timeout=TIMEOUT) == {"number": 1, "steps": list(range(6))}
        assert first.returncode is None
    finally:
        await kill(first)
        provider.close()


async def stop_between_commits(process: asyncio.subprocess.Process, sql_url: str) -> None:
    """SIGSTOP `process` at a moment it holds no write lock. On SQLite a process stopped inside a commit (a
    heartbeat, say) keeps the file's write lock, so every writer waits until it runs again: a property of SQLite's
    locking (docs/workers.md), not what the test is about. PostgreSQL finishes a statement whose client stops."""
    while True:
        process.send_signal(signal.SIGSTOP)
        if not sql_url.startswith("sqlite"):
            return
        if await asyncio.to_thread(_write_lock_free, sql_url.removeprefix("sqlite:///")):
            return
        process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.05)


def _write_lock_free(path: str) -> bool:
    connection = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


async def test_a_paused_worker_taken_over_is_fenced_out_and_stops_when_resumed(sql_url: str, tmp_path: Path) -> None:
    provider = Provider(tmp_path / "provider.db")
    paused = await spawn(sql_url, tmp_path, "fenced")
    taker: asyncio.subprocess.Process | None = None
    try:
        async with agentfold.connect(sql_url) as store:
            client = fleet.runtime.client(store)
            for number in range(3):
                await client.start("gated", number, workflow_id=f"p{number}")

            async def all_applied() -> bool:
                return len(provider.calls()) == 3  # each held step applied its effect, none recorded its outcome

            await until(store, all_applied)
            old_incarnation = [event async for event in store.read_stream(worker_stream("fenced"))][-1].data[
                "incarnation"
            ]
            await stop_between_commits(paused, sql_url)
            taker = await spawn(sql_url, tmp_path, "fenced", "--take-over")
            assert taker.returncode is None
            for number in range(3):
                assert await client.result(f"p{number}", timeout=TIMEOUT) == {"number": number, "steps": [0, 1]}
            (tmp_path / "gate").touch()  # the paused worker's held steps return as soon as it runs again
            paused.send_signal(signal.SIGCONT)
            assert await asyncio.wait_for(paused.wait(), TIMEOUT) == 3
            assert paused.stderr is not None
            said = (await paused.stderr.read()).decode()
            assert f"incarnation {old_incarnation} was superseded" in said
            assert taker.returncode is None, "the newer incarnation goes on serving"

            records = [event async for event in store.read_stream(worker_stream("fenced"))]
            newer = [event for event in records if event.data.get("started")][-1]
            assert newer.data["previous"] == {"incarnation": old_incarnation, "state": "taken_over"}
            after_start = [event for event in records if event.version > newer.version]
            assert {event.data["incarnation"] for event in after_start} <= {newer.data["incarnation"]}
            assert all(event.type in (WORKER_HEARTBEAT, WORKER_STOPPED) for event in records)
            for number in range(3):
                events = [event async for event in store.read_stream(workflow_stream(f"p{number}"))]
                claim = next(event for event in events if event.type == "WorkflowClaimed")
                assert claim.data["previous_incarnation"] == old_incarnation
                assert all(event.metadata.get("incarnation") != old_incarnation for event in events[claim.version :])
                outcomes = Counter(
                    event.data["seq"] for event in events if event.type in ("StepCompleted", "StepReconciled")
                )
                assert all(times == 1 for times in outcomes.values()), f"one outcome per step: {events}"
            assert {calls for _, calls in provider.calls().values()} == {1}, "no effect ran twice"
            assert len(provider.calls()) == 6
    finally:
        await kill(paused)
        if taker is not None:
            await kill(taker)
        provider.close()


async def test_the_bench_measures_a_relaunch_under_the_same_id(sql_url: str) -> None:
    """The relaunch figure of `agentfold bench` runs (its values are measurements, not asserted)."""
    from agentfold.bench.workflow_bench import RELAUNCH_RUNS, measure_relaunch

    figures = await asyncio.wait_for(measure_relaunch(sql_url), TIMEOUT)
    assert set(figures) == {
        "relaunch_to_first_step_ms",
        "relaunch_incarnation_to_first_step_ms",
        f"relaunch_to_{RELAUNCH_RUNS}_runs_done_ms",
    }
    assert figures["relaunch_to_first_step_ms"] <= figures[f"relaunch_to_{RELAUNCH_RUNS}_runs_done_ms"]
    async with agentfold.connect(sql_url) as store:
        claims = [event async for event in store.read_all(types=["WorkflowClaimed"])]
        assert {(c.data["previous"], c.data["previous_state"]) for c in claims} == {("relaunch", "superseded")}


OTHER_NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL")
"""Runs a worker in a process namespace of its own, as a container does: its pid means nothing outside."""
SLOW_HEARTBEAT = 2.0  # a start watches for two intervals: a busy machine delays a heartbeat by less than that


async def test_a_start_beside_a_worker_it_cannot_see_watches_its_heartbeats(sql_url: str, tmp_path: Path) -> None:
    """A worker in another container still heartbeating keeps its id; once it is gone, the id is taken at once."""
    require_tool(lambda: shutil.which("unshare") is not None and os.geteuid() == 0, "unshare, run as root")
    hidden = await spawn(sql_url, tmp_path, "boxed", heartbeat=SLOW_HEARTBEAT, wrapper=OTHER_NAMESPACE)
    later: asyncio.subprocess.Process | None = None
    try:
        assert hidden.returncode is None, SAID[hidden.pid]
        refused = await spawn(sql_url, tmp_path, "boxed", heartbeat=SLOW_HEARTBEAT)
        assert await asyncio.wait_for(refused.wait(), LINE_TIMEOUT) == 1
        assert refused.stderr is not None
        assert "worker id 'boxed' is in use" in SAID[refused.pid] + (await refused.stderr.read()).decode()
        await kill(hidden)  # a crash: its last heartbeat is fresh, and its process cannot be looked up from here
        later = await spawn(sql_url, tmp_path, "boxed", heartbeat=SLOW_HEARTBEAT)
        assert later.returncode is None, SAID[later.pid]
        async with agentfold.connect(sql_url) as store:
            records = [event async for event in store.read_stream(worker_stream("boxed"))]
            starts = [event for event in records if event.data.get("started")]
            assert len(starts) == 2, "the refused start wrote nothing"
            assert starts[-1].data["previous"] == {"incarnation": starts[0].data["incarnation"], "state": "silent"}
    finally:
        await kill(hidden)
        if later is not None:
            await kill(later)
