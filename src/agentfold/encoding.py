"""Validation and JSON encoding of what callers hand to `append`: refuse bad input before any I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from agentfold.errors import (
    EventTooLarge,
    InvalidEventData,
    InvalidEventType,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamId,
    StoreCorrupted,
)
from agentfold.events import ExpectedVersion, NewEvent, StreamState

MAX_NAME_LENGTH: Final = 200
MAX_DEPTH: Final = 100
DEFAULT_MAX_EVENT_SIZE: Final = 1024 * 1024
MAX_VERSION: Final = 2**62

_encoder = msgspec.json.Encoder()
_object_decoder = msgspec.json.Decoder(dict[str, Any])


class EncodedEvent(msgspec.Struct, frozen=True, gc=False):
    """A validated event ready for a backend: JSON already encoded, id as canonical text."""

    id: str
    type: str
    data: bytes
    metadata: bytes


def _check_name(value: object, what: str, error: type[InvalidInput]) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise error(f"{what} is empty")
    if len(value) > MAX_NAME_LENGTH:
        raise error(f"{what} {value[:40]!r}... is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not value.isprintable():
        raise error(f"{what} {value!r} holds non-printable characters")
    if not value.isascii():  # ASCII is valid UTF-8; only other text can hold lone surrogates
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{what} {value!r} is not valid UTF-8 text") from None
    return value


def check_name(value: object, what: str) -> str:
    """Return `value` if it follows the stream-id rules, else raise `InvalidInput` calling it `what`."""
    return _check_name(value, what, InvalidInput)


def check_stream_id(stream_id: object) -> str:
    """Return `stream_id` if it is 1 to 200 printable characters, else raise `InvalidStreamId`."""
    return _check_name(stream_id, "stream id", InvalidStreamId)


def check_event_type(event_type: object) -> str:
    """Return `event_type` if it is 1 to 200 printable characters, else raise `InvalidEventType`."""
    return _check_name(event_type, "event type", InvalidEventType)


def check_event_types(types: Sequence[str] | None) -> tuple[str, ...] | None:
    """Return a type filter as a tuple of checked event types (None: no filter); a bare str is refused."""
    if types is None:
        return None
    if isinstance(types, str):
        raise InvalidInput("types must be a list of event types, not a str")
    return tuple(check_event_type(event_type) for event_type in types)


def check_expected_version(expected_version: object) -> ExpectedVersion:
    """Return `expected_version` if it is a `StreamState` or an int in [0, 2**62], else raise."""
    if isinstance(expected_version, StreamState):
        return expected_version
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise InvalidExpectedVersion(
            f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int, got {type(expected_version).__name__}"
        )
    if not 0 <= expected_version <= MAX_VERSION:
        raise InvalidExpectedVersion(f"expected_version {expected_version} is out of range [0, {MAX_VERSION}]")
    return expected_version


def check_json_object(value: object, path: str) -> dict[str, Any]:
    """Return `value` if it is a JSON object of finite values, else raise `InvalidEventData` naming the path."""
    if not isinstance(value, dict):
        raise InvalidEventData(f"{path} must be a dict (a JSON object), got {type(value).__name__}", path)
    if not _is_json(value, 0):
        _check_json(value, path, 0, set())  # the slow walk names the offending path
    return value


def _is_json(value: object, depth: int) -> bool:
    """The fast check of `check_json_object`: no paths, no cycle set (a cycle fails the depth limit), no UTF-8
    check (the encoder refuses surrogates, and the caller then runs the slow walk for the path)."""
    if depth >= MAX_DEPTH:
        return False
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    else:
        items = value  # type: ignore[assignment]
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if item - item != 0.0:  # NaN and +-Infinity
                return False
            continue
        if (kind is dict or kind is list) and _is_json(item, depth + 1):
            continue
        return False
    return True


def _check_json(value: object, path: str, depth: int, on_path: set[int]) -> None:
    if value is None or value is True or value is False:
        return
    kind = type(value)
    if kind is str:
        try:
            value.encode("utf-8")  # type: ignore[attr-defined]
        except UnicodeEncodeError:
            raise InvalidEventData(f"{path} is a string that is not valid UTF-8", path) from None
        return
    if kind is int:
        return
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidEventData(f"{path} is {value}; JSON has no NaN or Infinity", path)
        return
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            raise InvalidEventData(f"{path} is nested deeper than {MAX_DEPTH} levels", path)
        marker = id(value)
        if marker in on_path:
            raise InvalidEventData(f"{path} refers back to itself (a cycle)", path)
        on_path.add(marker)
        if kind is dict:
            for key, item in value.items():  # type: ignore[attr-defined]
                if type(key) is not str:
                    raise InvalidEventData(f"{path} has a key {key!r} that is not a str", path)
                _check_json(key, f"{path} key {key!r}", depth + 1, on_path)
                _check_json(item, f"{path}.{key}", depth + 1, on_path)
        else:
            for index, item in enumerate(value):  # type: ignore[arg-type]
                _check_json(item, f"{path}[{index}]", depth + 1, on_path)
        on_path.discard(marker)
        return
    raise InvalidEventData(f"{path} is a {kind.__name__}, which is not JSON-serialisable", path)


def encode_events(events: Sequence[NewEvent], max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> list[EncodedEvent]:
    """Validate and encode a batch for `append`; raise a typed error for the first bad event."""
    if type(events) is not list and (
        isinstance(events, NewEvent) or not isinstance(events, Sequence) or isinstance(events, str | bytes)
    ):
        raise InvalidInput(f"events must be a list of NewEvent, got {type(events).__name__}")
    if not events:
        raise InvalidInput("events is empty: an append needs at least one event")
    encoded: list[EncodedEvent] = []
    seen_ids: set[str] = set()
    single = len(events) == 1
    for index, event in enumerate(events):
        if not isinstance(event, NewEvent):
            raise InvalidInput(f"events[{index}] must be a NewEvent, got {type(event).__name__}")
        event_type = check_event_type(event.type)
        data = check_json_object(event.data, f"events[{index}].data")
        metadata = event.metadata
        if metadata is not None:
            check_json_object(metadata, f"events[{index}].metadata")
        event_id = str(event.id)
        if not single:
            if event_id in seen_ids:
                raise InvalidInput(f"events[{index}] repeats event id {event_id} within one append")
            seen_ids.add(event_id)
        try:
            data_bytes = _encoder.encode(data)
            metadata_bytes = _encoder.encode(metadata) if metadata else b"{}"
        except UnicodeEncodeError:
            _check_json(data, f"events[{index}].data", 0, set())
            if metadata:
                _check_json(metadata, f"events[{index}].metadata", 0, set())
            raise
        size = len(data_bytes) + len(metadata_bytes) + len(event_type)
        if size > max_event_size:
            raise EventTooLarge(event_type, size, max_event_size)
        encoded.append(EncodedEvent(event_id, event_type, data_bytes, metadata_bytes))
    return encoded


def encode_json(value: Any) -> bytes:
    """Encode a checked JSON value."""
    return _encoder.encode(value)


def decode_object(raw: bytes | str | memoryview) -> dict[str, Any]:
    """Decode a stored JSON object; data agentfold did not write raises `StoreCorrupted`."""
    try:
        return _object_decoder.decode(raw)
    except (msgspec.DecodeError, TypeError) as error:
        raise StoreCorrupted(f"a stored event does not decode as a JSON object: {error}") from None
