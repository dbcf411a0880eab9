"""`agentfold bench --integrations` measures every saver and names the packages it measured (a short run)."""

from __future__ import annotations

import os
from pathlib import Path

from agentfold.bench.langgraph_storage import EARLY_STEP, PACKAGES, run_langgraph_storage
from tests.backends import PG_URL, require_service


async def test_the_storage_benchmark_measures_every_saver(tmp_path: Path) -> None:
    from tests.backends import BACKENDS

    require_service(next(backend for backend in BACKENDS if backend.name == "postgres"))
    steps = EARLY_STEP + 2
    results = await run_langgraph_storage(tmp_path, PG_URL.split("?")[0], steps)
    names = [saver["saver"] for saver in results["savers"]]
    assert names == ["agentfold sqlite", "langgraph sqlite", "agentfold postgres", "langgraph postgres"]
    for saver in results["savers"]:
        assert saver["bytes"] > saver["thread_bytes"] > 0 and saver["next_thread_bytes"] > 0
        assert saver[f"aput_ms_step_{steps}"] > 0 and saver[f"aget_tuple_ms_step_{EARLY_STEP}"] > 0
        assert isinstance(saver[f"decode_ms_step_{steps}"], float)  # reported, whatever its value
    assert set(results["versions"]) == {"agentfold", *PACKAGES}
    assert os.listdir(tmp_path) == []
