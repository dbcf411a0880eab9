"""Worker processes the crash tests start, read and SIGKILL: `python -m tests.workflow_apps.<app> ...`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def spawn_app(module: str, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """`python -m module args...` from the repository root, with pipes for its lines."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


async def expect_line(process: asyncio.subprocess.Process, prefix: str, timeout: float) -> str:
    """The first line the process prints that starts with `prefix`; its stderr if it exits first."""
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), timeout)
        if not raw:
            assert process.stderr is not None
            errors = (await process.stderr.read()).decode(errors="replace")
            raise AssertionError(f"worker exited before printing {prefix!r}:\n{errors}")
        line = raw.decode().strip()
        if line.startswith(prefix):
            return line


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL, as a crash would: nothing in the process runs after it."""
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


def fleet_worker(
    url: str, worker_id: str, provider: Path, gate: Path | None, *options: str
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of an `agentfold worker` serving `tests.workflow_apps.fleet` (its effects kept in
    the `provider` database, its gated steps held until `gate` exists)."""
    command = [
        sys.executable,
        "-m",
        "agentfold.cli",
        "worker",
        "tests.workflow_apps.fleet:runtime",
        "--store",
        url,
        "--worker-id",
        worker_id,
        *options,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_PROVIDER": str(provider)}
    if gate is not None:
        env["FLEET_GATE"] = str(gate)
    return command, env
