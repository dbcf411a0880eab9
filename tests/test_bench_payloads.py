"""`agentfold bench --payloads` runs (quick sizes, memory store): every figure measured, the folds agreeing."""

from __future__ import annotations

from click.testing import CliRunner

from agentfold.bench import run
from agentfold.cli import main


async def test_payload_figures_are_measured_on_the_memory_store() -> None:
    results = await run(["memory"], {}, True, progress=lambda text: None, payloads_only=True)
    figures = results["backends"]["memory"]["figures"]
    for name in ("append_1mib_mb_per_s", "read_1mib_mb_per_s", "fold_inline_ms", "fold_unread_ms", "fold_loaded_ms"):
        assert figures[f"blob_{name}"] > 0
    assert figures["blob_fold_unread_vs_inline"] == figures["blob_fold_inline_ms"] / figures["blob_fold_unread_ms"]


def test_the_command_prints_the_payload_figures() -> None:
    result = CliRunner().invoke(main, ["bench", "--payloads", "--backend", "memory", "--quick"])
    assert result.exit_code == 0, result.output
    assert "blob_fold_unread_vs_inline" in result.output and "blob_append_1mib_mb_per_s" in result.output
