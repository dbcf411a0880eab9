"""The raw limit beside the peers: agentfold's appends and fold against the bare driver of the same backend.

The bare-driver figures are the ones `agentfold bench` sets beside every backend (`raw_sqlite`, `raw_postgres`):
one-row commits (SQLite: one connection; PostgreSQL: 8 connections), and a fetch, decode and count of 10,000
events of the same shape, timed in turns with agentfold's fold of them (`projection_bench`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from agentfold.bench import Progress, measure_appends, scratch_store
from agentfold.bench.comparison import Comparison, PeerSizes, version
from agentfold.bench.projection_bench import measure_projection

PEER: Final = "raw driver"
RAW_COMMITS: Final = {"sqlite": "raw_commits_per_s_1row", "postgres": "raw_tx_per_s_8clients_1row"}
NOTES: Final = {"sqlite": "bare sqlite3, one-row commits", "postgres": "bare psycopg, one-row commits, 8 connections"}


def _driver_version(backend: str) -> str:
    return f"SQLite {sqlite3.sqlite_version}" if backend == "sqlite" else f"psycopg {version('psycopg')}"


async def measure_raw_limit(
    backends: list[str], pg_url: str, workdir: Path, sizes: PeerSizes, progress: Progress
) -> list[Comparison]:
    """16 writers' appends against the bare driver's one-row commits; the 10k-event fold against the bare fold."""
    comparisons: list[Comparison] = []
    for backend in backends:
        driver = _driver_version(backend)
        progress(f"{backend}: appends from 16 writers, then the bare driver's one-row commits")
        async with scratch_store(backend, pg_url) as (url, store):
            ours = await measure_appends(store, 16, sizes.seconds)
        async with scratch_store(backend, pg_url) as (url, _):
            if backend == "sqlite":
                from agentfold.bench.raw_sqlite import measure_raw
            else:
                from agentfold.bench.raw_postgres import measure_raw
            raw = await measure_raw(url)
        comparisons.append(
            Comparison(
                PEER,
                driver,
                backend,
                "append_16_writers_events_per_s",
                "events/s",
                ours,
                raw[RAW_COMMITS[backend]],
                higher_is_better=True,
                note=NOTES[backend],
            )
        )
        progress(f"{backend}: a 10k-event fold and the bare driver's, in turns")
        async with scratch_store(backend, pg_url) as (url, _):
            fold = await measure_projection(url)
        comparisons.append(
            Comparison(
                PEER,
                driver,
                backend,
                "replay_10k_events_ms",
                "ms",
                fold["fold_10k_ms"],
                fold["raw_read_decode_fold_10k_ms"],
                higher_is_better=False,
                note="bare fetch, decode and count",
            )
        )
    return comparisons
