"""The live feed: server-sent events fed by a store subscription.

``/live?prefix=P&after=N`` sends every event of the streams whose id starts with ``P`` appended after global
position ``N``, then each new one as it is appended. Every message carries its global position as its SSE id, so a
browser that reconnects (sending ``Last-Event-ID``) resumes exactly after the last event it received: nothing
missed, nothing repeated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from agentfold.display import iso_time
from agentfold.errors import InvalidInput
from agentfold.events import RecordedEvent
from agentfold.runtime.inspect import compact_json, describe_event
from agentfold.store import EventStore

PING_SECONDS: Final = 15
MESSAGE_EVENT: Final = "append"


def message_of(event: RecordedEvent) -> dict[str, Any]:
    """What the page shows of a new event: where it is, what it is, and a one-line summary of its data."""
    return {
        "position": event.position,
        "stream_id": event.stream_id,
        "version": event.version,
        "type": event.type,
        "recorded_at": iso_time(event.recorded_at_us),
        "summary": describe_event(event),
        "data": compact_json(event.data, 2000),
    }


def resume_position(request: Request) -> int:
    """Where to start: after ``Last-Event-ID`` on a reconnect, else after ``after`` (default: the head)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    if raw is None or raw == "":
        return -1
    try:
        position = int(raw)
    except ValueError:
        raise InvalidInput(f"after must be a global position (a whole number), got {raw[:40]!r}") from None
    if position < 0:
        raise InvalidInput(f"after must be at least 0, got {position}")
    return position


async def live(request: Request) -> Response:
    store: EventStore = request.app.state.store
    prefix = request.query_params.get("prefix") or None
    after = resume_position(request)
    if after < 0:
        after = await store.head_position()
    subscription = store.subscribe(after_position=after, stream_prefix=prefix)

    async def messages() -> AsyncIterator[dict[str, Any]]:
        async with subscription:
            async for event in subscription:
                yield {"id": str(event.position), "event": MESSAGE_EVENT, "data": json.dumps(message_of(event))}

    return EventSourceResponse(messages(), ping=PING_SECONDS)


def routes() -> list[BaseRoute]:
    return [Route("/live", live)]
