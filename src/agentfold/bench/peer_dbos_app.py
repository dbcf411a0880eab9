"""The DBOS Transact worker the peer benchmark runs: the same workflows as agentfold's side, as DBOS workflows.

Run as `python -m agentfold.bench.peer_dbos_app SYSTEM_DATABASE_URL SCHEMA EXECUTOR_ID`: it launches DBOS
(which recovers this executor's unfinished workflows), serves the `bench` queue with `CONCURRENCY` workflows at a
time, prints `ready` and serves until killed. Clients enqueue `ten_steps` and `held_ten_steps` with `DBOSClient`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Final

from dbos import DBOS, DBOSConfig

STEPS: Final = 10
HELD_STEP: Final = 5
CONCURRENCY: Final = 64
QUEUE: Final = "bench"
QUEUE_POLL_SECONDS: Final = 0.05
"""How often each worker looks for queued workflows (DBOS's default is 1 s, which would cap a worker at
`CONCURRENCY` workflows a second)."""
HOLD_POLL_SECONDS: Final = 0.01


@DBOS.step()
def work(index: int) -> dict[str, Any]:
    """A step with no effect of its own: the figure is the framework's cost per step."""
    return {"step": index}


@DBOS.step()
def held_work(index: int, number: int, hold_dir: str) -> dict[str, Any]:
    """Step `HELD_STEP` says it was reached, then waits while the hold file exists (so the worker can be killed
    with every run in the middle)."""
    if index == HELD_STEP:
        open(os.path.join(hold_dir, f"reached-{number}"), "w").close()
        while os.path.exists(os.path.join(hold_dir, "hold")):
            time.sleep(HOLD_POLL_SECONDS)
    return {"step": index}


@DBOS.workflow()
def ten_steps(number: int) -> int:
    for index in range(STEPS):
        work(index)
    return number


@DBOS.workflow()
def held_ten_steps(number: int, hold_dir: str) -> int:
    for index in range(STEPS):
        held_work(index, number, hold_dir)
    return number


def main(system_database_url: str, schema: str, executor_id: str) -> None:
    config: DBOSConfig = {
        "name": "agentfold-bench-peer",
        "system_database_url": system_database_url,
        "dbos_system_schema": schema,
        "executor_id": executor_id,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(QUEUE, worker_concurrency=CONCURRENCY, polling_interval_sec=QUEUE_POLL_SECONDS)
    print(f"worker {executor_id} ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
