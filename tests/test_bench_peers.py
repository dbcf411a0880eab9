"""`agentfold bench --peers` runs every peer figure once on tiny sizes: each comparison has both figures, the peer's
version and a ratio, and nothing is left behind (files, PostgreSQL schemas). Times are not asserted."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from agentfold.bench.langgraph_storage import EARLY_STEP
from agentfold.bench.peers import PeerSizes, run_peers
from agentfold.cli.bench import peers_markdown, peers_summary_markdown
from tests.backends import BACKENDS, PG_URL, require_service

ROOT_PG = PG_URL.split("?")[0]
SIZES = PeerSizes.tiny()


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_service(next(backend for backend in BACKENDS if backend.name == "postgres"))


def _schemas() -> set[str]:
    """The schemas now on the server (others' tests add and drop their own meanwhile: compare by prefix)."""
    with psycopg.connect(ROOT_PG) as connection:
        return {row[0] for row in connection.execute("SELECT nspname FROM pg_namespace").fetchall()}


def _figures(results: dict[str, object], peer: str) -> dict[tuple[str, str], dict[str, object]]:
    comparisons = results["comparisons"]
    assert isinstance(comparisons, list)
    return {(row["backend"], row["figure"]): row for row in comparisons if row["peer"] == peer}


def _check(row: dict[str, object]) -> None:
    assert isinstance(row["agentfold"], float) and row["agentfold"] > 0
    assert isinstance(row["peer_value"], float) and row["peer_value"] > 0
    assert isinstance(row["ratio"], float) and row["ratio"] > 0
    assert row["peer_version"] != "not installed"


async def test_eventsourcing_appends_and_replay_beside_agentfold(tmp_path: Path) -> None:
    before = _schemas()
    results = await run_peers(["eventsourcing"], ["sqlite", "postgres"], ROOT_PG, tmp_path, SIZES, lambda _: None)
    figures = _figures(results, "eventsourcing")
    expected = [
        "append_1_writer_events_per_s",
        "append_16_writers_events_per_s",
        f"replay_{SIZES.replay_events}_events_ms",
    ]
    assert set(figures) == {(backend, figure) for backend in ("sqlite", "postgres") for figure in expected}
    for row in figures.values():
        _check(row)
    assert results["not_installed"] == {}
    assert os.listdir(tmp_path) == []
    assert not {schema for schema in _schemas() - before if schema.startswith("bench_es_")}
    table = peers_markdown(results)
    assert table.count("| eventsourcing ") == len(figures)
    summary = peers_summary_markdown(results)
    assert summary.count(" vs eventsourcing |") == len(expected)


async def test_langgraph_savers_beside_agentfolds(tmp_path: Path) -> None:
    results = await run_peers(["langgraph"], ["sqlite", "postgres"], ROOT_PG, tmp_path, SIZES, lambda _: None)
    figures = _figures(results, "langgraph")
    steps = SIZES.langgraph_steps
    expected = [f"checkpoint_bytes_step_{steps}", f"thread_bytes_step_{steps}", f"next_thread_bytes_step_{steps}"] + [
        f"{call}_ms_step_{step}" for call in ("aput", "aget_tuple") for step in (EARLY_STEP, steps)
    ]
    assert set(figures) == {(backend, figure) for backend in ("sqlite", "postgres") for figure in expected}
    for row in figures.values():
        _check(row)
    assert [name for _, _, names in os.walk(tmp_path) for name in names] == []


async def test_dbos_workflows_and_crash_to_finished_beside_agentfolds(tmp_path: Path) -> None:
    before = _dbos_schemas()
    results = await run_peers(["dbos"], ["sqlite", "postgres"], ROOT_PG, tmp_path, SIZES, lambda _: None)
    figures = _figures(results, "dbos")
    expected = [
        "workflows_1_worker_per_s",
        "workflow_steps_1_worker_per_s",
        "workflows_3_workers_per_s",
        "workflow_steps_3_workers_per_s",
        "crash_to_finished_ms",
    ]
    assert set(figures) == {(backend, figure) for backend in ("sqlite", "postgres") for figure in expected}
    for row in figures.values():
        _check(row)
    assert os.listdir(tmp_path) == []
    assert _dbos_schemas() <= before


def _dbos_schemas() -> set[str]:
    """The per-run schemas in DBOS's system database (created by the first run)."""
    database = ROOT_PG.rsplit("/", 1)[0] + "/agentfold_bench_dbos"
    try:
        with psycopg.connect(database) as connection:
            rows = connection.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_dbos_%'").fetchall()
    except psycopg.OperationalError:  # not created yet
        return set()
    return {row[0] for row in rows}


async def test_the_raw_limit_beside_agentfolds(tmp_path: Path) -> None:
    results = await run_peers(["raw"], ["sqlite", "postgres"], ROOT_PG, tmp_path, SIZES, lambda _: None)
    figures = _figures(results, "raw driver")
    expected = ["append_16_writers_events_per_s", "replay_10k_events_ms"]
    assert set(figures) == {(backend, figure) for backend in ("sqlite", "postgres") for figure in expected}
    for row in figures.values():
        _check(row)
