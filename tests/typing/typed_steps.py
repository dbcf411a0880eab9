"""Checked by mypy in tests/test_typed_steps.py, never run: `ctx.step` checks arguments and infers results.

A line marked ``# wrong:`` must be flagged by mypy with exactly the error codes named after it; no other line may be.
"""

from __future__ import annotations

from typing import reveal_type

from agentfold.runtime import NO_RETRY, WorkflowContext


async def charge(order: dict[str, float], idempotency_key: str = "") -> dict[str, str]:
    return {"charge_id": idempotency_key, "amount": str(order["total"])}


def count_words(text: str, *, lower: bool = False) -> int:
    return len((text.lower() if lower else text).split())


async def typed(ctx: WorkflowContext) -> None:
    payment = await ctx.step("charge", charge, {"total": 9.5})
    reveal_type(payment)
    words = await ctx.step("count", count_words, "a b c", lower=True)
    reveal_type(words)
    retried = await ctx.step("charge", charge, {"total": 9.5}, retry=NO_RETRY)
    reveal_type(retried)
    await ctx.step("charge", charge, "9.5")  # wrong: call-overload
    await ctx.step("count", count_words, "a", upper=True)  # wrong: call-arg, arg-type


async def wrong_result(ctx: WorkflowContext) -> str:
    return await ctx.step("count", count_words, "a")  # wrong: no-any-return, call-overload
