"""The append route served in one ASGI function, in front of the API's Starlette app.

``POST /streams/{stream_id}`` is most of what agents send. Through Starlette it passes the error middleware, the
gate's middleware, the exception middleware, the router's matching of every route and a `Request` object, all of
which cost more server time than the append's own checks (docs/measurements.md). `DirectAppend` serves it itself
with the same checks in the same order (the gate's token, rate limit and declared size; the token's scope; the body
size as it arrives; the body's fields) and the same answers, problem+json errors included; everything else, and an
append that has a query string or arrives while an observer traces requests, goes to the Starlette app unchanged.
"""

from __future__ import annotations

from typing import Final

import msgspec
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agentfold import instrumentation
from agentfold.errors import AgentfoldError
from agentfold.web.api.events import EventRoutes
from agentfold.web.api.guard import ApiGate, limited, local_path
from agentfold.web.api.problems import error_response
from agentfold.web.api.scopes import require_write

STREAMS_PATH: Final = "/streams/"
JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")

_encoder = msgspec.json.Encoder()


class DirectAppend:
    """ASGI app: serves appends (``POST /streams/{stream_id}`` without a query string) itself, the rest through
    `app`, the API's Starlette app."""

    def __init__(self, app: ASGIApp, gate: ApiGate, events: EventRoutes) -> None:
        self.app = app
        self.gate = gate
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope.get("query_string")
            or instrumentation.observer is not None
        ):
            await self.app(scope, receive, send)
            return
        path = local_path(scope)
        if not path.startswith(STREAMS_PATH) or len(path) == len(STREAMS_PATH):
            await self.app(scope, receive, send)
            return
        stream_id = path[len(STREAMS_PATH) :]
        started = False
        try:
            try:
                info = await self.gate.admit(scope)
                require_write(info, stream_id)
                body = await read_body(receive, self.gate.max_body_bytes)
                if body is None:
                    return  # the client left before sending its whole request: nobody to answer
                answer = _encoder.encode(await self.events.append_body(info, stream_id, body))
            except AgentfoldError as error:
                started = True
                await error_response(error, getattr(error, "api_field", None))(scope, receive, send)
                return
            started = True
            length = (b"content-length", str(len(answer)).encode("latin-1"))
            await send({"type": "http.response.start", "status": 200, "headers": [length, JSON_CONTENT_TYPE]})
            await send({"type": "http.response.body", "body": answer})
        except Exception:
            # As Starlette's error middleware does: a plain 500 unless the response began, and the error goes on
            # to the server, which logs it.
            if not started:
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client disconnects first; `RequestTooLarge` as soon as what arrived
    is over `limit` bytes (the limit the Starlette path applies, `guard.limited`)."""
    receive = limited(receive, limit)
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
