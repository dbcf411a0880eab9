"""Requests that name a W3C trace context (``traceparent``, ``tracestate`` headers) are served inside it while an
observer is installed (`agentfold.otel.instrument()`): an agent in another language appending through the API
continues its own trace, and whoever handles the events continues it further. Without an observer it does nothing."""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from agentfold import instrumentation

TRACE_HEADERS: Final = (b"traceparent", b"tracestate")


class ContinuesTrace:
    """ASGI middleware: hands a request's trace context headers to the observer, around the whole request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer = instrumentation.observer
        if observer is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in TRACE_HEADERS
        }
        with observer.remote(carrier):
            await self.app(scope, receive, send)
