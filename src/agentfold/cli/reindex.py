"""`agentfold reindex`: fold the read models kept beside the log from the log again.

The log is the truth; the runs index (what `workflows`, `stats`, `agentfold serve` and the HTTP API page through)
and the open runs (what a store's first worker starts from, kept with each append where the backend has them) are
derived from it and can always be made again. This is the repair for a read model someone edited or damaged by
hand, or left behind by an agentfold that did not keep it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agentfold.cli import main
from agentfold.cli.common import json_option, output_console, print_json, run_with_store, store_option
from agentfold.runs_index import RunsIndex
from agentfold.store import EventStore


@dataclass(frozen=True)
class Reindexed:
    runs: int
    durable_index: bool
    open_runs: int | None
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "runs_index": {"runs": self.runs, "kept_in_store": self.durable_index},
            "open_runs": self.open_runs,
            "seconds": round(self.seconds, 3),
        }


@main.command()
@store_option
@json_option
def reindex(store_url: str, as_json: bool) -> None:
    """Rebuild the runs index and the open runs from the log (the log itself is not changed).

    The runs index and the open runs (SQLite and PostgreSQL stores keep both with each append, Redis the open
    runs) are folded again and replaced, each in one step no append interleaves with. Workers may keep running
    meanwhile. On a Redis store the runs index is kept by the processes that read it, with the position it is as
    of: it is dropped and folded again, and readers that loaded it before load the new rows at their next catch-up;
    its category indexes (the positions of agentfold's own streams, `$worker-`...) are dropped and built again from
    the log. On a memory store each reader folds the log into its own memory: nothing is kept to rebuild."""

    async def rebuild(store: EventStore) -> Reindexed:
        started = time.perf_counter()
        async with RunsIndex(store, store_url) as index:
            runs = await index.rebuild()
            durable = index.kept_in_store
        open_runs = await store.rebuild_open_runs()
        return Reindexed(runs, durable, open_runs, time.perf_counter() - started)

    done = run_with_store(store_url, rebuild)
    if as_json:
        print_json(done.to_json())
        return
    console = output_console()
    if done.durable_index:
        console.print(f"runs index: {done.runs:,} runs")
    else:
        console.print("runs index: not kept in this store (each reader folds the log into its own memory)")
    if done.open_runs is None:
        console.print("open runs: not kept by this backend (a first worker reads the log)")
    else:
        console.print(f"open runs: {done.open_runs:,}")
    console.print(f"took {done.seconds:.2f} s")
