"""Three `agentfold worker` processes share 200 runs; one is SIGKILLed mid-run, one is stopped with SIGTERM.

Checked against the fake provider and the recorded events, never against wall-clock timers in the test: every run
completes, no effect ran twice, and the dead worker's runs were claimed within its lease TTL plus one heartbeat of
its last recorded heartbeat.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import agentfold
from agentfold.runtime import workflow_stream
from agentfold.runtime.history import load_history
from agentfold.runtime.leases import WORKER_HEARTBEAT, WORKER_STOPPED, stalled_runs, worker_stream
from agentfold.store import EventStore
from tests.worker_process import fleet_worker
from tests.workflow_apps import fleet
from tests.workflow_apps.fleet import Provider

ROOT = Path(__file__).resolve().parent.parent
LEASE_TTL = 2.0
HEARTBEAT = 0.5
RUNS = 200
GATED = 3
LINE_TIMEOUT = 30.0
RESULT_TIMEOUT = 180.0  # a guard against a hang, generous for a loaded 2-core machine


class WorkerProcess:
    """One `agentfold worker` process and its worker id."""

    def __init__(self, process: asyncio.subprocess.Process, worker_id: str) -> None:
        self.process = process
        self.worker_id = worker_id

    @classmethod
    async def spawn(
        cls, url: str, provider: Path, name: str, concurrency: int = 100, gate: Path | None = None
    ) -> WorkerProcess:
        options = ("--concurrency", str(concurrency), "--lease-ttl", str(LEASE_TTL), "--heartbeat", str(HEARTBEAT))
        command, env = fleet_worker(url, name, provider, gate, *options)
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        assert process.stderr is not None
        while True:
            raw = await asyncio.wait_for(process.stderr.readline(), LINE_TIMEOUT)
            if not raw:
                raise AssertionError(f"worker {name} exited before it was ready (code {await process.wait()})")
            if raw.startswith(f"worker {name} ready".encode()):
                return cls(process, name)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), LINE_TIMEOUT)


async def completed_runs(store: EventStore) -> int:
    return sum([len(page) async for page in store.read_all_pages(types=["WorkflowCompleted"])])


async def holder_of(store: EventStore, workflow_id: str, worker_ids: list[str]) -> str:
    """The worker that holds `workflow_id` once one of `worker_ids` has started its first step."""
    async with asyncio.timeout(RESULT_TIMEOUT):
        while True:
            head = await store.head_position()
            history = await load_history(store, workflow_id)
            if history.owner in worker_ids and any(record.in_doubt for record in history.commands.values()):
                return history.owner
            await store.wait_for_append(head, 1.0)


async def until_completed(store: EventStore, count: int) -> None:
    async with asyncio.timeout(RESULT_TIMEOUT):
        while True:
            head = await store.head_position()
            if await completed_runs(store) >= count:
                return
            await store.wait_for_append(head, 1.0)


async def test_three_workers_200_runs_one_sigkilled_all_complete_once(durable_url: str, tmp_path: Path) -> None:
    provider_path = tmp_path / "provider.db"
    provider = Provider(provider_path)
    names = ["w0", "w1", "w2"]
    gate = tmp_path / "gate"
    workers = [await WorkerProcess.spawn(durable_url, provider_path, name, gate=gate) for name in names]
    try:
        async with agentfold.connect(durable_url) as store:
            client = fleet.runtime.client(store)
            # Three runs hold their first step until the gate opens: whichever worker holds one is killed holding
            # it, however fast the other runs go.
            held = [f"gated-{number}" for number in range(GATED)]
            for number, workflow_id in enumerate(held):
                await client.start("gated", number, workflow_id=workflow_id)
            for number in range(RUNS):
                await client.start("fleet", number, workflow_id=f"run-{number}")
            holder = await holder_of(store, held[0], names)
            await until_completed(store, 20)
            victim = workers[names.index(holder)]
            survivors = {name for name in names if name != holder}
            await victim.kill()
            gate.touch()
            results = [await client.result(f"run-{number}", timeout=RESULT_TIMEOUT) for number in range(RUNS)]
            assert results == [{"number": n, "steps": list(range(fleet.STEPS))} for n in range(RUNS)]
            gated_results = [await client.result(workflow_id, timeout=RESULT_TIMEOUT) for workflow_id in held]
            assert gated_results == [{"number": n, "steps": [0, 1]} for n in range(GATED)]

            calls = provider.calls()
            assert len(calls) == RUNS * fleet.STEPS + GATED * 2
            assert {count for _, count in calls.values()} == {1}, f"an effect ran twice {durable_url} {provider_path}"

            # Who ran what: every run was held by the workers, the victim's unfinished runs were taken over.
            claims = [event async for event in store.read_all(types=["WorkflowClaimed"])]
            taken = [event for event in claims if event.data["previous"] == victim.worker_id]
            assert taken, "the killed worker held runs in flight; they must have been taken over"
            assert {event.data["worker"] for event in taken} <= survivors
            assert {event.data["previous_state"] for event in taken} == {"expired"}
            heartbeats = [event async for event in store.read_stream(worker_stream(victim.worker_id))]
            assert all(event.type == WORKER_HEARTBEAT for event in heartbeats), "a SIGKILL records no stop"
            last_beat = heartbeats[-1].recorded_at_us
            waited = sorted((claim.recorded_at_us - last_beat) / 1e6 for claim in taken)
            assert LEASE_TTL <= waited[0], f"a run was claimed while the lease was fresh: {waited}"
            # Each of the victim's runs was taken over once, by one survivor; how soon is measured by the benchmark.
            assert len({claim.stream_id for claim in taken}) == len(taken), "a run was taken over twice"
            for claim in taken:
                events = [event async for event in store.read_stream(claim.stream_id)]
                after = [event for event in events if event.version > claim.version]
                assert after, "the new holder finished the run"
                assert all(event.metadata.get("worker") in (None, claim.data["worker"]) for event in after)
            every_run = {f"run-{n}" for n in range(RUNS)}
            assert {workflow_stream(n)[len("workflow-") :] for n in every_run} == every_run
            assert await stalled_runs(store) == []
    finally:
        for worker in workers:
            await worker.kill()


async def test_sigterm_hands_held_runs_to_the_others_at_once(durable_url: str, tmp_path: Path) -> None:
    provider_path = tmp_path / "provider.db"
    provider = Provider(provider_path)
    leaving = await WorkerProcess.spawn(durable_url, provider_path, "leaving")
    staying: WorkerProcess | None = None
    try:
        async with agentfold.connect(durable_url) as store:
            client = fleet.runtime.client(store)
            for number in range(10):
                await client.start("patient", number, workflow_id=f"patient-{number}")
            async with asyncio.timeout(RESULT_TIMEOUT):
                while sum([len(page) async for page in store.read_all_pages(types=["WaitStarted"])]) < 10:
                    await store.wait_for_append(await store.head_position(), 1.0)
            staying = await WorkerProcess.spawn(durable_url, provider_path, "staying")
            assert await leaving.terminate() == 0
            stopped = [event async for event in store.read_stream(worker_stream("leaving"))][-1]
            assert stopped.type == WORKER_STOPPED
            for number in range(10):
                await client.signal(f"patient-{number}", "go", {"by": "ops"})
            for number in range(10):
                result = await client.result(f"patient-{number}", timeout=RESULT_TIMEOUT)
                assert result == {"number": number, "first": 0, "by": "ops"}
            claims = [event async for event in store.read_all(types=["WorkflowClaimed"])]
            assert len(claims) == 10
            assert {
                (event.data["worker"], event.data["previous"], event.data["previous_state"]) for event in claims
            } == {("staying", "leaving", "stopped")}
            # Handed over, not expired: each claim is recorded with the first append after the stop, without
            # waiting out the lease.
            assert all(event.recorded_at_us > stopped.recorded_at_us for event in claims)
            assert {count for _, count in provider.calls().values()} == {1}
    finally:
        await leaving.kill()
        if staying is not None:
            await staying.kill()


def test_the_worker_command_names_a_bad_app() -> None:
    import subprocess

    def run(app: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "agentfold.cli", "worker", app, "--store", "memory://"]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=LINE_TIMEOUT, check=False)

    missing = run("tests.workflow_apps.nowhere:runtime")
    assert missing.returncode == 2
    assert "cannot import 'tests.workflow_apps.nowhere'" in missing.stderr
    wrong = run("tests.workflow_apps.fleet:STEPS")
    assert wrong.returncode == 2
    assert "is int, not an agentfold Runtime" in wrong.stderr
    malformed = run("tests.workflow_apps.fleet")
    assert "package.module:attribute" in malformed.stderr
