"""One agent's worker process: ``python -m agentfold.demo.worker --store URL --provider URL --agent payment``.

It runs the runs of one agent's workflow until SIGTERM, SIGINT, or its stdin closes (the demo that started it is
gone), and prints ``READY <pid>`` once it serves. It holds runs under a short lease, so a fresh worker takes over
the runs of a killed one within about `LEASE_TTL_SECONDS`.

``--pause-after-charge WORKFLOW_ID`` makes it stop dead at one precise point: the provider has charged that payment
run and answered, and the step's outcome (`StepCompleted`) is about to be appended. It prints
``PAUSED <workflow id> <idempotency key>`` and blocks the whole process there, so the demo can SIGKILL it with the
charge made and not recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Sequence

import agentfold
from agentfold.demo.pipeline import AGENTS, CHARGE_STEP, OrderPipeline
from agentfold.demo.provider import ProviderClient
from agentfold.events import AppendResult, NewEvent
from agentfold.runtime import RecordHook, history, idempotency_key

READY = "READY"
PAUSED = "PAUSED"
LEASE_TTL_SECONDS = 2.0
"""Short, so the fresh payment worker takes the killed worker's runs over within about two seconds."""

_parent_gone = threading.Event()


class PauseAfterCharge(RecordHook):
    """Blocks the process just before the outcome of one run's charge step is appended."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id

    def before_append(self, workflow_id: str, events: Sequence[NewEvent]) -> None:
        if workflow_id != self.workflow_id:
            return
        for event in events:
            if event.type == history.STEP_COMPLETED and event.data.get("name") == CHARGE_STEP:
                key = idempotency_key(workflow_id, int(event.data["seq"]), CHARGE_STEP)
                print(f"{PAUSED} {workflow_id} {key}", flush=True)
                # Blocks the event loop (every run of this process) until the parent kills the process, or until
                # stdin closes because the parent is gone; either way nothing more is recorded.
                _parent_gone.wait()
                os._exit(1)

    def after_append(self, workflow_id: str, events: Sequence[NewEvent], result: AppendResult) -> None:
        return None


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A worker must not outlive the demo that started it: its stdin is the demo's pipe."""

    def watch() -> None:
        # Raw reads of the descriptor: a daemon thread blocked in a buffered read would hold the buffer's lock
        # while the interpreter shuts down, which aborts the process.
        chunk = b"open"
        while chunk:  # b"" at end of file: the demo closed the pipe or died
            chunk = os.read(sys.stdin.fileno(), 4096)
        _parent_gone.set()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


async def serve(store_url: str, provider_url: str, agent: str, pause_after_charge: str | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    _stop_when_stdin_closes(loop, stop)
    hooks = [] if pause_after_charge is None else [PauseAfterCharge(pause_after_charge)]
    async with agentfold.connect(store_url) as store:
        pipeline = OrderPipeline(store, ProviderClient(provider_url))
        runtime = pipeline.agent_runtime(agent, hooks=hooks)
        async with runtime.worker(store, lease_ttl=LEASE_TTL_SECONDS):
            print(f"{READY} {os.getpid()}", flush=True)
            await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentfold.demo.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="the store URL")
    parser.add_argument("--provider", required=True, help="the payment provider's base URL")
    parser.add_argument("--agent", required=True, choices=AGENTS, help="whose runs this worker executes")
    parser.add_argument("--pause-after-charge", metavar="WORKFLOW_ID", help="freeze after this run's charge")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.store, args.provider, args.agent, args.pause_after_charge))


if __name__ == "__main__":
    main()
