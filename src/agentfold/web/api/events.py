"""Appending to a stream and reading streams and the global log, within the token's scope."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentfold.appending import Watched
from agentfold.encoding import encode_events
from agentfold.errors import (
    InvalidEventData,
    InvalidEventType,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamId,
    StreamNotFound,
)
from agentfold.events import AGENT_ID, NewEvent, RecordedEvent
from agentfold.runtime.inspect import event_json
from agentfold.store import EventStore
from agentfold.tokens import TokenInfo
from agentfold.validation import MAX_VERSION, check_event_type
from agentfold.web.api.guard import principal
from agentfold.web.api.inputs import (
    decode_body,
    expected_version,
    int_param,
    naming,
    only_params,
    text_param,
    types_param,
)
from agentfold.web.api.scopes import require_read, require_write, store_prefix
from agentfold.web.api.settings import ApiSettings

_encoder = msgspec.json.Encoder()


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One event of an append request."""

    type: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None


class AppendIn(msgspec.Struct, forbid_unknown_fields=True):
    """An append request: the events and the version the stream must be at."""

    events: list[EventIn]
    expected_version: str | int = "any"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded by msgspec."""
    return Response(_encoder.encode(body), status_code=status, media_type="application/json", headers=headers)


def event_out(event: RecordedEvent) -> dict[str, Any]:
    """An event as the API shows it."""
    return event_json(event)


class EventRoutes:
    """The endpoints over the event log."""

    def __init__(self, store: EventStore, settings: ApiSettings) -> None:
        self.store = store
        self.settings = settings

    def routes(self) -> list[Route]:
        return [
            Route("/events", self.read_all, methods=["GET"]),
            Route("/streams/{stream_id:path}", self.stream, methods=["GET", "POST"]),
        ]

    async def stream(self, request: Request) -> Response:
        """One route per path, so a 405 names every method the path has in its Allow header."""
        return await (self.append(request) if request.method == "POST" else self.read_stream(request))

    async def append(self, request: Request) -> Response:
        """Append events; the agent id in each event's metadata is the token's name, whatever the body says."""
        info = principal(request)
        only_params(request)
        stream_id = request.path_params["stream_id"]
        require_write(info, stream_id)
        return json_response(await self.append_body(info, stream_id, await request.body()))

    async def append_body(
        self, info: TokenInfo, stream_id: str, raw: bytes, watched: Watched | None = None
    ) -> dict[str, Any]:
        """Append the events of the request body `raw` for the token `info`, which may write `stream_id`; the
        answer's JSON. The append route's work after the gate and the scope check, for every way it is served
        (`agentfold.web.api.direct`). With `watched`, the append carries that condition
        (`EventLog.append_watching`: `WatchedStreamMoved`, nothing written, when it no longer holds)."""
        body = decode_body(raw, AppendIn)
        expected = expected_version(body.expected_version)
        events: list[NewEvent] = []
        for index, item in enumerate(body.events):
            metadata = {**item.metadata, AGENT_ID: info.name}
            try:
                events.append(NewEvent(item.type, item.data, metadata, item.id))  # type: ignore[arg-type]
            except InvalidInput as error:
                raise naming(error, f"events[{index}].id") from None
        if not events:
            raise naming(InvalidInput("an append needs at least one event"), "events")
        try:
            if watched is None:
                result = await self.store.append(stream_id, events, expected)
            else:
                result = await self.store.append_watching(stream_id, events, expected, watched)
        except InvalidInput as error:
            raise naming(error, self._field_of(error, events)) from None
        return {"stream_id": stream_id, "version": result.version, "position": result.position}

    def _field_of(self, error: InvalidInput, events: list[NewEvent]) -> str:
        """Which field of the request an append's `InvalidInput` is about, found again event by event."""
        if isinstance(error, InvalidStreamId):
            return "stream_id"
        if isinstance(error, InvalidExpectedVersion):
            return "expected_version"
        for index, event in enumerate(events):
            try:
                encode_events([event], self.store.max_event_size)
            except InvalidEventType:
                return f"events[{index}].type"
            except InvalidEventData as bad:  # its path starts at the one event encoded here, events[0]
                return bad.path.replace("events[0]", f"events[{index}]", 1) if bad.path else f"events[{index}]"
            except InvalidInput:
                return f"events[{index}]"
        return "events"

    async def read_stream(self, request: Request) -> Response:
        """A page of one stream's events, oldest first, after `after_version`."""
        info = principal(request)
        only_params(request, "after_version", "limit", "type")
        stream_id = request.path_params["stream_id"]
        require_read(info, stream_id)
        after = int_param(request, "after_version", 0, maximum=MAX_VERSION)
        limit = int_param(request, "limit", 100, minimum=1, maximum=self.settings.max_page_limit)
        types = types_param(request)
        if types is not None:
            for index, event_type in enumerate(types):
                try:
                    check_event_type(event_type)
                except InvalidInput as error:
                    raise naming(error, f"type[{index}]") from None
        try:
            version = await self.store.stream_version(stream_id)
        except InvalidInput as error:
            raise naming(error, "stream_id") from None
        if version == 0:
            raise StreamNotFound(stream_id)
        events: list[dict[str, Any]] = []
        scanned = after
        async for page in self.store.read_stream_pages(stream_id, after, limit):
            events.extend(event_out(event) for event in page if types is None or event.type in types)
            scanned = page[-1].version
        return json_response(
            {"stream_id": stream_id, "version": version, "events": events, "next_after_version": scanned}
        )

    async def read_all(self, request: Request) -> Response:
        """A page of the global log after `after_position`: only events of streams the token may read."""
        info = principal(request)
        only_params(request, "after_position", "limit", "type", "prefix")
        after = int_param(request, "after_position", 0, maximum=MAX_VERSION)
        limit = int_param(request, "limit", 100, minimum=1, maximum=self.settings.max_page_limit)
        types = types_param(request)
        requested_prefix = text_param(request, "prefix")
        possible, prefix = store_prefix(info, requested_prefix)
        head = await self.store.head_position()
        events: list[dict[str, Any]] = []
        scanned = max(after, head)  # a read that ends before `limit` saw every match up to the head read before it
        if possible:
            seen = 0
            try:
                async for page in self.store.read_all_pages(after, types, prefix, limit):
                    seen += len(page)
                    events.extend(event_out(event) for event in page if info.scope.can_read(event.stream_id))
                    scanned = page[-1].position if seen >= limit else max(scanned, page[-1].position)
            except InvalidInput as error:
                raise naming(error, "prefix" if isinstance(error, InvalidStreamId) else "type") from None
        return json_response({"events": events, "next_after_position": scanned})
