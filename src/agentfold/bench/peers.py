"""`agentfold bench --peers`: agentfold beside the systems a user would pick instead, measured in one run.

Each comparison holds agentfold's figure and the peer's, measured in the same process (or the same machine, for
worker processes) with the same payloads, the peer's package version, and a ratio that reads the same way for every
row: above 1, agentfold is ahead (agentfold ÷ peer for rates, peer ÷ agentfold for times and bytes). The peers come
from the `bench-peers` extra; a peer that is not installed is named in the result, not silently left out.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentfold.bench import DEFAULT_PG, Progress, environment
from agentfold.errors import InvalidInput

PEER_NAMES = ("eventsourcing", "raw", "dbos", "langgraph")
PEER_PACKAGES = {
    "eventsourcing": ("eventsourcing",),
    "dbos": ("dbos",),
    "langgraph": ("langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres"),
    "raw": (),
}


@dataclass(frozen=True)
class Comparison:
    """One figure measured for agentfold and for a peer in the same run."""

    peer: str
    peer_version: str
    backend: str
    figure: str
    unit: str
    agentfold: float
    peer_value: float
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """Above 1, agentfold is ahead: agentfold ÷ peer for rates, peer ÷ agentfold for times and sizes."""
        if self.higher_is_better:
            return self.agentfold / self.peer_value if self.peer_value else float("inf")
        return self.peer_value / self.agentfold if self.agentfold else float("inf")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def version(package: str) -> str:
    """The installed version of `package`, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def count_label(count: int) -> str:
    """10000 as "10k", 200 as "200": figure names say the size they were measured at."""
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


def missing(peer: str) -> list[str]:
    """The packages `peer` needs that are not installed."""
    return [package for package in PEER_PACKAGES[peer] if version(package) == "not installed"]


@dataclass(frozen=True)
class PeerSizes:
    """How much each measurement does: the real sizes, or tiny ones that only prove the code runs."""

    seconds: float = 3.0
    """How long each append measurement writes."""
    replay_events: int = 10_000
    replay_rounds: int = 11
    workflow_runs: int = 500
    crash_runs: int = 6
    langgraph_steps: int = 200

    @classmethod
    def quick(cls) -> PeerSizes:
        return cls(seconds=1.0, replay_events=10_000, replay_rounds=5, workflow_runs=200, langgraph_steps=60)

    @classmethod
    def tiny(cls) -> PeerSizes:
        return cls(seconds=0.2, replay_events=200, replay_rounds=1, workflow_runs=6, crash_runs=2, langgraph_steps=12)


PeerMeasure = Callable[[str, Path, PeerSizes, Progress], Any]


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
