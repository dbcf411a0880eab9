"""What `agentfold bench --peers` measures with: one figure for agentfold and a peer (`Comparison`), the sizes of a
run (`PeerSizes`), and the installed version of a peer's package."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentfold.bench import Progress


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
