"""The `agentfold` command on an install without the optional extras: every command is listed, the ones that need
nothing extra work, and one that needs an extra says which to install instead of failing on import."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import agentfold

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = "starlette,uvicorn,jinja2,sse_starlette,multipart,psycopg,psycopg_pool,redis,pydantic_ai,langgraph,agents"
# Packages of the extras are made unimportable, as on a machine where only `pip install agentfold` ran.
WITHOUT_EXTRAS = f"""
import importlib.abc, sys
BLOCKED = set({EXTRAS!r}.split(","))
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["agentfold", *sys.argv[1:]]
from agentfold.cli import main
main()
"""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT_EXTRAS, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


async def create_store(url: str) -> None:
    async with agentfold.connect(url):
        pass


def test_the_core_commands_work_and_serve_names_its_extra(tmp_path: Path) -> None:
    listed = run_cli("--help", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "workflows" in listed.stdout and "serve" in listed.stdout

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    asyncio.run(create_store(url))
    runs = run_cli("workflows", "--store", url, cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert "no workflow runs" in runs.stdout

    serve = run_cli("serve", "--port", "0", cwd=tmp_path)
    assert serve.returncode == 1
    assert "agentfold serve needs the web extra" in serve.stderr and "pip install 'agentfold[web]'" in serve.stderr
    assert "Traceback" not in serve.stderr
