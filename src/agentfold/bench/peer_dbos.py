"""agentfold's runtime beside DBOS Transact: a 10-step durable workflow, and a crashed worker's runs finished.

Both sides run the same shape of work in real worker processes on the same store kind, started by a client in this
process: agentfold workers (`agentfold worker`) beside DBOS workers (`agentfold.bench.peer_dbos_app`, serving a
DBOS queue), each taking 64 runs at a time.

- Throughput: `runs` workflows of 10 steps that do nothing, started in batches of 50, with 1 and with 3 workers;
  runs/s and steps/s from the first start to the last completion.
- Crash to finished: `crash_runs` workflows whose step 5 waits while a hold file exists; once every run is
  waiting there, the worker is SIGKILLed, the hold lifted and the worker relaunched under the same identity
  (agentfold: the same `--worker-id`; DBOS: the same executor id, whose unfinished workflows it recovers at
  launch). The figure is the time from the relaunch (process start included) to the last run's completion.

DBOS keeps its state in a system database: on SQLite a file of its own, on PostgreSQL a schema of its own in the
database `agentfold_bench_dbos` (created when missing), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import agentfold
from agentfold.bench import Progress, scratch_store
from agentfold.bench.comparison import Comparison, PeerSizes, version
from agentfold.bench.workflow_bench import (
    READY_TIMEOUT,
    STEPS,
    measure_throughput,
    spawn_worker,
    stop_workers,
    wait_until,
)
from agentfold.runtime import NO_RETRY, Runtime, WorkflowContext

PEER: Final = "dbos"
DBOS_DATABASE: Final = "agentfold_bench_dbos"
HELD_STEP: Final = 5
BATCH: Final = 50
POLL_SECONDS: Final = 0.05
WAIT_TIMEOUT: Final = 600.0

runtime = Runtime(default_retry=NO_RETRY)
"""The agentfold side of the crash figure (`agentfold worker agentfold.bench.peer_dbos:runtime`)."""


async def held_work(index: int, number: int, hold_dir: str) -> dict[str, Any]:
    """Step `HELD_STEP` says it was reached, then waits while the hold file exists (as the DBOS side's does)."""
    if index == HELD_STEP:
        _mark_reached(hold_dir, number)
        while _held(hold_dir):  # noqa: ASYNC110 - a file is what both sides' workers can watch
            await asyncio.sleep(0.01)
    return {"step": index}


def _mark_reached(hold_dir: str, number: int) -> None:
    Path(hold_dir, f"reached-{number}").touch()


def _held(hold_dir: str) -> bool:
    return os.path.exists(os.path.join(hold_dir, "hold"))


def _reached_count(hold: Path) -> int:
    return len(list(hold.glob("reached-*")))


@runtime.workflow(name="bench_held_ten_steps")
async def held_ten_steps(ctx: WorkflowContext, number: int, hold_dir: str) -> int:
    for index in range(STEPS):
        await ctx.step(f"step-{index}", held_work, index, number, hold_dir)
    return number


async def _reached(hold: Path, count: int) -> None:
    async with asyncio.timeout(WAIT_TIMEOUT):
        while _reached_count(hold) < count:  # noqa: ASYNC110 - the workers say so in files
            await asyncio.sleep(0.01)


async def _agentfold_crash(url: str, runs: int, hold: Path) -> float:
    """Seconds from relaunching a SIGKILLed agentfold worker (same `--worker-id`) to its runs' completion."""
    app = "agentfold.bench.peer_dbos:runtime"
    name = f"crash-{uuid.uuid4().hex[:8]}"
    (hold / "hold").touch()
    processes = [await spawn_worker(url, name, app)]
    try:
        async with agentfold.connect(url) as store:
            client = runtime.client(store)
            head = await store.head_position()
            for number in range(runs):
                await client.start(held_ten_steps, number, str(hold), workflow_id=f"{name}-{number}")
            await _reached(hold, runs)
            processes[0].send_signal(signal.SIGKILL)
            await processes[0].wait()
            (hold / "hold").unlink()
            started = time.perf_counter()
            processes.append(await spawn_worker(url, name, app))
            await wait_until(store, "WorkflowCompleted", head, runs)
            return time.perf_counter() - started
    finally:
        await stop_workers(processes)


class _DBOSSide:
    """DBOS worker processes and a `DBOSClient` on one system database (a SQLite file or a PostgreSQL schema)."""

    def __init__(self, system_database_url: str, schema: str, logs: Path) -> None:
        from dbos import DBOSClient

        self.url = system_database_url
        self.schema = schema
        self.logs = logs
        self.processes: list[asyncio.subprocess.Process] = []
        self._client: DBOSClient | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from dbos import DBOSClient

            self._client = DBOSClient(system_database_url=self.url, dbos_system_schema=self.schema)
        return self._client

    async def spawn(self, executor_id: str) -> asyncio.subprocess.Process:
        """A DBOS worker process, once it has launched (and recovered its executor's unfinished workflows)."""
        log = self.logs / f"dbos-{executor_id}.log"
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agentfold.bench.peer_dbos_app",
                self.url,
                self.schema,
                executor_id,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        self.processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        if not line.startswith(f"worker {executor_id} ready".encode()):
            raise RuntimeError(f"DBOS worker {executor_id} exited before it was ready: {log.read_text()[-2000:]}")
        return process

    async def enqueue(self, workflow: str, prefix: str, numbers: range, *args: Any) -> None:
        from dbos import EnqueueOptions

        for first in range(numbers.start, numbers.stop, BATCH):
            batch = range(first, min(numbers.stop, first + BATCH))
            await asyncio.gather(
                *(
                    self.client.enqueue_async(
                        EnqueueOptions(workflow_name=workflow, queue_name="bench", workflow_id=f"{prefix}{number}"),
                        number,
                        *args,
                    )
                    for number in batch
                )
            )

    async def until_done(self, prefix: str, count: int) -> None:
        """Return once `count` workflows whose ids start with `prefix` succeeded; raise if one failed."""

        def finished() -> tuple[int, int]:
            rows = self.client.list_workflows(
                status=["SUCCESS", "ERROR"], workflow_id_prefix=prefix, load_input=False, load_output=False
            )
            return sum(row.status == "SUCCESS" for row in rows), sum(row.status == "ERROR" for row in rows)

        async with asyncio.timeout(WAIT_TIMEOUT):
            while True:
                succeeded, failed = await asyncio.to_thread(finished)
                if failed:
                    raise RuntimeError(f"{failed} DBOS workflows starting {prefix!r} failed")
                if succeeded >= count:
                    return
                await asyncio.sleep(POLL_SECONDS)

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()
        self.processes.clear()
        if self._client is not None:
            self._client.destroy()
            self._client = None


async def _dbos_throughput(side: _DBOSSide, workers: int, runs: int) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:8]
    try:
        for index in range(workers):
            await side.spawn(f"{tag}-w{index}")
        started = time.perf_counter()
        await side.enqueue("ten_steps", f"{tag}-", range(runs))
        await side.until_done(f"{tag}-", runs)
        elapsed = time.perf_counter() - started
    finally:
        await side.close()
    return runs / elapsed, runs * STEPS / elapsed


async def _dbos_crash(side: _DBOSSide, runs: int, hold: Path) -> float:
    """Seconds from relaunching a SIGKILLed DBOS worker (same executor id) to its workflows' completion."""
    name = f"crash-{uuid.uuid4().hex[:8]}"
    (hold / "hold").touch()
    try:
        victim = await side.spawn(name)
        await side.enqueue("held_ten_steps", f"{name}-", range(runs), str(hold))
        await _reached(hold, runs)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        (hold / "hold").unlink()
        started = time.perf_counter()
        await side.spawn(name)
        await side.until_done(f"{name}-", runs)
        return time.perf_counter() - started
    finally:
        await side.close()


@asynccontextmanager
async def _dbos_side(backend: str, pg_url: str, workdir: Path) -> AsyncIterator[_DBOSSide]:
    """A fresh DBOS system database (SQLite file, or PostgreSQL schema in `DBOS_DATABASE`), removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    logs = workdir / f"dbos-{tag}"
    logs.mkdir(parents=True)
    if backend == "sqlite":
        side = _DBOSSide(f"sqlite:///{logs / 'system.sqlite'}", "dbos", logs)
        try:
            yield side
        finally:
            await side.close()
            _remove_tree(logs)
        return
    import psycopg

    system_url = _with_database(pg_url, DBOS_DATABASE)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as connection:
        cursor = await connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBOS_DATABASE,))
        if await cursor.fetchone() is None:
            with suppress(psycopg.errors.DuplicateDatabase):  # another run created it meanwhile
                await connection.execute(f'CREATE DATABASE "{DBOS_DATABASE}"')
    schema = f"bench_dbos_{tag}"
    side = _DBOSSide(system_url, schema, logs)
    try:
        yield side
    finally:
        await side.close()
        _remove_tree(logs)
        async with await psycopg.AsyncConnection.connect(system_url, autocommit=True) as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), key=lambda item: len(item.parts), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


async def measure_dbos(
    backends: list[str], pg_url: str, workdir: Path, sizes: PeerSizes, progress: Progress
) -> list[Comparison]:
    """Workflows/s and steps/s with 1 and 3 workers, and crash to finished, agentfold then DBOS, on each backend."""
    peer_version = version(PEER)
    comparisons: list[Comparison] = []

    def add(backend: str, figure: str, unit: str, ours: float, theirs: float, better: bool, note: str = "") -> None:
        comparisons.append(Comparison(PEER, peer_version, backend, figure, unit, ours, theirs, better, note))

    for backend in backends:
        for workers in (1, 3):
            label = f"{workers}_worker{'s' if workers > 1 else ''}"
            progress(f"{backend}: {sizes.workflow_runs} 10-step workflows, {workers} worker(s), agentfold then DBOS")
            async with scratch_store(backend, pg_url) as (url, _):
                ours = await measure_throughput(url, workers, sizes.workflow_runs, f"peer{workers}")
            async with _dbos_side(backend, pg_url, workdir) as side:
                theirs = await _dbos_throughput(side, workers, sizes.workflow_runs)
            add(backend, f"workflows_{label}_per_s", "runs/s", ours[0], theirs[0], True)
            add(backend, f"workflow_steps_{label}_per_s", "steps/s", ours[1], theirs[1], True)
        progress(f"{backend}: {sizes.crash_runs} runs, worker SIGKILLed at step {HELD_STEP} and relaunched")
        hold = workdir / f"hold-{uuid.uuid4().hex[:8]}"
        hold.mkdir()
        try:
            async with scratch_store(backend, pg_url) as (url, _):
                ours_s = await _agentfold_crash(url, sizes.crash_runs, hold)
            for marker in hold.glob("reached-*"):
                marker.unlink()
            async with _dbos_side(backend, pg_url, workdir) as side:
                theirs_s = await _dbos_crash(side, sizes.crash_runs, hold)
        finally:
            _remove_tree(hold)
        note = f"{sizes.crash_runs} runs held at step {HELD_STEP} of {STEPS}; relaunch includes process start"
        add(backend, "crash_to_finished_ms", "ms", ours_s * 1000, theirs_s * 1000, False, note)
    return comparisons
