"""The append route served in one ASGI function, in front of the API's Starlette app.

``POST /streams/{stream_id}`` is most of what agents send. Through Starlette it passes the error middleware, the
gate's middleware, the exception middleware, the router's matching of every route and a `Request` object, all of
which cost more server time than the append's own checks (docs/measurements.md). `DirectAppend` serves it itself
with the same checks in the same order (the gate's token, rate limit and declared size; the token's scope; the body
size as it arrives; the body's fields) and the same answers, problem+json errors included; everything else, and an
append that has a query string or arrives while an observer traces requests, goes to the Starlette app unchanged.
On SQLite a known token is checked in the append's own transaction instead of by a read first (`DirectAppend._append`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import msgspec
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agentfold import instrumentation
from agentfold.appending import WatchedStreamMoved
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
        self.watching = events.store.watches_streams
        """Whether appends check the token in their own transaction instead of reading the tokens first."""

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
                result = await self._append(scope, receive, stream_id)
                if result is None:
                    return  # the client left before sending its whole request: nobody to answer
                answer = _encoder.encode(result)
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

    async def _append(self, scope: Scope, receive: Receive, stream_id: str) -> dict[str, Any] | None:
        """The append's answer, or None when the client left before sending its whole body.

        Where the store checks a watched stream in the append's own transaction (SQLite), a token this process
        already knows is not read again first: the append is written only if the tokens stream is still at the
        version this process folded (no token created or revoked since, on any process), which holds the token to
        what the store says as of the append itself. Every other outcome (the tokens moved, or any refusal) checks
        the token as `admit` does before it is answered, so the answers and their order are the same as with a
        read first."""
        known = self.gate.known(scope) if self.watching else None
        if known is None:
            info = await self.gate.admit(scope)
            require_write(info, stream_id)
            body = await read_body(receive, self.gate.max_body_bytes)
            if body is None:
                return None
            return await self.events.append_body(info, stream_id, body)
        info, watched = known
        try:
            self.gate.within_limits(scope, info)
            require_write(info, stream_id)
            body = await read_body(receive, self.gate.max_body_bytes)
            if body is None:
                return None
            with contextlib.suppress(WatchedStreamMoved):  # nothing written: a token was created or revoked since
                return await self.events.append_body(info, stream_id, body, watched)
        except AgentfoldError:
            await self.gate.tokens.recheck(info)  # a token revoked meanwhile is refused as such, before this
            raise
        info = await self.gate.tokens.recheck(info)
        return await self.events.append_body(info, stream_id, body)


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
