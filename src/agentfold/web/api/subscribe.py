"""Server-sent events: the global log within the token's scope, history then live, resumable by Last-Event-ID.

Each event's SSE id is its global position; a client that reconnects with ``Last-Event-ID`` gets exactly the events
after it. Memory per subscription is bounded: the server reads at most `subscription_page_size` events ahead of
the client, and writes wait for the client's socket (back pressure). The drop-and-resume rule: a client that takes
no event for `send_timeout_seconds` is disconnected, and loses nothing by reconnecting with its Last-Event-ID.
The token is checked again at least every `heartbeat_seconds`: a revoked or expired token ends the stream with an
``error`` event holding the problem.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agentfold.errors import InvalidInput, InvalidToken, RateLimited
from agentfold.events import RecordedEvent
from agentfold.store import EventStore
from agentfold.tokens import TokenInfo, TokenRegistry
from agentfold.validation import MAX_VERSION, check_event_types, check_stream_id
from agentfold.web.api.events import event_out
from agentfold.web.api.guard import principal
from agentfold.web.api.inputs import int_param, naming, only_params, text_param, types_param
from agentfold.web.api.problems import error_response
from agentfold.web.api.scopes import store_prefix
from agentfold.web.api.settings import ApiSettings

_encoder = msgspec.json.Encoder()
_log = logging.getLogger(__name__)


class _DropOnStall(EventSourceResponse):
    """An event stream that ends quietly when its client stalls past the send timeout (the drop-and-resume rule)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            _log.info("a subscriber took nothing for the send timeout and was dropped; it resumes by Last-Event-ID")


class SubscribeRoutes:
    """The `/subscribe` endpoint and the count of open subscriptions per token on this process."""

    def __init__(self, store: EventStore, tokens: TokenRegistry, settings: ApiSettings) -> None:
        self.store = store
        self.tokens = tokens
        self.settings = settings
        self.open: collections.Counter[str] = collections.Counter()

    def routes(self) -> list[Route]:
        return [Route("/subscribe", self.subscribe, methods=["GET"])]

    async def subscribe(self, request: Request) -> Response:
        """Open an SSE stream of events after `after_position` (or the Last-Event-ID header)."""
        info = principal(request)
        only_params(request, "after_position", "type", "prefix")
        after = int_param(request, "after_position", 0, maximum=MAX_VERSION)
        last_event_id = request.headers.get("last-event-id")
        if last_event_id:
            if not (last_event_id.isascii() and last_event_id.isdigit()) or int(last_event_id) > MAX_VERSION:
                raise naming(InvalidInput(f"Last-Event-ID {last_event_id!r} is not a position"), "Last-Event-ID")
            after = int(last_event_id)
        types = types_param(request)
        try:
            checked_types = check_event_types(types)
        except InvalidInput as error:
            raise naming(error, "type") from None
        possible, prefix = store_prefix(info, text_param(request, "prefix"))
        if prefix is not None:
            try:
                check_stream_id(prefix)
            except InvalidInput as error:
                raise naming(error, "prefix") from None
        if self.open[info.token_id] >= self.settings.max_subscriptions_per_token:
            raise RateLimited(
                f"token {info.token_id} has {self.open[info.token_id]} subscriptions open on this server already",
                self.settings.heartbeat_seconds,
            )
        stream = self._events(info, after, checked_types, prefix, possible)
        return _DropOnStall(
            stream,
            send_timeout=self.settings.send_timeout_seconds,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _events(
        self, info: TokenInfo, after: int, types: tuple[str, ...] | None, prefix: str | None, possible: bool
    ) -> AsyncIterator[ServerSentEvent]:
        heartbeat = self.settings.heartbeat_seconds
        subscription = self.store.subscribe(after, types, prefix, page_size=self.settings.subscription_page_size)
        pending: asyncio.Future[RecordedEvent] | None = None
        checked_at = time.monotonic()
        self.open[info.token_id] += 1  # counted once streaming begins, so a response never sent leaks no count
        try:
            async with subscription:
                yield ServerSentEvent(comment="subscribed", retry=1000)
                while True:
                    if time.monotonic() - checked_at >= heartbeat:
                        try:
                            info = await self.tokens.recheck(info)
                        except InvalidToken as error:
                            yield ServerSentEvent(self._problem(error), event="error")
                            return
                        checked_at = time.monotonic()
                    if not possible:
                        await asyncio.sleep(heartbeat)
                        yield ServerSentEvent(comment="heartbeat")
                        continue
                    if pending is None:
                        pending = asyncio.ensure_future(anext(subscription))
                    done, _ = await asyncio.wait({pending}, timeout=heartbeat)
                    if not done:
                        yield ServerSentEvent(comment="heartbeat")
                        continue
                    finished, pending = pending, None
                    try:
                        event = finished.result()
                    except StopAsyncIteration:  # the store was closed: the server is shutting down
                        return
                    if info.scope.can_read(event.stream_id):
                        yield ServerSentEvent(_encoder.encode(event_out(event)).decode(), id=str(event.position))
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            self.open[info.token_id] -= 1
            if self.open[info.token_id] <= 0:
                del self.open[info.token_id]

    def _problem(self, error: InvalidToken) -> str:
        body: Any = error_response(error).body
        return bytes(body).decode()
