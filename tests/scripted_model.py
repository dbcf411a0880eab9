"""A scripted model for the OpenAI Agents SDK, written against the SDK's own `Model` extension point: no network.

It answers with what it was told before, so a test can see that a session carried the history across turns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText


def user_texts(items: str | list[Any]) -> list[str]:
    if isinstance(items, str):
        return [items]
    return [str(item["content"]) for item in items if isinstance(item, dict) and item.get("role") == "user"]


class RecallingModel(Model):
    """Replies ``turn <n>; heard: <every user message so far, oldest first>``."""

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        heard = user_texts(kwargs.get("input", args[1] if len(args) > 1 else []))
        text = f"turn {len(heard)}; heard: {' | '.join(heard)}"
        message = ResponseOutputMessage(
            id=f"msg-{len(heard)}",
            content=[ResponseOutputText(text=text, type="output_text", annotations=[])],
            role="assistant",
            status="completed",
            type="message",
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise TypeError("the scripted model answers whole responses only")
