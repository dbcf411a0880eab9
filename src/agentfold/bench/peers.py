"""`agentfold bench --peers`: agentfold beside the systems a user would pick instead, measured in one run.

Each comparison holds agentfold's figure and the peer's, measured in the same process (or the same machine, for
worker processes) with the same payloads, the peer's package version, and a ratio that reads the same way for every
row: above 1, agentfold is ahead (agentfold ÷ peer for rates, peer ÷ agentfold for times and bytes). The peers come
from the `bench-peers` extra; a peer that is not installed is named in the result, not silently left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agentfold.bench import DEFAULT_PG, Progress, environment
from agentfold.bench.comparison import Comparison, PeerMeasure, PeerSizes, count_label, version
from agentfold.errors import InvalidInput

__all__ = [
    "PEER_NAMES",
    "Comparison",
    "PeerMeasure",
    "PeerSizes",
    "count_label",
    "default_pg_url",
    "run_peers",
    "version",
]

PEER_NAMES = ("eventsourcing", "raw", "dbos", "langgraph")
PEER_PACKAGES = {
    "eventsourcing": ("eventsourcing",),
    "dbos": ("dbos",),
    "langgraph": ("langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres"),
    "raw": (),
}


def missing(peer: str) -> list[str]:
    """The packages `peer` needs that are not installed."""
    return [package for package in PEER_PACKAGES[peer] if version(package) == "not installed"]


def default_pg_url() -> str:
    """The PostgreSQL server the peers are measured on unless told otherwise (the same as the other benchmarks)."""
    return os.environ.get("AGENTFOLD_BENCH_PG", DEFAULT_PG).split("?")[0]


async def run_peers(
    peers: list[str],
    backends: list[str],
    pg_url: str,
    workdir: Path,
    sizes: PeerSizes,
    progress: Progress = print,
) -> dict[str, Any]:
    """Measure every chosen peer on every chosen backend (sqlite, postgres); the result is what `--json` writes."""
    unknown = sorted(set(peers) - set(PEER_NAMES)) + sorted(set(backends) - {"sqlite", "postgres"})
    if unknown:
        raise InvalidInput(f"unknown peer or backend {', '.join(unknown)}; peers: {', '.join(PEER_NAMES)}")
    comparisons: list[Comparison] = []
    not_installed: dict[str, list[str]] = {}
    measured_on = {**environment(), "load_average_at_start": _load_average()}
    for peer in peers:
        absent = missing(peer)
        if absent:
            not_installed[peer] = absent
            continue
        if peer == "eventsourcing":
            from agentfold.bench.peer_eventsourcing import measure_eventsourcing

            comparisons += await measure_eventsourcing(backends, pg_url, workdir, sizes, progress)
        elif peer == "dbos":
            from agentfold.bench.peer_dbos import measure_dbos

            comparisons += await measure_dbos(backends, pg_url, workdir, sizes, progress)
        elif peer == "langgraph":
            from agentfold.bench.peer_langgraph import measure_langgraph

            comparisons += await measure_langgraph(backends, pg_url, workdir, sizes, progress)
        else:
            from agentfold.bench.peer_raw import measure_raw_limit

            comparisons += await measure_raw_limit(backends, pg_url, workdir, sizes, progress)
    return {
        "environment": {**measured_on, "load_average_at_end": _load_average()},
        "comparisons": [comparison.as_json() for comparison in comparisons],
        "not_installed": not_installed,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None
