"""`agentfold bench --scale` at tiny sizes: every figure of every size is there, each ratio to the smallest size and
to the reference store, the JSON the command writes, and bad sizes refused. Times are not asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import agentfold
from agentfold.bench.scale import (
    RATIO_FIGURES,
    UNIT_EVENTS,
    WAITING_RUNS,
    Turns,
    fill,
    markdown,
    open_runs_after_fill,
    parse_sizes,
    run_scale,
)
from agentfold.cli import main
from tests.backends import BACKENDS, PG_URL, REDIS_URL, require_service

SIZES = [200, 400]
ALWAYS = {
    "events",
    "streams",
    "runs",
    "open_runs",
    "fill_s",
    "fill_events_per_s",
    "payload_bytes_per_event",
    "append_1_writer_p50_ms",
    "append_1_writer_p99_ms",
    "append_random_stream_p50_ms",
    "append_random_stream_p99_ms",
    "append_16_writers_events_per_s",
    "worker_first_ready_ms",
    "trigger_first_dispatch_ms",
    "worker_ready_ms",
    "runs_index_build_s",
    "runs_page_ms",
}
ON_DISK = {"bytes_per_event", "events_table_bytes_per_event", "events_indexes_bytes_per_event"}


async def test_a_fill_leaves_the_same_runs_unfinished_at_every_size() -> None:
    for events in (20_000, 60_000):
        async with agentfold.connect("memory://") as store:
            units = await fill(store, events, lambda _: None, "fill")
            _, runs = await store.open_runs()
            assert len(runs) == open_runs_after_fill(units) == WAITING_RUNS
            assert await store.head_position() == events


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
async def test_every_figure_at_every_size_with_its_ratios(backend: str) -> None:
    require_service(next(known for known in BACKENDS if known.name == backend))
    urls = {"postgres": PG_URL, "redis": REDIS_URL}
    results = await run_scale([backend], urls, SIZES, Turns.tiny(), progress=lambda _: None)
    assert results["sizes"] == SIZES
    assert results["reference_size"] == SIZES[0]
    rows = results["backends"][backend]["sizes"]
    assert [row["size"] for row in rows] == SIZES
    for row in rows:
        figures = row["figures"]
        assert ALWAYS | ON_DISK <= set(figures)
        assert figures["events"] == row["size"] and figures["runs"] == row["size"] // UNIT_EVENTS
        assert figures["open_runs"] == open_runs_after_fill(row["size"] // UNIT_EVENTS)
        assert all(value > 0 for name, value in figures.items() if name not in ("fill_s", "open_runs"))
        # the payload is about 180 bytes; what the store keeps for it on disk is more
        assert figures["bytes_per_event"] > figures["payload_bytes_per_event"] > 100
        if backend == "redis":  # memory per key kind: the per-stream lists, the global stream, the id records
            assert figures["redis_s_bytes_per_event"] > figures["payload_bytes_per_event"]
            assert figures["redis_all_bytes_per_event"] > figures["payload_bytes_per_event"]
            assert figures["redis_idx_bytes_per_event"] > 16
        assert {name for name in figures if name.endswith("_vs_reference")} == {
            "append_1_writer_p50_ms_vs_reference",
            "append_1_writer_p99_ms_vs_reference",
            "append_random_stream_p50_ms_vs_reference",
            "append_random_stream_p99_ms_vs_reference",
            "append_16_writers_events_per_s_vs_reference",
            "worker_ready_ms_vs_reference",
            "runs_page_ms_vs_reference",
        }
        in_turns = {name for name in figures if name.endswith("_vs_reference")}
        assert set(row["ratios"]) == {f"{name}_vs_smallest" for name in {*RATIO_FIGURES, *in_turns}}
    assert all(ratio == 1.0 for ratio in rows[0]["ratios"].values())
    table = markdown(results)
    assert f"| {SIZES[0]:,} events | {SIZES[1]:,} events |" in table and "| worker_ready_ms |" in table


def test_the_command_writes_json_and_refuses_bad_sizes(tmp_path: Path) -> None:
    written = tmp_path / "scale.json"
    runner = CliRunner()
    done = runner.invoke(
        main, ["bench", "--scale", "--scale-sizes", "100", "--backend", "memory", "--quick", "--json", str(written)]
    )
    assert done.exit_code == 0, done.output
    results = json.loads(written.read_text())
    assert set(results["backends"]) == {"memory"}
    assert results["backends"]["memory"]["sizes"][0]["figures"]["events"] == 100
    for sizes in ("1000,lots", "10", ""):
        refused = runner.invoke(main, ["bench", "--scale", "--scale-sizes", sizes])
        assert refused.exit_code == 2 and "--scale-sizes" in refused.output


def test_sizes_are_read_sorted_and_without_repeats() -> None:
    assert parse_sizes("5_000_000, 20000,1000000,20000") == [20_000, 1_000_000, 5_000_000]
    with pytest.raises(ValueError, match="at least"):
        parse_sizes("49")
