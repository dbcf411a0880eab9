"""docs/http.md's shell examples run as written, in order, against a live `agentfold serve` with a worker; each
example's output matches the text block after it (``...`` stands for any text)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import agentfold
from agentfold.bench.http_bench import serve_process

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "http.md"
BLOCK = re.compile(r"(<!-- not run[^\n]*-->\n)?```sh\n(.*?)```\n(?:\n```text\n(.*?)```\n)?", re.DOTALL)


def examples() -> list[tuple[str, str | None]]:
    """The runnable shell blocks, each with the output it should print (None: not shown)."""
    return [(code, expected or None) for skip, code, expected in BLOCK.findall(DOC.read_text()) if not skip]


def matches(expected: str, output: str) -> bool:
    pattern = re.escape(expected.strip()).replace(re.escape("..."), ".*?")
    return re.fullmatch(pattern, output.replace("\r\n", "\n").strip(), re.DOTALL) is not None


async def test_the_curl_examples_run_against_a_live_server(tmp_path: Path) -> None:
    blocks = examples()
    assert len(blocks) >= 10 and sum(1 for _, expected in blocks if expected) >= 10
    store_url = f"sqlite:///{tmp_path / 'agentfold.db'}"
    async with await agentfold.connect(store_url):  # creates the file `serve` opens
        pass
    examples_dir = str(ROOT / "examples")
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentfold", "worker", "http_review:runtime", "--store", store_url, cwd=examples_dir
    )
    try:
        async with serve_process(store_url) as base:
            script = ["set -euo pipefail"]
            for number, (code, _) in enumerate(blocks):
                script += [f"echo '@@example {number}@@'", code]
            env = {**os.environ, "AGENTFOLD_URL": base, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
            shell = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                "\n".join(script),
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            output, errors = await asyncio.wait_for(shell.communicate(), 120)
    finally:
        worker.terminate()
        await worker.wait()
    assert shell.returncode == 0, errors.decode()
    printed = re.split(r"@@example \d+@@\n", output.decode())[1:]
    assert len(printed) == len(blocks)
    for (code, expected), got in zip(blocks, printed, strict=True):
        if expected is not None:
            assert matches(expected, got), f"{code}\nprinted:\n{got}\nexpected:\n{expected}"
    first_answers: dict[str, str] = {}
    for (code, _), got in zip(blocks, printed, strict=True):  # a request sent again gets the same answer
        assert first_answers.setdefault(code, got) == got
