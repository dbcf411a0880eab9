"""`examples/research_team.py` end to end, as its README section tells a person to run it: the first run plans,
researches and drafts, then waits for approval; the printed commands show the draft and approve it; the second run
resumes the planner, publishes once and asks the model nothing again."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "research_team.py"
TIMEOUT = 120
RUN_ID = "research-durable-agents"


def run(argv: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "AGENTFOLD_STORE"}
    env.update({"COLUMNS": "120", "NO_COLOR": "1"})
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


def test_the_team_drafts_waits_for_approval_and_publishes_once(tmp_path: Path) -> None:
    first = run([sys.executable, str(SCRIPT), "--topic", "durable agents"], tmp_path).stdout
    assert f"{RUN_ID} waits for approval" in first
    assert "model calls in this process: 5" in first  # plan, three summaries, the draft
    show, approve = [shlex.split(line) for line in first.splitlines() if line.startswith("  ")]
    assert show[1:3] == ["show", f"{RUN_ID}/writer"] and approve[1:4] == ["signal", RUN_ID, "approval"]
    assert not (tmp_path / "outbox").exists()  # nothing is published before the approval

    draft = run(show, tmp_path).stdout
    assert "draft" in draft and "StepCompleted" in draft and "WorkflowCompleted" in draft
    run(approve, tmp_path)

    second = run([sys.executable, str(SCRIPT), "--topic", "durable agents"], tmp_path).stdout
    assert "'approved_by': 'ann'" in second
    assert "model calls in this process: 0" in second
    [published] = list((tmp_path / "outbox").iterdir())
    assert published.read_text().startswith("# Report") and "every effect happens once" in published.read_text()

    third = run([sys.executable, str(SCRIPT), "--topic", "durable agents"], tmp_path).stdout
    assert "'approved_by': 'ann'" in third and len(list((tmp_path / "outbox").iterdir())) == 1

    store = ["--store", "sqlite:///research.db"]
    runs = json.loads(run([show[0], "workflows", "--json", *store], tmp_path).stdout)
    assert {item["workflow_id"]: item["status"] for item in runs["runs"]} == {
        RUN_ID: "Completed",
        f"{RUN_ID}/research-1": "Completed",
        f"{RUN_ID}/research-2": "Completed",
        f"{RUN_ID}/research-3": "Completed",
        f"{RUN_ID}/writer": "Completed",
    }
    timeline = json.loads(run([show[0], "show", RUN_ID, "--json", *store], tmp_path).stdout)["timeline"]
    steps = [row["name"] for row in timeline if row["event_type"] == "StepStarted"]
    assert steps.count("publish") == 1 and steps.count("plan") == 1
    assert any(row["event_type"] == "SignalReceived" and row["name"] == "approval" for row in timeline)
