"""Agent figures: what durability adds to a Pydantic AI agent run, per model request.

The same 10-request agent run (a function model with no latency asks for a pure tool nine times, then answers) is
timed as a plain ``agent.run`` and as a durable run (`DurableAgent.start` then `result`, with a worker in this
process), alternately in one process, so both see the same machine. The durable run records 10 model requests and 9
tool calls, each as a step with its intent and its outcome. The added time per model request is the difference of the
medians divided by 10.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Final

import agentfold
from agentfold.runtime import Runtime

Figures = dict[str, float]

REQUESTS: Final = 10


async def measure_agent(url: str, quick: bool = False) -> Figures:
    """Median plain and durable run times of a 10-request agent run, and the time durability adds per request."""
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from agentfold.integrations.pydantic_ai import AgentfoldDurability, DurableAgent

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        request = sum(isinstance(message, ModelResponse) for message in messages) + 1
        if request < REQUESTS:
            return ModelResponse(parts=[ToolCallPart("lookup", {"item": request}, tool_call_id=f"call-{request}")])
        return ModelResponse(parts=[TextPart("done")])

    def lookup(item: int) -> dict[str, int]:
        """A pure tool."""
        return {"item": item, "stock": item * 3}

    plain = Agent(FunctionModel(respond), name="bench_plain", tools=[lookup])
    durable_agent = Agent(
        FunctionModel(respond), name="bench_durable", tools=[lookup], capabilities=[AgentfoldDurability()]
    )
    runtime = Runtime()
    durable = DurableAgent(runtime, durable_agent)
    repeats = 20 if quick else 60
    wall: dict[str, list[float]] = {"plain": [], "durable": []}
    cpu: dict[str, list[float]] = {"plain": [], "durable": []}
    async with agentfold.connect(url) as store, runtime.worker(store):
        for turn in range(repeats + 3):
            started, started_cpu = time.perf_counter(), time.process_time()
            result = await plain.run("look up nine items")
            plain_times = (time.perf_counter() - started, time.process_time() - started_cpu)
            assert result.output == "done"
            run_id = f"bench-agent-{uuid.uuid4().hex[:12]}"
            started, started_cpu = time.perf_counter(), time.process_time()
            await durable.start(store, "look up nine items", run_id=run_id)
            output = await durable.result(store, run_id, timeout=60)
            durable_times = (time.perf_counter() - started, time.process_time() - started_cpu)
            assert output == "done"
            if turn >= 3:  # the first runs warm up imports, caches and connections
                for kind, (elapsed, used) in (("plain", plain_times), ("durable", durable_times)):
                    wall[kind].append(elapsed * 1000)
                    cpu[kind].append(used * 1000)
    plain_ms, durable_ms = statistics.median(wall["plain"]), statistics.median(wall["durable"])
    plain_cpu, durable_cpu = statistics.median(cpu["plain"]), statistics.median(cpu["durable"])
    return {
        "agent_10_requests_plain_ms": plain_ms,
        "agent_10_requests_durable_ms": durable_ms,
        "agent_added_per_model_request_ms": (durable_ms - plain_ms) / REQUESTS,
        "agent_added_cpu_per_model_request_ms": (durable_cpu - plain_cpu) / REQUESTS,
    }
