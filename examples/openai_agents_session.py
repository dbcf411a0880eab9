"""An OpenAI Agents SDK agent whose conversation lives in agentfold: two turns, each in a new process, and a branch."""

import asyncio
import multiprocessing
from typing import Any

from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

import agentfold
from agentfold.integrations.openai_agents import AgentfoldSession

STORE = "sqlite:///conversations.db"


class RecallingModel(Model):
    """A scripted model (no network): it answers with every user message it was given."""

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
        heard = [item["content"] for item in input if isinstance(item, dict) and item.get("role") == "user"]
        text = ResponseOutputText(text=f"I have heard: {' | '.join(heard)}", type="output_text", annotations=[])
        message = ResponseOutputMessage(
            id=f"msg_{len(heard)}", content=[text], role="assistant", status="completed", type="message"
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("this scripted model does not stream")


async def turn(text: str) -> None:
    set_tracing_disabled(True)
    agent = Agent(name="assistant", instructions="Be brief.", model=RecallingModel())
    async with agentfold.connect(STORE) as store:
        session = AgentfoldSession("customer-7", store)
        result = await Runner.run(agent, text, session=session)
        print(result.final_output)
        print("last two items:", [item.get("role") for item in await session.get_items(limit=2)])


async def branch() -> None:
    async with agentfold.connect(STORE) as store:
        session = AgentfoldSession("customer-7", store)
        alternative = await session.branch_from(2, session_id="customer-7/what-if")
        await alternative.add_items([{"role": "user", "content": "actually, call me Grace"}])
        print("branch:", [item.get("role") for item in await alternative.get_items()])
        print("original still has", len(await session.get_items()), "items")


def in_new_process(text: str) -> None:
    process = multiprocessing.get_context("fork").Process(target=lambda: asyncio.run(turn(text)))
    process.start()
    process.join()


if __name__ == "__main__":
    in_new_process("my name is Ada")
    in_new_process("what is my name?")  # a new process: the conversation comes back from the session
    asyncio.run(branch())
