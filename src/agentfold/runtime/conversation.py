"""A run's conversation with a model, read from what its steps recorded; nothing is called, nothing is written.

A durable agent (`agentfold.integrations.pydantic_ai`) records each model request as a step whose result is an
exchange: ``{"request": <the request's new message>, "response": <the response>, "cost": {...}?}``, messages in
Pydantic AI's JSON form (``kind`` ``request``/``response``, ``parts`` with a ``part_kind``). Its tool calls record
``{"kind": "tool_return", "result": ...}`` (or another ``kind`` for a call that asked for approval, a retry, ...).
This module recognises those shapes, so inspection shows them without importing the framework.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from agentfold.encoding import encode_json
from agentfold.runtime import history as h
from agentfold.store import EventStore

TEXT_LIMIT: Final = 200
"""Longest text of one conversation line, in characters."""


def _short(value: Any, limit: int = TEXT_LIMIT) -> str:
    text = value if isinstance(value, str) else encode_json(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def model_exchange(result: Any) -> dict[str, Any] | None:
    """The exchange a model-request step recorded as its result, or None for any other result."""
    if isinstance(result, dict):
        response = result.get("response")
        if isinstance(response, dict) and response.get("kind") == "response" and "request" in result:
            return result
    return None


def usage_text(exchange: dict[str, Any]) -> str:
    """``model <name>: <in> in, <out> out tokens`` and the cost when it was known."""
    response = exchange["response"]
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    text = (
        f"model {response.get('model_name') or '?'}: "
        f"{usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out tokens"
    )
    cost = exchange.get("cost")
    if isinstance(cost, dict) and isinstance(cost.get("total_usd"), int | float):
        text += f", ${cost['total_usd']:.6f}"
    return text


def describe_part(part: Any, limit: int = TEXT_LIMIT) -> tuple[str, str]:
    """Who says what in one message part: (`user`, `system`, `tool`, `model` or `retry`, one line of text)."""
    if not isinstance(part, dict):
        return "?", _short(part, limit)
    kind = part.get("part_kind")
    content = part.get("content")
    if kind == "user-prompt":
        return "user", _short(content, limit)
    if kind == "system-prompt":
        return "system", _short(content, limit)
    if kind == "tool-return":
        return "tool", f"{part.get('tool_name')} → {_short(content, limit)}"
    if kind == "retry-prompt":
        return "retry", f"{part.get('tool_name') or 'output'}: {_short(content, limit)}"
    if kind == "text":
        return "model", _short(content, limit)
    if kind == "tool-call":
        return "model", f"calls {part.get('tool_name')}({_short(part.get('args'), limit)})"
    if kind == "thinking":
        return "model", f"(thinking) {_short(content, limit)}"
    return "?", _short(part, limit)


def describe_exchange(exchange: dict[str, Any], limit: int) -> str:
    """A model-request step's result in one line: tokens, cost, and what the model answered."""
    said = "; ".join(describe_part(part, limit)[1] for part in exchange["response"].get("parts", []))
    return f"{usage_text(exchange)}; {said}"


def describe_tool_result(result: Any, limit: int) -> str | None:
    """A tool-call step's result in one line, or None when `result` is not one."""
    if not isinstance(result, dict) or not isinstance(result.get("kind"), str):
        return None
    kind = result["kind"]
    if kind in ("tool_return", "tool_content_result") and "result" in result:
        return f"returned {_short(result['result'], limit)}"
    if kind in ("approval_required", "call_deferred", "model_retry", "tool_failed", "validation_error"):
        detail = result.get("message") or ""
        return f"{kind.replace('_', ' ')}{': ' + _short(detail, limit) if detail else ''}"
    return None


@dataclass(frozen=True)
class ConversationLine:
    """One message part of the conversation, with the step and the event that recorded it."""

    version: int
    """The run's event that recorded it (0: the message history the run started with)."""
    seq: int | None
    who: str
    text: str
    usage: str
    """Tokens and cost of the model response the line belongs to (empty for other lines)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _lines(message: Any, version: int, seq: int | None, usage: str) -> list[ConversationLine]:
    if not isinstance(message, dict):
        return []
    lines = []
    for part in message.get("parts", []):
        who, text = describe_part(part)
        lines.append(ConversationLine(version, seq, who, text, usage))
    return lines


async def conversation(store: EventStore, workflow_id: str, to_version: int | None = None) -> list[ConversationLine]:
    """The conversation a run recorded up to its event `to_version` (default: all of it); calls nothing."""
    lines: list[ConversationLine] = []
    async for page in store.read_stream_pages(h.workflow_stream(workflow_id), limit=to_version):
        for event in page:
            if event.type == h.WORKFLOW_STARTED:
                args = event.data.get("input", {}).get("args", [])
                history = args[1] if len(args) > 1 and isinstance(args[1], list) else []
                for message in history:
                    lines.extend(_lines(message, 0, None, ""))
            elif event.type == h.STEP_COMPLETED:
                exchange = model_exchange(event.data.get("result"))
                if exchange is None:
                    continue
                seq = event.data.get("seq")
                lines.extend(_lines(exchange["request"], event.version, seq, ""))
                lines.extend(_lines(exchange["response"], event.version, seq, usage_text(exchange)))
    return lines
