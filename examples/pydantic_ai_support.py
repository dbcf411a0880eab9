import asyncio
import json

from pydantic_ai import Agent
from pydantic_ai.capabilities import RequestInput
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import FunctionModel

import agentfold
from agentfold.integrations.pydantic_ai import AgentfoldDurability, DurableAgent, current_idempotency_key
from agentfold.runtime import NOT_APPLIED, Runtime

REFUNDS: dict[str, str] = {}  # the payment provider, keyed by idempotency key


def support_model(messages, info):
    """Stands in for an LLM: look the order up, ask for the refund, then tell the customer."""
    replies = sum(isinstance(message, ModelResponse) for message in messages)
    if replies == 0:
        return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "A-17"}, tool_call_id="lookup-1")])
    if replies == 1:
        refund = ToolCallPart("refund_order", {"order_id": "A-17", "amount": 59}, tool_call_id="refund-1")
        return ModelResponse(parts=[refund])
    result = next(part for part in messages[-1].parts if isinstance(part, ToolReturnPart))
    return ModelResponse(parts=[TextPart(f"Done: {result.content}")])


def refund_status(idempotency_key: str, order_id: str, amount: int):
    """Asked on recovery when a refund's outcome was not recorded: did the provider apply it?"""
    return REFUNDS.get(idempotency_key, NOT_APPLIED)


async def ask_a_person(ctx, requests, token: str) -> None:
    calls = {call.tool_call_id: call.args for call in requests.approvals}
    print(f"approval needed for {calls}: agentfold signal ticket-42 refund_approval --payload JSON")


agent = Agent(
    FunctionModel(support_model),
    name="support",
    capabilities=[
        AgentfoldDurability(effects={"refund_order": refund_status}),
        RequestInput(ask=ask_a_person, name="refund_approval"),
    ],
)


@agent.tool_plain
def lookup_order(order_id: str) -> dict:
    """Look an order up."""
    return {"order_id": order_id, "paid": 59, "status": "delivered"}


@agent.tool_plain(requires_approval=True)
def refund_order(order_id: str, amount: int) -> str:
    """Refund an order (needs a person's approval)."""
    REFUNDS[current_idempotency_key()] = f"refunded {amount} EUR on {order_id}"
    return REFUNDS[current_idempotency_key()]


runtime = Runtime()
support = DurableAgent(runtime, agent)


async def main() -> None:
    async with agentfold.connect("sqlite:///support.db") as store, runtime.worker(store):
        await support.start(store, "Please refund order A-17, it arrived broken.", run_id="ticket-42")
        # What `agentfold signal ticket-42 refund_approval --payload '{"approvals": {"refund-1": true}}'` sends;
        # `false` (or {"kind": "tool-denied", "message": "..."}) rejects it, and the model is told why.
        await runtime.client(store).signal("ticket-42", "refund_approval", {"approvals": {"refund-1": True}})
        print(await support.result(store, "ticket-42"))
        conversation = await support.conversation(store, "ticket-42")
        print(json.dumps([message.kind for message in conversation]))


asyncio.run(main())
