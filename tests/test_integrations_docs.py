"""The programs of docs/integrations.md run as written, and are the ones in examples/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def programs() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "integrations.md").read_text(), re.DOTALL)


def run(code: str, tmp_path: Path) -> str:
    script = tmp_path / "program.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_docs_hold_the_examples() -> None:
    assert programs() == [
        (ROOT / "examples" / "langgraph_approval.py").read_text(),
        (ROOT / "examples" / "openai_agents_session.py").read_text(),
        (ROOT / "examples" / "pydantic_ai_support.py").read_text(),
    ]


def test_a_killed_langgraph_worker_resumes_without_paying_twice(tmp_path: Path) -> None:
    output = run(programs()[0], tmp_path).splitlines()
    assert output[0].startswith("Interrupt(value={'approve refund?': {'order': '42', 'amount': 30}}")
    assert output[1] == "worker killed after the refund call"
    assert output[2] == '{"order": "42", "amount": 30, "refund_id": "re_1"}'
    assert output[3] == "refunds issued: 1"


def test_an_agents_sdk_conversation_resumes_in_a_new_process_and_branches(tmp_path: Path) -> None:
    output = run(programs()[1], tmp_path).splitlines()
    assert output == [
        "I have heard: my name is Ada",
        "last two items: ['user', 'assistant']",
        "I have heard: my name is Ada | what is my name?",
        "last two items: ['user', 'assistant']",
        "branch: ['user', 'assistant', 'user']",
        "original still has 4 items",
    ]
