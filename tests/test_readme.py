"""The README's quick start runs as written (twice: a second run must work on the same file too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def section_code(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split(heading, 1)[1], re.DOTALL)
    assert code is not None
    return code.group(1)


def run_twice(code: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "example.py"
    script.write_text(code)
    outputs = []
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)
    return outputs


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    code = section_code("## Quick start")
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    for output in run_twice(code, tmp_path):
        assert "{'paid': 'order-7/1/charge', 'approved_by': 'alice'}" in output


def test_event_log_example_runs_as_written(tmp_path: Path) -> None:
    for output in run_twice(section_code("## The event log"), tmp_path):
        assert "refused:" in output
        assert "OrderPlaced" in output


def test_make_demo_command_runs(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agentfold.cli", "demo", "--orders", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the demo keeps its store folder for inspection
    )
    assert run.returncode == 0, run.stderr
