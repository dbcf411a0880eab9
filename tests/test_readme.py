"""The README's quick start runs as written (twice: a second run must work on the same file too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    assert len(code.group(1).strip().splitlines()) <= 25
    script = tmp_path / "quick_start.py"
    script.write_text(code.group(1))
    for _ in range(2):
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "refused:" in run.stdout
        assert "OrderPlaced" in run.stdout


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
