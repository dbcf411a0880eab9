"""The documentation runs as written: every ```python block in README.md and docs/*.md (every file there, found
when the tests are collected) is executed as a script, and the README's walk-through commands work.

Conventions for a block:
- It is a complete program. The test writes it to ``block.py`` in a fresh temporary folder and runs
  ``python block.py`` there (120 s at most), so ``sqlite:///name.db`` and other relative paths land in that folder.
  It must exit with status 0.
- A block that is a fragment on purpose (an outline, a signature) is preceded by the line ``<!-- fragment -->`` and
  is not run.
- A block that needs PostgreSQL or Redis reads its URL from ``DATABASE_URL`` or ``REDIS_URL``, with a default that
  works on a developer's machine (``os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")``).
  The test sets them to the test services (``AGENTFOLD_TEST_PG`` / ``AGENTFOLD_TEST_REDIS``) with a schema or key
  prefix of the block's own, removed afterwards. Such a block is skipped when the service is unreachable, except
  under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends import BACKENDS, PG_URL, REDIS_URL, Backend, require_service

ROOT = Path(__file__).resolve().parent.parent
FRAGMENT_MARK = "<!-- fragment -->"
BLOCK_TIMEOUT = 120
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class CodeBlock:
    path: Path
    line: int
    code: str
    fragment: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(path: Path) -> list[CodeBlock]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        fragment = bool(before) and before[-1].strip() == FRAGMENT_MARK
        blocks.append(CodeBlock(path, text.count("\n", 0, match.start()) + 1, match.group(1), fragment))
    return blocks


ALL_BLOCKS = [block for path in documents() for block in code_blocks(path)]


def run_block(code: str, folder: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = folder / "block.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def _backend(name: str) -> Backend:
    return next(backend for backend in BACKENDS if backend.name == name)


@pytest.mark.parametrize("block", [block for block in ALL_BLOCKS if not block.fragment], ids=lambda block: block.name)
def test_every_python_block_runs_as_written(block: CodeBlock, tmp_path: Path) -> None:
    if re.search(r"^(async )?def main\(", block.code, re.MULTILINE):
        called = re.search(r"^\s*(asyncio\.run\()?main\(\)", block.code, re.MULTILINE)
        assert called, f"{block.name}: main() is never run"
    env: dict[str, str] = {}
    cleanups: list[tuple[Backend, str]] = []
    if "DATABASE_URL" in block.code:
        backend = _backend("postgres")
        require_service(backend)
        env["DATABASE_URL"] = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema=docs_{uuid.uuid4().hex[:12]}"
        cleanups.append((backend, env["DATABASE_URL"]))
    if "REDIS_URL" in block.code:
        backend = _backend("redis")
        require_service(backend)
        env["REDIS_URL"] = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix=docs{uuid.uuid4().hex[:12]}"
        cleanups.append((backend, env["REDIS_URL"]))
    try:
        run = run_block(block.code, tmp_path, env)
        assert run.returncode == 0, f"{block.name} failed:\n{run.stdout}\n{run.stderr}"
    finally:
        for backend, url in cleanups:
            backend.cleanup(url)


def test_fragments_are_marked_on_purpose() -> None:
    """The mark stands right before a python block (a stray one would hide nothing and mislead)."""
    for path in documents():
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() == FRAGMENT_MARK:
                following = text.splitlines()[number : number + 1]
                assert following == ["```python"], f"{path.name}:{number}: {FRAGMENT_MARK} not before a python block"
    assert ALL_BLOCKS, "no python blocks found"


def section_code(heading: str) -> str:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split(heading, 1)[1], re.DOTALL)
    assert code is not None
    return code.group(1)


def test_quick_start_runs_twice_and_is_short(tmp_path: Path) -> None:
    code = section_code("## Quick start")
    assert len([line for line in code.splitlines() if line.strip()]) <= 25
    for _ in range(2):  # the second run finds the finished run and returns its stored result
        run = run_block(code, tmp_path)
        assert run.returncode == 0, run.stderr
        assert "{'paid': 'order-7/1/charge', 'approved_by': 'alice'}" in run.stdout


def test_event_log_example_runs_twice(tmp_path: Path) -> None:
    for _ in range(2):
        run = run_block(section_code("## The event log"), tmp_path)
        assert run.returncode == 0, run.stderr
        assert "refused:" in run.stdout and "OrderPlaced" in run.stdout


def test_the_demo_ends_with_a_command_that_runs(tmp_path: Path) -> None:
    """`make demo` prints how to look inside its store; that exact command works from the same folder."""
    run = subprocess.run(
        [sys.executable, "-m", "agentfold.cli", "demo", "--orders", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the demo keeps its store folder for inspection
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    after = lines[lines.index("look inside (the store is kept):") + 1 :]
    printed = [line.strip() for line in after[: next(i for i, line in enumerate(after) if not line.startswith("  "))]]
    assert len(printed) == 2 and " show " in printed[0] and " workflows " in printed[1]
    for command in printed:
        argv = shlex.split(command)
        assert Path(argv[0]).name == "agentfold" and (argv[0] == "agentfold" or Path(argv[0]).is_absolute())
        shown = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "Completed" in shown.stdout


def agentfold_argv(line: str) -> list[str]:
    """A README shell line as argv, with `agentfold` being this environment's command."""
    argv = shlex.split(line, comments=True)
    if argv and argv[0] == "agentfold":
        argv[0] = str(Path(sys.executable).parent / "agentfold")
    return argv


def test_the_command_line_walk_through_starts_approves_cancels_and_inspects(tmp_path: Path) -> None:
    """The README's "From the command line" commands, run in order as written, beside its quick start."""
    (tmp_path / "quickstart.py").write_text(section_code("## Quick start"), encoding="utf-8")
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme.split("## From the command line", 1)[1], re.DOTALL)
    assert block is not None
    env = {key: value for key, value in os.environ.items() if key != "AGENTFOLD_STORE"}
    env.update({"COLUMNS": "120", "NO_COLOR": "1"})
    background: list[subprocess.Popen[str]] = []
    outputs: dict[str, str] = {}
    try:
        for line in filter(None, (line.strip() for line in block.group(1).splitlines())):
            argv = agentfold_argv(line)
            if argv[-1] == "&":
                worker = subprocess.Popen(
                    argv[:-1], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                background.append(worker)
                assert worker.stdout is not None
                assert "ready" in worker.stdout.readline()  # a person types the next line after this one
                continue
            if argv[:2] == ["kill", "%1"]:
                background[0].terminate()
                assert background[0].wait(timeout=30) == 0
                continue
            if argv[1] == "workflows" and "--status" in argv:
                wait_for_state(argv[0], tmp_path, env, "order-9", "Cancelled")
            if argv[1] == "show":
                wait_for_state(argv[0], tmp_path, env, "order-8", "Completed")
            run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, f"{line}: {run.stderr}"
            outputs[" ".join(argv[1:3])] = run.stdout
    finally:
        for process in background:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "order-8" in outputs["show order-8"] and "SignalReceived" in outputs["show order-8"]
    assert "'bob'" in outputs["show order-8"] or '"bob"' in outputs["show order-8"]
    cancelled = outputs["workflows --status"]
    assert "order-9" in cancelled and "Cancelled" in cancelled and "order-8" not in cancelled


def wait_for_state(command: str, folder: Path, env: dict[str, str], workflow_id: str, state: str) -> None:
    """What a person does by looking again: the worker applies a signal or a cancel a moment after it is sent."""
    for _ in range(300):
        listing = subprocess.run(
            [command, "workflows", "--json"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
        )
        assert listing.returncode == 0, listing.stderr
        states = {run["workflow_id"]: run["status"] for run in json.loads(listing.stdout)["runs"]}
        if states.get(workflow_id) == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{workflow_id} never reached {state}: {states}")


def test_the_rules_of_workflow_code_come_first_and_the_quick_start_links_them() -> None:
    workflows = (ROOT / "docs" / "workflows.md").read_text()
    assert re.findall(r"^## (.+)$", workflows, re.MULTILINE)[0] == "Rules of workflow code"
    rules = workflows.split("## Rules of workflow code", 1)[1].split("\n## ", 1)[0]
    for rule in ("deterministic", "I/O only in steps", "`print` in workflow code repeats on replay"):
        assert rule in rules
    for name in ("ctx.now()", "ctx.random()", "ctx.patched("):
        assert name in rules
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "(docs/workflows.md#rules-of-workflow-code)" in quick_start
