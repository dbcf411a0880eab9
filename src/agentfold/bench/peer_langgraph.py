"""agentfold's LangGraph saver beside LangGraph's own savers: the figures of the storage benchmark
(`agentfold.bench.langgraph_storage`), each set beside the official saver's of the same backend."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from agentfold.bench import Progress
from agentfold.bench.comparison import Comparison, PeerSizes, version
from agentfold.bench.langgraph_storage import EARLY_STEP, run_langgraph_storage

PACKAGE: Final = {"sqlite": "langgraph-checkpoint-sqlite", "postgres": "langgraph-checkpoint-postgres"}
SAVER: Final = {"sqlite": "AsyncSqliteSaver", "postgres": "AsyncPostgresSaver"}


async def measure_langgraph(
    backends: list[str], pg_url: str, workdir: Path, sizes: PeerSizes, progress: Progress
) -> list[Comparison]:
    """Bytes stored after a thread of `sizes.langgraph_steps` steps (all of them, what the thread added to an empty
    store, and what one more such thread added to the store in use), and `aput`/`aget_tuple` latency at step 10 and
    at that step, for `AgentfoldSaver` and the official saver on each backend."""
    steps = sizes.langgraph_steps
    results = await run_langgraph_storage(workdir / "langgraph", pg_url, steps, progress)
    savers = {saver["saver"]: saver for saver in results["savers"]}
    comparisons: list[Comparison] = []
    for backend in backends:
        ours, theirs = savers[f"agentfold {backend}"], savers[f"langgraph {backend}"]
        figures = [
            (f"checkpoint_bytes_step_{steps}", "bytes", "bytes"),
            (f"thread_bytes_step_{steps}", "thread_bytes", "bytes"),
            (f"next_thread_bytes_step_{steps}", "next_thread_bytes", "bytes"),
        ] + [
            (f"{call}_ms_step_{step}", f"{call}_ms_step_{step}", "ms")
            for call in ("aput", "aget_tuple")
            for step in (EARLY_STEP, steps)
        ]
        for figure, key, unit in figures:
            comparisons.append(
                Comparison(
                    "langgraph",
                    f"{PACKAGE[backend].removeprefix('langgraph-')} {version(PACKAGE[backend])}",
                    backend,
                    figure,
                    unit,
                    float(ours[key]),
                    float(theirs[key]),
                    higher_is_better=False,
                    note=f"AgentfoldSaver vs {SAVER[backend]}",
                )
            )
    return comparisons
