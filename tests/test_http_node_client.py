"""A client in another language: a Node script with plain `fetch` against `agentfold serve`, run as a process."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import agentfold
from agentfold.bench.http_bench import serve_process
from agentfold.tokens import TokenRegistry

SCRIPT = Path(__file__).parent / "clients" / "agent.mjs"


async def test_a_node_agent_appends_retries_reads_and_subscribes(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for this test (Debian's nodejs)"
    url = f"sqlite:///{tmp_path / 'node.db'}"
    async with await agentfold.connect(url) as store:
        token = (await TokenRegistry(store).create("node-agent", write=["agent-node-*"])).token
        async with serve_process(url) as base:
            process = await asyncio.create_subprocess_exec(
                node, str(SCRIPT), base, token, "agent-node-1", stdout=asyncio.subprocess.PIPE
            )
            output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        summary = json.loads(output)
        assert summary["ok"] is True and summary["agent_id"] == "node-agent"
        stored = [event async for event in store.read_stream("agent-node-1")]
        assert [event.type for event in stored] == ["TaskClaimed", "NoteTaken", "TaskDone"]
        assert {event.metadata["agent_id"] for event in stored} == {"node-agent"}
        assert summary["positions"] == [event.position for event in stored[1:]]
